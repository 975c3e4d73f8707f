"""`masklam experiment CONFIG`: methods x latent dims x label budgets x seeds x tasks, every stage cached.

A stage (collect, pretrain, bc, decode, evaluate) lives in `OUT/stages/<kind>/<key>/`, where the key
hashes the stage's resolved config, which includes its inputs' directories (so their keys). A stage is
skipped when its `done.json` holds the same hash, and runs (or resumes: stages resume from their own
checkpoints) otherwise. A LAM is trained once per method/dim/seed and shared across label budgets,
except laom-sup, which trains one per budget. Methods:

- `lapo`, `masklam`, `laom`, `laom-sup`: LAM -> latent BC on all data -> decoder on N labeled trajectories;
- `lapo-clean`: the same with LAPO on distractor-free data, evaluated without distractors (upper bound);
- `bc`: BC on the N labeled trajectories; `idm`: IDM on N labeled, relabel all data, BC on the relabels;
- `bc-full` (always): BC on all data with true actions, the normaliser (`bc-full-clean` for lapo-clean).

Writes `OUT/results.csv` (`method, task, latent_dim, labels, seed, split, probe_nmse, return,
normalized_return, success, recipe, return_sem, expert_fraction`) and `OUT/experiment.json`, then renders
the report. `normalized_return` divides by full-data BC on the same data and split (bc-full on the training
videos for `id`, the same policy on the held-out videos for `ood`, bc-full-clean for lapo-clean); `success`
is the success rate, empty unless the env reports success, as Meta-World does; `return_sem` is the standard
error over the row's episodes; `expert_fraction` is the return over the shipped expert's measured return.
A config, e.g. `sweep.toml`:

    out = "runs/sweep"
    tasks = ["cheetah-run"]
    methods = ["lapo", "masklam", "bc", "idm"]
    latent_dims = [64, 128]
    labels = [2, 8, 32]
    seeds = [0, 1, 2]
    [data.cheetah-run]
    collect = { episodes = 40, steps = 250, policy = "random", action_repeat = 4 }
    [pretrain]              # PretrainConfig fields
    preset = "cpu-small"
    [bc]                    # BCConfig fields
    steps = 2000
    [eval]
    episodes = 25
    workers = 2
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tyro

from masklam.metrics import standard_error
from masklam.downstream.report import COLUMNS
from masklam.errors import MasklamError

RESULT_COLUMNS = COLUMNS + ["recipe", "return_sem", "expert_fraction"]
"""results.csv: the columns the report needs, then the recipe of the row's LAM ('-' without one), the
standard error of the return over the row's episodes, and the return as a fraction of the expert's."""

MASKLAM_LOSS_OPTIONS = ("mask_target", "mask_lambda", "mask_dilation", "mask_norm")
LAM_METHODS = ("lapo", "masklam", "laom", "laom-sup", "lapo-clean")
METHODS = LAM_METHODS + ("bc", "idm")


@dataclass
class ExperimentConfig:
    """A sweep (read from a TOML or JSON file; keys are these fields)."""

    out: Path
    tasks: list[str]
    methods: list[str]
    latent_dims: list[int] = field(default_factory=lambda: [128])
    labels: list[int] = field(default_factory=lambda: [2, 8, 32, 128])
    seeds: list[int] = field(default_factory=lambda: [0])
    splits: list[str] = field(default_factory=lambda: ["id", "ood"])
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    """per task: `train` (paths, distracted data) / `clean` (paths, distractor-free), or `collect` /
    `collect_clean` (option dicts for `masklam collect`)"""
    pretrain: dict[str, Any] = field(default_factory=dict)
    """PretrainConfig fields shared by every LAM (method, data, out, seed, latent_dim, labeled are set here)"""
    bc: dict[str, Any] = field(default_factory=dict)
    """BCConfig fields of every BC stage (latent BC, BC baselines, BC on IDM relabels)"""
    bc_full: dict[str, Any] = field(default_factory=dict)
    """BCConfig fields of the full-data BC normalisers (bc-full, bc-full-clean), on top of `bc`"""
    idm: dict[str, Any] = field(default_factory=dict)
    """BCConfig fields of the IDM baseline's inverse dynamics model"""
    decode: dict[str, Any] = field(default_factory=dict)
    """DecodeConfig fields of the action decoders"""
    eval: dict[str, Any] = field(default_factory=dict)
    """episodes (25), workers (2), seed (0)"""
    env: dict[str, Any] = field(default_factory=dict)
    """extra env kwargs for evaluation (e.g. max_episode_steps; factory for tests)"""
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise MasklamError(f"unknown method {bad[0]!r}; one of {', '.join(METHODS)}")
        bad = [s for s in self.splits if s not in ("id", "ood")]
        if bad:
            raise MasklamError(f"unknown split {bad[0]!r}; use 'id' or 'ood'")
        if not self.tasks or not self.methods or not self.seeds:
            raise MasklamError("tasks, methods and seeds must not be empty")
        if any(d < 1 for d in self.latent_dims) or any(n < 1 for n in self.labels):
            raise MasklamError("latent_dims and labels must be >= 1")
        for task in self.tasks:
            spec = self.data.get(task, {})
            if not ({"train", "collect"} & set(spec)):
                raise MasklamError(f"no data for task {task!r}: give data.{task}.train (paths) or .collect")
            if "lapo-clean" in self.methods and not ({"clean", "collect_clean"} & set(spec)):
                raise MasklamError(f"lapo-clean needs distractor-free data: data.{task}.clean or .collect_clean")


