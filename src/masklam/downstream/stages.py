"""The experiment's cached stages: collect, pretrain, bc (and idm), decode, evaluate.

A stage lives in `OUT/stages/<kind>/<key>/`, where the key hashes the stage's kind (and code version),
its resolved config, which includes its inputs' directories (so their keys), and the size and mtime of
its data files. A stage is skipped when its `done.json` holds the same hash, and runs (or resumes:
stages resume from their own checkpoints) otherwise. `done.json` records the stage's result and its run
time (`wall_s`, of the session that finished it).

A dry run (`plan_stages`, behind `masklam experiment --status`) walks the same code without running or
writing anything: `run_stage` records each stage as done (its done.json) or pending instead. A stage whose
config names a pending stage's directory waits on it: it is pending, and its key, which hashes its inputs'
data files, is not known yet.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from masklam.errors import MasklamError

LAM_METHODS = ("lapo", "masklam", "laom", "laom-sup", "lapo-clean")
"""methods with a latent action model: LAM -> latent BC -> decoder"""
METHODS = LAM_METHODS + ("bc", "idm")
"""every method a sweep can run (bc-full, the normaliser, always runs)"""
CLEAN_METHODS = {"lapo-clean": "lapo"}
"""methods that train another method's LAM on the distractor-free data (the upper bound) -> that method"""


def lam_trainer(method: str) -> str:
    """The pretrain method that trains `method`'s LAM (lapo-clean: LAPO, on the distractor-free data)."""
    return CLEAN_METHODS.get(method, method)


def data_variant(method: str) -> str:
    """The data a method trains and is evaluated on: 'clean' (distractor-free) or 'train' (distracted)."""
    return "clean" if method in CLEAN_METHODS else "train"


def sweep_method(trainer: str, variant: str) -> str:
    """The method of a sweep that a LAM trained by `trainer` on `variant` data serves (inverse of the two above)."""
    if variant == "clean":
        return next((m for m, t in CLEAN_METHODS.items() if t == trainer), trainer)
    return trainer



@dataclass
class EvalOptions:
    """How each policy is evaluated online (the experiment's [eval] table)."""

    episodes: int = 25
    """episodes per split"""
    workers: int = 2
    """worker processes (0: one environment in this process)"""
    seed: int = 0
    """evaluation seed (episode i: the `eval` stream's seed (seed, i))"""

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.workers < 0:
            raise MasklamError(f"episodes must be >= 1 and workers >= 0, got {self.episodes} and {self.workers}")


# --- the cache ---------------------------------------------------------------------------------------
def _fingerprint(paths: Any) -> list[Any]:
    """(path, size, mtime) of each data file, so a rewritten dataset invalidates the stages built on it; a
    directory of shards (or `DIR/<split>`): (path, its files' (name, size, mtime))."""
    from masklam.data.dataset import data_files

    out = []
    for p in paths if isinstance(paths, (list, tuple)) else [paths]:
        files = [] if Path(p).is_file() else data_files(p)
        if files:
            out.append([str(p), [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]])
            continue
        st = Path(p).stat() if Path(p).is_file() else None
        out.append([str(p), st.st_size if st else None, st.st_mtime_ns if st else None])
    return out


def stage_key(kind: str, config: dict[str, Any], meaning: dict[str, Any] | None = None, version: int = 1) -> str:
    """Hash of a stage's kind, config (inputs included as their directories), data files, `meaning` (what named
    values in the config stand for: a recipe's fields, so that a name whose meaning changes never reuses a stage
    computed under the old one) and `version`: the VERSION of the code that computes the stage (its trainer's,
    whatever the kind's name: BC and IDM stages share the BC trainer's). Version 1 is left out of the hash."""
    files = _fingerprint(config["data"]) if "data" in config else None
    key = {"kind": kind, "config": config, "files": files}
    if meaning:
        key["meaning"] = meaning
    if version > 1:
        key["version"] = version
    blob = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _done_result(d: Path, key: str) -> dict[str, Any] | None:
    """`d/done.json` if it records this key (then the stage is done), else None."""
    done = d / "done.json"
    if not done.is_file():
        return None
    try:
        rec = json.loads(done.read_text())
    except json.JSONDecodeError:
        return None
    return rec if rec.get("hash") == key else None


