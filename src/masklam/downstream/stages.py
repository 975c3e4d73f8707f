"""The experiment's cached stages: collect, pretrain, bc (and idm), decode, evaluate.

A stage lives in `OUT/stages/<kind>/<key>/`, where the key hashes the stage's kind (and code version),
its resolved config, which includes its inputs' directories (so their keys), and the size and mtime of
its data files. A stage is skipped when its `done.json` holds the same hash, and runs (or resumes:
stages resume from their own checkpoints) otherwise.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

LAM_METHODS = ("lapo", "masklam", "laom", "laom-sup", "lapo-clean")
"""methods with a latent action model: LAM -> latent BC -> decoder"""
METHODS = LAM_METHODS + ("bc", "idm")
"""every method a sweep can run (bc-full, the normaliser, always runs)"""

# Bump a kind's version when its code changes what it computes for the same config, so cached results of
# the old code are not reused. Version 1 is left out of the hash: stages that never changed keep their caches.
# bc 2: latent targets standardised per dimension; bc 3, pretrain 2: bf16 autocast on CPUs with native bf16;
# pretrain 3: the probe's ridge chosen by cross-validation; evaluate 2: episodes from the `eval` seed stream;
# bc 4, decode 2: held-out errors over every held-out window
STAGE_VERSIONS = {"bc": 4, "pretrain": 3, "evaluate": 2, "decode": 2}


@dataclass
class EvalOptions:
    """How each policy is evaluated online (the experiment's [eval] table)."""

    episodes: int = 25
    """episodes per split"""
    workers: int = 2
    """worker processes (0: one environment in this process)"""
    seed: int = 0
    """evaluation seed (episode i: the `eval` stream's seed (seed, i))"""


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
    from masklam.files import write_json

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
    write_json(done, {"hash": key, "result": result}, indent=1)
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


def expert_return(task: str) -> float:
    """The shipped expert's measured mean return for `task` (nan when there is none)."""
    from masklam.experts.policy import SHIPPED_DIR

    f = SHIPPED_DIR / f"{task}.json"
    return float(json.loads(f.read_text()).get("mean_return_10", np.nan)) if f.is_file() else float("nan")


def recipe_applies(method: str, recipe: str) -> bool:
    """Whether a pretraining recipe changes anything for `method` (lapo-clean is LAPO)."""
    from masklam.train.config import RECIPES

    return bool(RECIPES.get(recipe, {}).get("lapo" if method == "lapo-clean" else method))


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


def pretrain_stage(root: Path, method: str, data: list[str], dim: int, seed: int, labeled: int,
                   overrides: dict[str, Any], device: str, progress: bool) -> tuple[Path, dict[str, Any]]:
    """Train a LAM with `masklam.train.pretrain` (cached); result: its probe NMSE.

    Options of other methods are dropped (masklam.train.config.options_for): one LAPO serves every recipe
    that differs only in MaskLAM's loss."""
    from masklam.train.config import options_for

    overrides = options_for(method, overrides)
    if not recipe_applies(method, overrides.get("recipe", "default")):  # e.g. LAOM: its own paper's recipe
        overrides = {k: v for k, v in overrides.items() if k != "recipe"}
    conf = {**overrides, "method": method, "data": data, "latent_dim": dim, "seed": seed, "labels": labeled}

    def fn(d: Path) -> dict[str, Any]:
        from masklam.train.config import PretrainConfig
        from masklam.train.pretrain import pretrain

        cfg = PretrainConfig(**{"device": device, "progress": progress, "tensorboard": False, **conf, "out": d})
        return {"probe_nmse": probe_nmse(pretrain(cfg))}

    return run_stage(root, "pretrain", conf, fn)


def probe_nmse(metrics: dict[str, Any]) -> float | None:
    """The held-out normalised probe MSE latent -> action from pretrain metrics (None if absent)."""
    value = metrics.get("probe_nmse")
    return None if value is None else float(value)


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
            **dataclasses.asdict(EvalOptions(**opts))}

    def fn(d: Path) -> dict[str, Any]:
        from masklam.downstream.agent import load_policy
        from masklam.downstream.evaluate import env_spec, evaluate

        agent = load_policy(policy, decoder)
        meta = {**agent.env_meta, **env}
        res = evaluate(agent, env_spec(meta, split), conf["episodes"], conf["seed"], conf["workers"],
                       progress=progress, desc=f"eval {meta.get('task')} {split}")
        return res.as_dict()

    return run_stage(root, "evaluate", conf, fn)[1]