def load_config(path: str | Path, **overrides: Any) -> ExperimentConfig:
    """Read an ExperimentConfig from a .toml or .json file (relative paths are relative to the working directory)."""
    path = Path(path)
    if not path.is_file():
        raise MasklamError(f"no such file: {path}")
    try:
        raw = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MasklamError(f"cannot parse {path}: {e}") from None
    raw.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise MasklamError(f"{path}: unknown key {unknown[0]!r}; known: {', '.join(sorted(names))}")
    for key in ("out", "tasks", "methods"):
        if key not in raw:
            raise MasklamError(f"{path}: missing key {key!r}")
    return ExperimentConfig(**raw)


# --- the cache ---------------------------------------------------------------------------------------
def _fingerprint(paths: Any) -> list[Any]:
    """(path, size, mtime) of each data file, so a rewritten dataset invalidates the stages built on it."""
    out = []
    for p in paths if isinstance(paths, (list, tuple)) else [paths]:
        st = Path(p).stat() if Path(p).is_file() else None
        out.append([str(p), st.st_size if st else None, st.st_mtime_ns if st else None])
    return out


# Bump a kind's version when its code changes what it computes for the same config, so cached results of
# the old code are not reused. Version 1 is left out of the hash: stages that never changed keep their caches.
# bc 2: latent targets standardised per dimension; bc 3, pretrain 2: bf16 autocast on CPUs with native bf16;
# pretrain 3: the probe's ridge chosen by cross-validation; evaluate 2: episodes from the `eval` seed stream;
# bc 4, decode 2: held-out errors over every held-out window
STAGE_VERSIONS = {"bc": 4, "pretrain": 3, "evaluate": 2, "decode": 2}


def stage_key(kind: str, config: dict[str, Any]) -> str:
    """Hash of a stage's kind (and code version), config (inputs included as their directories) and data files."""
    files = _fingerprint(config["data"]) if "data" in config else None
    key = {"kind": kind, "config": config, "files": files}
    if STAGE_VERSIONS.get(kind, 1) > 1:
        key["version"] = STAGE_VERSIONS[kind]
    blob = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_stage(root: Path, kind: str, config: dict[str, Any], fn: Callable[[Path], dict[str, Any]],
              log: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]]:
    """Run `fn(stage_dir) -> result` unless `stage_dir/done.json` records this config's hash; -> (dir, result)."""
    key = stage_key(kind, config)
    d = root / "stages" / kind / key
    done = d / "done.json"
    if done.is_file():
        try:
            rec = json.loads(done.read_text())
        except json.JSONDecodeError:
            rec = {}
        if rec.get("hash") == key:
            return d, rec["result"]
    d.mkdir(parents=True, exist_ok=True)
    (d / "stage.json").write_text(json.dumps({"kind": kind, "config": config}, indent=1, default=str))
    log(f"[{kind} {key}] running")
    result = fn(d)
    tmp = d / "done.json.tmp"
    tmp.write_text(json.dumps({"hash": key, "result": result}, indent=1, default=str))
    tmp.replace(done)
    return d, result