_CONTEXT: ContextVar[str] = ContextVar("masklam_stage_context", default="")


@contextmanager
def stage_context(label: str) -> Iterator[None]:
    """Name what the stages run inside are for (e.g. "cheetah-run seed 0 lapo"), for logs and dry runs."""
    token = _CONTEXT.set(label)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def run_stage(root: Path, kind: str, config: dict[str, Any], fn: Callable[[Path], dict[str, Any]],
              log: Callable[[str], None] = print, meaning: dict[str, Any] | None = None,
              version: int = 1) -> tuple[Path, dict[str, Any]]:
    """Run `fn(stage_dir) -> result` unless `stage_dir/done.json` records this config's hash (`stage_key`);
    -> (dir, result).

    In a dry run (`plan_stages`) only records the stage: -> (dir, its result, or a `Pending` one)."""
    from masklam.files import write_json

    key = stage_key(kind, config, meaning, version)
    d = root / "stages" / kind / key
    plan = _PLAN.get()
    if plan is not None:
        return d, plan.visit(d, kind, key, config)
    rec = _done_result(d, key)
    if rec is not None:
        return d, rec["result"]
    d.mkdir(parents=True, exist_ok=True)
    (d / "stage.json").write_text(json.dumps({"kind": kind, "config": config}, indent=1, default=str))
    context = _CONTEXT.get()
    log(f"[{kind} {key}] running" + (f" ({context})" if context else ""))
    t0 = time.perf_counter()
    result = fn(d)
    write_json(d / "done.json", {"hash": key, "result": result, "wall_s": time.perf_counter() - t0}, indent=1)
    return d, result


# --- dry runs --------------------------------------------------------------------------------------------
class Pending(dict):
    """The result a dry run gives for a stage not done yet (empty; `is_pending` tells it apart)."""


def is_pending(result: Any) -> bool:
    """Whether a stage's result is a dry run's placeholder for a stage not done yet."""
    return isinstance(result, Pending)


@dataclass
class PlannedStage:
    """A stage a dry run met."""

    kind: str
    """collect, pretrain, bc, idm, decode, evaluate"""
    key: str | None
    """its key; None while it waits on a pending stage (the key hashes its inputs' files)"""
    done: bool
    """its done.json records its key"""
    context: str
    """what it is for (`stage_context`), e.g. "cheetah-run seed 0 lapo" """
    config: dict[str, Any]
    """its config"""
    wall_s: float | None = None
    """done: its run time (done.json's wall_s, else the time between stage.json and done.json)"""
    started: float | None = None
    """pending with a stage.json: when it last started (time.time(); running now or interrupted)"""
    active: float | None = None
    """pending with a stage.json: when a file of its directory last changed (running if recent: `is_running`)"""

    def is_running(self, now: float) -> bool:
        """Started, and wrote a file within RUNNING_WINDOW_S of `now`: running (else interrupted, if started)."""
        return self.started is not None and self.active is not None and now - self.active <= RUNNING_WINDOW_S


RUNNING_WINDOW_S = 300.0
"""a started stage whose directory changed no longer ago than this is running; after it, interrupted"""


