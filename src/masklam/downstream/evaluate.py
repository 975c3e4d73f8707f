"""`masklam evaluate`: online returns (and success rates) of a trained policy, in and out of distribution.

The episodes are played by the one rollout loop (masklam.envs.rollout: worker processes, batched
inference, episode i reset from the `eval` seed stream). Here: the environment of a policy's training
data (`env_spec`), normalisation by full-data BC's return (`normalized_return`), the per-split summary
(`EvalResult`) and the CLI, which writes eval.json. In-distribution = the background videos the policy's data
were collected on (the train split, unless collected with `--video-split eval`); out-of-distribution =
`video_split="eval"`, the held-out videos.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from masklam.envs.rollout import DEFAULT_FACTORY, EnvSpec, Policy, rollout
from masklam.envs.videos import VIDEO_SPLIT_OF
from masklam.args import parse
from masklam.errors import MasklamError
from masklam.files import config_record, write_json
from masklam.metrics import standard_error
from masklam.seeding import check_seeds

VERSION = 2
"""Version of what evaluation computes for a config (2: episodes from the `eval` seed stream)."""

SPLITS = tuple(VIDEO_SPLIT_OF)


@dataclass
class EvalResult:
    """Per-episode returns (in episode order) and their summary; success where the env reports it."""

    returns: list[float]
    """per-episode returns"""
    mean: float
    """mean return"""
    std: float
    """population std of the returns"""
    normalized: float | None
    """mean / normaliser (None without a normaliser)"""
    episodes_per_s: float
    """episodes per second of stepping"""
    successes: list[bool] | None = None
    """per episode: info["success"] was true at some step (None: the env reports no success)"""

    @property
    def success_rate(self) -> float | None:
        """Fraction of successful episodes (None where the env reports no success)."""
        return None if self.successes is None else float(np.mean(self.successes))

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (eval.json, the experiment's evaluation stage)."""
        return {"returns": self.returns, "mean": self.mean, "std": self.std,
                "normalized": self.normalized, "episodes_per_s": self.episodes_per_s,
                "successes": self.successes, "success_rate": self.success_rate}


def normalized_return(mean_return: float, normalizer: float | None) -> float | None:
    """Mean return divided by the full-data BC return measured with the same protocol."""
    if normalizer is None:
        return None
    if not np.isfinite(normalizer) or normalizer == 0:
        raise MasklamError(f"normaliser return must be finite and non-zero, got {normalizer}")
    return float(mean_return / normalizer)


def evaluate(policy: Policy, spec: EnvSpec, episodes: int, seed: int = 0, workers: int = 0,
             normalizer: float | None = None, progress: bool = True, desc: str = "eval") -> EvalResult:
    """Run `episodes` episodes of `policy`, `workers` at a time; returns per-episode returns in order."""
    r = rollout(policy, spec, episodes, seed, workers, progress=progress, desc=desc)
    mean = float(r.returns.mean())
    return EvalResult(r.returns.tolist(), mean, float(r.returns.std()), normalized_return(mean, normalizer),
                      r.episodes_per_s, r.successes)


def env_spec(env_meta: dict[str, Any], split: str, task: str | None = None,
             max_episode_steps: int | None = None) -> EnvSpec:
    """The env of a policy's training data (recorded by bc.py), on its data's videos ('id': the train split unless
    the data were collected on the eval split) or the held-out eval videos ('ood')."""
    if split not in SPLITS:
        raise MasklamError(f"unknown split {split!r}; use 'id' or 'ood'")
    if env_meta.get("data_video_split") == VIDEO_SPLIT_OF[split] and split == "ood":
        raise MasklamError("the policy's data were collected on the held-out (eval) background videos: an 'ood' "
                           "evaluation would play them again; evaluate 'id', or collect on the train videos")
    kwargs = {k: v for k, v in env_meta.items() if k not in ("task", "factory", "data_video_split")}
    # in-distribution: the videos the data were collected on (data on the held-out videos: those, not the train ones)
    kwargs["video_split"] = env_meta.get("data_video_split", VIDEO_SPLIT_OF[split]) if split == "id" \
        else VIDEO_SPLIT_OF[split]
    factory = env_meta.get("factory", DEFAULT_FACTORY)
    if factory == DEFAULT_FACTORY:
        kwargs["agent_masks"] = False  # a policy sees frames only: no segmentation pass (~12% of a step)
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    name = task or env_meta.get("task")
    if not name:
        raise MasklamError("no task recorded with the policy (its data record none, e.g. MaskLAM's parquet data); "
                           "pass --task")
    return EnvSpec(name, kwargs, factory)