# --- the stages ----------------------------------------------------------------------------------------
def collect_stage(root: Path, task: str, options: dict[str, Any], progress: bool = True) -> list[str]:
    """Collect a dataset with `masklam collect`'s CollectConfig options (cached); -> the file paths."""
    def fn(d: Path) -> dict[str, Any]:
        from masklam.data.collect import CollectConfig, collect

        out = d / "data.h5"
        collect(CollectConfig(**{"progress": progress, **options, "task": task, "out": out}))
        return {"paths": [str(out)]}

    key = {"task": task, **options}
    if options.get("policy", "expert") == "expert":  # a retrained expert means new data
        key["expert_sha256"] = expert_digest(task, options.get("expert_path"))
    return run_stage(root, "collect", key, fn)[1]["paths"]


def expert_digest(task: str, path: str | None = None) -> str | None:
    """sha256 of the expert's weights (the shipped one for `task`, or `path`); None if there is none."""
    from masklam.experts.policy import SHIPPED_DIR

    f = Path(path).with_suffix(".safetensors") if path else SHIPPED_DIR / f"{task}.safetensors"
    return hashlib.sha256(f.read_bytes()).hexdigest()[:16] if f.is_file() else None


def pretrain_stage(root: Path, method: str, data: list[str], dim: int, seed: int, labeled: int,
                   overrides: dict[str, Any], device: str, progress: bool) -> tuple[Path, dict[str, Any]]:
    """Train a LAM with `masklam.train.pretrain` (cached); result: its probe NMSE.

    MaskLAM's loss options are dropped for other methods, which ignore them: one LAPO serves every recipe
    that differs only in MaskLAM's loss."""
    if method != "masklam":
        overrides = {k: v for k, v in overrides.items() if k not in MASKLAM_LOSS_OPTIONS}
    if not recipe_applies(method, overrides.get("recipe", "default")):  # e.g. LAOM: its own paper's recipe
        overrides = {k: v for k, v in overrides.items() if k != "recipe"}
    conf = {**overrides, "method": method, "data": data, "latent_dim": dim, "seed": seed, "labeled": labeled}

    def fn(d: Path) -> dict[str, Any]:
        from masklam.train.config import PretrainConfig
        from masklam.train.pretrain import pretrain

        cfg = PretrainConfig(**{"device": device, "progress": progress, "tensorboard": False, **conf, "out": d})
        return {"probe_nmse": probe_nmse(pretrain(cfg))}

    return run_stage(root, "pretrain", conf, fn)


def probe_nmse(metrics: dict[str, Any]) -> float | None:
    """The held-out normalised probe MSE latent -> action from pretrain metrics (None if absent)."""
    for key in ("probe_nmse", "probe/action_nmse"):
        if key in metrics and metrics[key] is not None:
            return float(metrics[key])
    return None


def bc_stage(root: Path, kind: str, conf: dict[str, Any], device: str, progress: bool) -> Path:
    """Train an ImagePolicy (BCConfig fields in conf) as a cached stage; -> its directory."""
    def fn(d: Path) -> dict[str, Any]:
        from masklam.downstream.bc import BCConfig, train_bc

        return train_bc(BCConfig(**{"device": device, **conf, "out": d}), progress=progress)

    return run_stage(root, kind, conf, fn)[0]


def decode_stage(root: Path, conf: dict[str, Any], device: str, progress: bool) -> Path:
    """Train an action decoder (DecodeConfig fields in conf) as a cached stage; -> its directory."""
    def fn(d: Path) -> dict[str, Any]:
        from masklam.downstream.decode import DecodeConfig, train_decoder

        return train_decoder(DecodeConfig(**{"device": device, **conf, "out": d}), progress=progress)

    return run_stage(root, "decode", conf, fn)[0]