def _strings(obj: Any) -> Iterator[str]:
    """Every string (or path) value in a nested config."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, (str, Path)):
        yield str(obj)


def _newest_mtime(d: Path) -> float:
    """When a file in `d` (or below) last changed."""
    return max((p.stat().st_mtime for p in d.rglob("*") if p.is_file()), default=d.stat().st_mtime)


@dataclass
class StagePlan:
    """What a dry run of a sweep met (`plan_stages`), in order."""

    stages: list[PlannedStage] = field(default_factory=list)
    """each stage met, once"""
    pending_dirs: list[str] = field(default_factory=list)
    """directories of the pending stages (a config naming one waits on it)"""
    seen: set[str] = field(default_factory=set)
    """directories of the stages met"""

    def visit(self, d: Path, kind: str, key: str, config: dict[str, Any]) -> dict[str, Any]:
        """Record one stage; -> its result if done, else a `Pending` one."""
        pending = self.pending_dirs
        waits = any(v == p or v.startswith(p + os.sep) for v in _strings(config) for p in pending)
        rec = None if waits else _done_result(d, key)
        stage = PlannedStage(kind, None if waits else key, rec is not None, _CONTEXT.get(), config)
        if str(d) not in self.seen:  # a stage two parts of the sweep share runs once
            self.seen.add(str(d))
            self.stages.append(stage)
        started, done = d / "stage.json", d / "done.json"
        if rec is not None:
            stage.wall_s = rec.get("wall_s")
            if stage.wall_s is None and started.is_file():  # done before run_stage recorded wall_s
                stage.wall_s = max(done.stat().st_mtime - started.stat().st_mtime, 0.0)
            return rec["result"]
        if not waits and started.is_file():
            stage.started, stage.active = started.stat().st_mtime, _newest_mtime(d)
        self.pending_dirs.append(str(d))
        return Pending()


_PLAN: ContextVar[StagePlan | None] = ContextVar("masklam_stage_plan", default=None)


@contextmanager
def plan_stages() -> Iterator[StagePlan]:
    """A dry run: inside it, `run_stage` records stages in the StagePlan yielded and runs or writes nothing."""
    plan = StagePlan()
    token = _PLAN.set(plan)
    try:
        yield plan
    finally:
        _PLAN.reset(token)


def dry_run() -> bool:
    """Whether stages are being planned (`plan_stages`) rather than run."""
    return _PLAN.get() is not None


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _brief(stage: PlannedStage) -> str:
    """What tells a stage from its siblings: its context and the options that vary within one."""
    c = stage.config
    parts = [f"{k} {c[k]}" for k in ("target", "latent_dim", "labels", "split") if c.get(k) is not None]
    return ", ".join([stage.context] + parts) if stage.context else ", ".join(parts)


def format_plan(plan: StagePlan, now: float | None = None) -> str:
    """Per stage kind: done and pending counts, mean run time and time left; the started stages; what is left.

    A pending stage is estimated by the mean run time of the done stages of its kind (less the time it has
    run if it is running: started, and wrote a file recently; an interrupted one starts over, from its
    checkpoints), a kind with none done has no estimate."""
    now = time.time() if now is None else now
    kinds = list(dict.fromkeys(s.kind for s in plan.stages))
    lines = [f"{'stage':<10}{'done':>6}{'pending':>9}{'mean time':>12}{'time left':>13}"]
    total, unknown = 0.0, []
    for kind in kinds:
        done = [s for s in plan.stages if s.kind == kind and s.done]
        pending = [s for s in plan.stages if s.kind == kind and not s.done]
        walls = [s.wall_s for s in done if s.wall_s is not None]
        mean = sum(walls) / len(walls) if walls else None
        if pending and mean is None:
            unknown.append(kind)
            left = "no estimate"
        else:
            secs = sum(max(mean - (now - s.started), 0.0) if s.is_running(now) else mean for s in pending)
            total += secs
            left = _duration(secs)
        lines.append(f"{kind:<10}{len(done):>6}{len(pending):>9}{_duration(mean) if mean is not None else '-':>12}"
                     f"{left:>13}")
    n_done = sum(s.done for s in plan.stages)
    n_pending = len(plan.stages) - n_done
    if not n_pending:
        lines.append(f"all {n_done} stages done")
        return "\n".join(lines)
    if unknown and not total:
        estimate = "no estimate yet (no stage of a pending kind is done)"
    else:
        estimate = f"about {_duration(total)} left" + (
            f", plus the {', '.join(unknown)} stages (no estimate: none of their kind done yet)" if unknown else "")
    lines.append(f"{n_done} done, {n_pending} pending: {estimate}")
    for s in plan.stages:
        if s.started is not None:
            state = "running" if s.is_running(now) else "interrupted"
            last = f", last write {_duration(now - s.active)} ago" if s.active is not None else ""
            lines.append(f"started {_duration(now - s.started)} ago ({state}{last}): {s.kind} {s.key} ({_brief(s)})")
    lines.append("left (stages waiting on pending inputs have no key yet):")
    left: dict[str, dict[str, int]] = {}
    for s in plan.stages:
        if not s.done:
            counts = left.setdefault(s.context, {})
            counts[s.kind] = counts.get(s.kind, 0) + 1
    for context, counts in left.items():
        lines.append(f"  {context or '-'}: " + ", ".join(f"{kind} {n}" for kind, n in counts.items()))
    return "\n".join(lines)


# --- the stages ----------------------------------------------------------------------------------------
COLLECTED = "data.h5"
"""the file a collect stage writes in its directory"""


def collect_stage(root: Path, task: str, options: dict[str, Any], progress: bool = True) -> list[str]:
    """Collect a dataset with `masklam collect`'s CollectConfig options (cached); -> the file paths."""
    def fn(d: Path) -> dict[str, Any]:
        from masklam.data.collect import CollectConfig, collect

        out = d / COLLECTED
        collect(CollectConfig(**{"progress": progress, **options, "task": task, "out": out}))
        return {"paths": [str(out)]}

    key = {"task": task, **options}
    if options.get("policy", "expert") == "expert":  # a retrained expert means new data
        key["expert_sha256"] = expert_digest(task, options.get("expert_path"))
    d, res = run_stage(root, "collect", key, fn)
    rebuilt = [str(d / COLLECTED)]
    if is_pending(res):  # a dry run, before the stage ran: where it will write
        return rebuilt
    # the paths done.json saved: the keys of the stages built on them do not depend on how this run spells
    # --out (unless the run directory moved, so they are gone)
    saved = [str(p) for p in res["paths"]]
    return saved if all(Path(p).is_file() for p in saved) or not Path(rebuilt[0]).is_file() else rebuilt