@dataclass
class EvaluateConfig:
    """Online returns (and Meta-World's success rate) of a trained policy (with its decoder for latent policies)."""

    policy: Path
    """directory of a policy written by `masklam bc` (save_pretrained)"""
    decoder: Path | None = None
    """directory of an action decoder written by `masklam decode` (latent policies need one)"""
    task: str | None = None
    """task; default: the task recorded with the policy"""
    episodes: int = 25
    """episodes per split"""
    workers: int = 2
    """worker processes (0 = one environment in this process, batch-1 inference)"""
    seed: int = 0
    """evaluation seed; episode i is reset with the `eval` stream's seed (seed, i)"""
    splits: tuple[str, ...] = SPLITS
    """'id' = the distractor videos of the policy's data (the train split unless collected on the eval one),
    'ood' = the held-out evaluation video split"""
    normalizer_id: float | None = None
    """full-data BC return on the 'id' videos (those of the policy's data), the normaliser of the 'id' split"""
    normalizer_ood: float | None = None
    """the same BC policy's return on the held-out videos, the normaliser of the 'ood' split"""
    max_episode_steps: int | None = None
    """shorter episodes (tests, smoke runs); default: the task's length"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N"""
    out: Path = Path("eval.json")
    """the JSON file of per-split results (default: eval.json in the working directory; its directory is
    created)"""

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.workers < 0:
            raise MasklamError(f"episodes must be >= 1 and workers >= 0, got {self.episodes} and {self.workers}")
        check_seeds(seed=self.seed)
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise MasklamError(f"--max-episode-steps must be >= 1, got {self.max_episode_steps}")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise MasklamError(f"unknown split {bad[0]!r}; use 'id' or 'ood'")


def evaluate_splits(policy: Policy, env_meta: dict[str, Any], cfg: EvaluateConfig) -> dict[str, EvalResult]:
    """Evaluate `policy` on each of cfg.splits, normalised where cfg gives a normaliser; prints one line each."""
    results = {}
    for split in cfg.splits:
        spec = env_spec(env_meta, split, cfg.task, cfg.max_episode_steps)
        normalizer = cfg.normalizer_id if split == "id" else cfg.normalizer_ood
        res = evaluate(policy, spec, cfg.episodes, cfg.seed, cfg.workers, normalizer, desc=f"eval {split}")
        norm = "" if res.normalized is None else f", normalised {res.normalized:.3f}"
        won = "" if res.success_rate is None else f", success {res.success_rate:.0%}"
        print(f"{split}: return {res.mean:.1f} ± {standard_error(res.returns):.1f} (standard error) "
              f"over {cfg.episodes} episodes{norm}{won}")
        results[split] = res
    return results


def main(argv: list[str]) -> int:
    """`masklam evaluate --policy DIR [--decoder DIR] [--out FILE]`."""
    from masklam.devices import resolve_device
    from masklam.downstream.agent import load_policy

    cfg = parse(EvaluateConfig, argv)
    policy = load_policy(cfg.policy, cfg.decoder, resolve_device(cfg.device))
    results = evaluate_splits(policy, policy.env_meta, cfg)
    write_json(cfg.out, {**{split: res.as_dict() for split, res in results.items()}, "config": config_record(cfg)},
               indent=1)
    print(f"wrote {cfg.out}")
    return 0