def eval_stage(root: Path, policy: Path, decoder: Path | None, split: str, env: dict[str, Any],
               opts: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Online evaluation of a policy (+ decoder) on one split (cached); -> {mean, std, returns, success_rate}."""
    conf = {"policy": str(policy), "decoder": str(decoder) if decoder else None, "split": split, "env": env,
            "episodes": 25, "workers": 2, "seed": 0, **opts}

    def fn(d: Path) -> dict[str, Any]:
        from masklam.downstream.agent import load_policy
        from masklam.downstream.evaluate import env_spec, evaluate

        agent = load_policy(policy, decoder)
        meta = {**agent.env_meta, **env}
        res = evaluate(agent, env_spec(meta, split), conf["episodes"], conf["seed"], conf["workers"],
                       progress=progress, desc=f"eval {meta.get('task')} {split}")
        return res.as_dict()

    return run_stage(root, "evaluate", conf, fn)[1]


# --- the sweep -----------------------------------------------------------------------------------------
def _datasets(cfg: ExperimentConfig) -> dict[str, dict[str, list[str]]]:
    """Per task, the 'train' (distracted) and 'clean' file lists, collecting where asked."""
    out: dict[str, dict[str, list[str]]] = {}
    for task in cfg.tasks:
        spec, out[task] = cfg.data[task], {}
        for variant, coll in (("train", "collect"), ("clean", "collect_clean")):
            if variant in spec:
                paths = spec[variant] if isinstance(spec[variant], list) else [spec[variant]]
                missing = [p for p in paths if not Path(p).exists()]
                if missing:
                    raise MasklamError(f"no such file: {missing[0]}")
                out[task][variant] = [str(p) for p in paths]
            elif coll in spec:
                out[task][variant] = collect_stage(cfg.out, task, spec[coll], cfg.progress)
    return out


def _num_train_trajectories(paths: list[str], heldout: float) -> int:
    from masklam.data import read_layout, split_trajectories

    n = sum(read_layout(p).num_trajectories for p in paths)
    return len(split_trajectories(n, heldout)[0])


def run_experiment(cfg: ExperimentConfig, render: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) the whole sweep; writes results.csv and returns its rows as dicts."""
    root, dev, prog = cfg.out, cfg.device, cfg.progress
    root.mkdir(parents=True, exist_ok=True)
    datasets = _datasets(cfg)
    (root / "experiment.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), "datasets": {
        t: d["train"] for t, d in datasets.items()}}, indent=1, default=str))
    raw: list[dict[str, Any]] = []  # rows before normalisation, with "variant"
    # BC and decoders use the LAM's train/held-out split and labeled subsets unless told otherwise
    split = {k: cfg.pretrain[k] for k in ("heldout", "split_seed") if k in cfg.pretrain}
    bc_opts, dec_opts = {**split, **cfg.bc}, {**split, **cfg.decode}
    opts = cfg.eval

    def evaluate_all(method: str, task: str, dim: int, labels: int, seed: int, probe: float | None,
                     policy: Path, decoder: Path | None, variant: str) -> None:
        for split in (cfg.splits if variant == "train" else ["id"]):
            res = eval_stage(root, policy, decoder, split, cfg.env, opts, prog)
            raw.append({"method": method, "task": task, "latent_dim": dim, "labels": labels, "seed": seed,
                        "split": split, "probe_nmse": probe, "return": res["mean"], "variant": variant,
                        "success": res.get("success_rate"), "recipe": recipe_label(method, cfg.pretrain),
                        "return_sem": standard_error(res["returns"]), "expert_fraction": res["mean"] / expert_return(task)})

    for task in cfg.tasks:
        for seed in cfg.seeds:
            variants = ["train"] + (["clean"] if "lapo-clean" in cfg.methods else [])
            for variant in variants:  # the normalisers: BC on all data with true actions
                data = datasets[task][variant]
                conf = {**bc_opts, **cfg.bc_full, "data": data, "target": "action", "seed": seed}
                policy = bc_stage(root, "bc", conf, dev, prog)
                n_all = _num_train_trajectories(data, float(conf.get("heldout", 0.1)))
                evaluate_all("bc-full" if variant == "train" else "bc-full-clean", task, 0, n_all, seed, None,
                             policy, None, variant)
            for method in cfg.methods:
                variant = "clean" if method == "lapo-clean" else "train"
                data = datasets[task][variant]
                if method in LAM_METHODS:
                    lam_method = "lapo" if method == "lapo-clean" else method
                    for dim in cfg.latent_dims:
                        shared = None
                        for n in cfg.labels:
                            if shared is None or method == "laom-sup":
                                lam_dir, lam_res = pretrain_stage(root, lam_method, data, dim, seed,
                                                                  n if method == "laom-sup" else 0, cfg.pretrain,
                                                                  dev, prog)
                                policy = bc_stage(root, "bc", {**bc_opts, "data": data, "target": "latent",
                                                               "lam": str(lam_dir), "seed": seed}, dev, prog)
                                shared = (lam_res, policy)
                            lam_res, policy = shared
                            dec = decode_stage(root, {**dec_opts, "policy": str(policy), "data": data,
                                                      "labels": n, "seed": seed}, dev, prog)
                            evaluate_all(method, task, dim, n, seed, lam_res.get("probe_nmse"), policy, dec, variant)
                elif method == "bc":
                    for n in cfg.labels:
                        policy = bc_stage(root, "bc", {**bc_opts, "data": data, "target": "action", "labels": n,
                                                       "seed": seed}, dev, prog)
                        evaluate_all("bc", task, 0, n, seed, None, policy, None, variant)
                elif method == "idm":
                    for n in cfg.labels:
                        idm = bc_stage(root, "idm", {**bc_opts, **cfg.idm, "data": data, "target": "action",
                                                     "pair_input": True, "labels": n, "seed": seed}, dev, prog)
                        policy = bc_stage(root, "bc", {**bc_opts, "data": data, "target": "idm", "idm": str(idm),
                                                       "seed": seed}, dev, prog)
                        evaluate_all("idm", task, 0, n, seed, None, policy, None, variant)
    rows = normalize(raw)
    write_results(root / "results.csv", rows)
    if render:
        from masklam.downstream.report import render_report

        print(f"wrote {root / 'results.csv'} and {render_report(root)}")
    return rows