def expert_digest(task: str, path: str | None = None) -> str | None:
    """sha256 of the expert's weights (the shipped one for `task`, or `path`); None if there is none."""
    from masklam.experts.policy import SHIPPED_DIR

    f = Path(path).with_suffix(".safetensors") if path else SHIPPED_DIR / f"{task}.safetensors"
    return hashlib.sha256(f.read_bytes()).hexdigest()[:16] if f.is_file() else None


def expert_return(task: str) -> float:
    """The shipped expert's measured mean return for `task` (nan when there is none)."""
    from masklam.experts.policy import SHIPPED_DIR

    f = SHIPPED_DIR / f"{task}.json"
    return float(json.loads(f.read_text()).get("mean_return_10", np.nan)) if f.is_file() else float("nan")


def recipe_applies(method: str, recipe: str) -> bool:
    """Whether a pretraining recipe changes anything for `method` (lapo-clean is LAPO)."""
    from masklam.train.config import RECIPES

    return bool(RECIPES.get(recipe, {}).get(lam_trainer(method)))


def recipe_label(method: str, pretrain: dict[str, Any]) -> str:
    """How a row's LAM was trained, for results.csv: the recipe, plus our variants' options ('-' without a LAM)."""
    if method not in LAM_METHODS:
        return "-"
    label = str(pretrain.get("recipe", "default"))
    if not recipe_applies(method, label):
        label = "default"
    if method == "masklam" and pretrain.get("mask_target"):
        label += "+mask-target"
    if pretrain.get("mask_channel") is not None and lam_trainer(method) in ("lapo", "masklam"):
        label += "+mask-channel" if pretrain["mask_channel"] else "-mask-channel"
    return label


