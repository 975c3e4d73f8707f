"""The experiment's stages: collect, pretrain, bc (and idm), decode, evaluate, each one cached call.

Each adapter turns a sweep's options into its command's config, hashes it with the VERSION of the code that
computes it (the trainer's, whatever the stage kind is called: BC and IDM stages share the BC trainer's) and runs
it through the stage cache (masklam.downstream.cache), which also serves dry runs (masklam.downstream.plan).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from masklam import methods
from masklam.downstream.cache import run_stage
from masklam.downstream.plan import is_pending
from masklam.errors import MasklamError
from masklam.seeding import check_seeds


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
        check_seeds(seed=self.seed)


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
    from masklam.train.recipes import RECIPES

    return bool(RECIPES.get(recipe, {}).get(methods.get(method).trainer))


def recipe_label(method: str, pretrain: dict[str, Any]) -> str:
    """How a row's LAM was trained, for results.csv: the recipe, plus our variants' options ('-' without a LAM)."""
    if not methods.is_kind(method, "lam"):
        return "-"
    label = str(pretrain.get("recipe", "default"))
    if not recipe_applies(method, label):
        label = "default"
    if method == "masklam" and pretrain.get("mask_target"):
        label += "+mask-target"
    if pretrain.get("mask_channel") is not None and methods.get(method).trainer in ("lapo", "masklam"):
        label += "+mask-channel" if pretrain["mask_channel"] else "-mask-channel"
    return label


CADENCE = ("log_every", "ckpt_every")
"""[pretrain] options that set how often a LAM logs and checkpoints, not what it computes (a resume from any
checkpoint continues the same batches): passed to the LAM, kept out of its stage key, so that checkpointing a
running sweep more often does not start its LAMs again"""


def pretrain_conf(method: str, data: list[str], dim: int, seed: int, labeled: int,
                  overrides: dict[str, Any]) -> dict[str, Any]:
    """The PretrainConfig fields (but out, device and the CADENCE options) of a sweep's LAM: the [pretrain] options
    `method` uses; what its stage key hashes."""
    from masklam.train.config import options_for

    overrides = {k: v for k, v in options_for(method, overrides).items() if k not in CADENCE}
    if not recipe_applies(method, overrides.get("recipe", "default")):  # e.g. LAOM: its own paper's recipe
        overrides = {k: v for k, v in overrides.items() if k != "recipe"}
    return {**overrides, "method": method, "data": data, "latent_dim": dim, "seed": seed, "labels": labeled}


def with_cadence(conf: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A LAM's `pretrain_conf` with the [pretrain] CADENCE options given: the fields it trains with."""
    return {**conf, **{k: overrides[k] for k in CADENCE if k in overrides}}


def pretrain_stage(root: Path, method: str, data: list[str], dim: int, seed: int, labeled: int,
                   overrides: dict[str, Any], device: str, progress: bool) -> tuple[Path, dict[str, Any]]:
    """Train a LAM with `masklam.train.pretrain` (cached); result: its probe NMSE.

    Options of other methods are dropped (masklam.train.config.options_for): one LAPO serves every recipe
    that differs only in MaskLAM's loss."""
    from masklam.train.recipes import RECIPES, recipe_at_preset

    conf = pretrain_conf(method, data, dim, seed, labeled, overrides)

    def fn(d: Path) -> dict[str, Any]:
        from masklam.train.config import PretrainConfig
        from masklam.train.pretrain import pretrain

        cfg = PretrainConfig(**{"device": device, "progress": progress, "tensorboard": False,
                                **with_cadence(conf, overrides), "out": d})
        return {"probe_nmse": probe_nmse(pretrain(cfg))}

    recipe = conf.get("recipe", "default")
    meaning = {"recipe": RECIPES[recipe].get(method, {}),
               "recipe_at_preset": recipe_at_preset(recipe, conf.get("preset", "cpu-small"), method)}
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
    """Train an action decoder (DecodeConfig fields in conf) as a cached stage; -> its directory. Its depth is in
    the stage's key also where the default gives it (the default changed from 2 to 3 layers on 2026-12-06: a stage
    cached before it is not taken for today's)."""
    from masklam.downstream.decode import VERSION, DecodeConfig

    conf = {"layers": DecodeConfig.__dataclass_fields__["layers"].default, **conf}

    def fn(d: Path) -> dict[str, Any]:
        from masklam.downstream.decode import train_decoder

        return train_decoder(DecodeConfig(**{"device": device, **conf, "out": d}), progress=progress)

    return run_stage(root, "decode", conf, fn, version=VERSION)[0]


def eval_stage(root: Path, policy: Path, decoder: Path | None, split: str, env: dict[str, Any],
               opts: dict[str, Any], progress: bool) -> tuple[Path, dict[str, Any]]:
    """Online evaluation of a policy (+ decoder) on one split (cached); -> (its directory, {mean, std, returns,
    success_rate})."""
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

    return run_stage(root, "evaluate", conf, fn, version=VERSION)