def recipe_label(method: str, pretrain: dict[str, Any]) -> str:
    """How a row's LAM was trained, for results.csv: the recipe, plus our variants' options ('-' without a LAM)."""
    if method not in LAM_METHODS:
        return "-"
    label = str(pretrain.get("recipe", "default"))
    if not recipe_applies(method, label):
        label = "default"
    if method == "masklam" and pretrain.get("mask_target"):
        label += "+mask-target"
    if pretrain.get("mask_channel") is not None and method in ("lapo", "lapo-clean", "masklam"):
        label += "+mask-channel" if pretrain["mask_channel"] else "-mask-channel"
    return label


def recipe_applies(method: str, recipe: str) -> bool:
    """Whether a pretraining recipe changes anything for `method` (lapo-clean is LAPO)."""
    from masklam.train.config import RECIPES

    return bool(RECIPES.get(recipe, {}).get("lapo" if method == "lapo-clean" else method))


def expert_return(task: str) -> float:
    """The shipped expert's measured mean return for `task` (nan when there is none)."""
    from masklam.experts.policy import SHIPPED_DIR

    f = SHIPPED_DIR / f"{task}.json"
    return float(json.loads(f.read_text()).get("mean_return_10", np.nan)) if f.is_file() else float("nan")


def normalize(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add normalized_return: return / mean full-data BC return (over seeds) of the same task, split, data."""
    ref: dict[tuple, list[float]] = {}
    for r in raw:
        if r["method"] in ("bc-full", "bc-full-clean"):
            ref.setdefault((r["task"], r["split"], r["variant"]), []).append(r["return"])
    rows = []
    for r in raw:
        base = ref.get((r["task"], r["split"], r["variant"]))
        denom = float(np.mean(base)) if base else float("nan")
        norm = r["return"] / denom if base and denom != 0 else float("nan")
        rows.append({**{k: v for k, v in r.items() if k != "variant"}, "normalized_return": norm})
    return rows


def write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    """results.csv with the fixed columns (RESULT_COLUMNS); empty cells for missing values."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r[c]) for c in RESULT_COLUMNS})
    tmp.replace(path)


@dataclass
class ExperimentArgs:
    """Run a cached, resumable sweep from a TOML/JSON config; writes results.csv and report.html."""

    config: tyro.conf.Positional[Path]
    """sweep config file (.toml or .json)"""
    out: Path | None = None
    """run directory (overrides the file's `out`)"""
    device: str | None = None
    """cpu, cuda, ... (overrides the file's `device`)"""
    no_report: bool = False
    """skip rendering report.html"""


def main(argv: list[str]) -> int:
    """`masklam experiment CONFIG`."""
    args = tyro.cli(ExperimentArgs, args=argv)
    cfg = load_config(args.config, out=args.out, device=args.device)
    rows = run_experiment(cfg, render=not args.no_report)
    print(f"{len(rows)} result rows in {cfg.out / 'results.csv'}")
    return 0