def pretrain_conf(method: str, data: list[str], dim: int, seed: int, labeled: int,
                  overrides: dict[str, Any]) -> dict[str, Any]:
    """The PretrainConfig fields (but out, device) of a sweep's LAM: the [pretrain] options `method` uses."""
    from masklam.train.config import options_for

    overrides = options_for(method, overrides)
    if not recipe_applies(method, overrides.get("recipe", "default")):  # e.g. LAOM: its own paper's recipe
        overrides = {k: v for k, v in overrides.items() if k != "recipe"}
    return {**overrides, "method": method, "data": data, "latent_dim": dim, "seed": seed, "labels": labeled}


def pretrain_stage(root: Path, method: str, data: list[str], dim: int, seed: int, labeled: int,
                   overrides: dict[str, Any], device: str, progress: bool) -> tuple[Path, dict[str, Any]]:
    """Train a LAM with `masklam.train.pretrain` (cached); result: its probe NMSE.

    Options of other methods are dropped (masklam.train.config.options_for): one LAPO serves every recipe
    that differs only in MaskLAM's loss."""
    from masklam.train.config import RECIPE_PRESETS, RECIPES

    conf = pretrain_conf(method, data, dim, seed, labeled, overrides)

    def fn(d: Path) -> dict[str, Any]:
        from masklam.train.config import PretrainConfig
        from masklam.train.pretrain import pretrain

        cfg = PretrainConfig(**{"device": device, "progress": progress, "tensorboard": False, **conf, "out": d})
        return {"probe_nmse": probe_nmse(pretrain(cfg))}

    recipe = conf.get("recipe", "default")
    meaning = {"recipe": RECIPES[recipe].get(method, {}),
               "recipe_at_preset": RECIPE_PRESETS.get(recipe, {}).get(conf.get("preset", "cpu-small"), {})}
    from masklam.train.pretrain import VERSION

    return run_stage(root, "pretrain", conf, fn, meaning=meaning if recipe != "default" else None, version=VERSION)


def probe_nmse(metrics: dict[str, Any]) -> float | None:
    """The held-out normalised probe MSE latent -> action from pretrain metrics (None if absent)."""
    value = metrics.get("probe_nmse")
    return None if value is None else float(value)


def bc_stage(root: Path, kind: str, conf: dict[str, Any], device: str, progress: bool) -> Path:
    """Train an ImagePolicy (BCConfig fields in conf) as a cached stage; -> its directory."""
    def fn(d: Path) -> dict[str, Any]:
        from masklam.downstream.bc import BCConfig, train_bc

        return train_bc(BCConfig(**{"device": device, **conf, "out": d}), progress=progress)

    from masklam.downstream.bc import VERSION  # the trainer's, for "bc" and "idm" stages alike

    return run_stage(root, kind, conf, fn, version=VERSION)[0]


def decode_stage(root: Path, conf: dict[str, Any], device: str, progress: bool) -> Path:
    """Train an action decoder (DecodeConfig fields in conf) as a cached stage; -> its directory."""
    def fn(d: Path) -> dict[str, Any]:
        from masklam.downstream.decode import DecodeConfig, train_decoder

        return train_decoder(DecodeConfig(**{"device": device, **conf, "out": d}), progress=progress)

    from masklam.downstream.decode import VERSION

    return run_stage(root, "decode", conf, fn, version=VERSION)[0]


def eval_stage(root: Path, policy: Path, decoder: Path | None, split: str, env: dict[str, Any],
               opts: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Online evaluation of a policy (+ decoder) on one split (cached); -> {mean, std, returns, success_rate}."""
    conf = {"policy": str(policy), "decoder": str(decoder) if decoder else None, "split": split, "env": env,
            **dataclasses.asdict(EvalOptions(**opts))}

    def fn(d: Path) -> dict[str, Any]:
        from masklam.downstream.agent import load_policy
        from masklam.downstream.evaluate import env_spec, evaluate

        agent = load_policy(policy, decoder)
        meta = {**agent.env_meta, **env}
        res = evaluate(agent, env_spec(meta, split), conf["episodes"], conf["seed"], conf["workers"],
                       progress=progress, desc=f"eval {meta.get('task')} {split}")
        return res.as_dict()

    from masklam.downstream.evaluate import VERSION

    return run_stage(root, "evaluate", conf, fn, version=VERSION)[1]
