"""Online evaluation: many environments in worker processes, one batched policy forward per step.

Each of W worker processes owns one environment; the parent gathers every worker's observation,
keeps the frame stacks, runs the policy once on the whole batch and sends each worker its action.
Episode i is reset with a seed derived from (seed, i) only, so returns do not depend on W, and drawn from
the `eval` seed stream, so no evaluation episode replays a collected trajectory (masklam.seeding).
W = 0 runs one environment in this process with batch-1 inference (the reference protocol).
In-distribution = the training video split; out-of-distribution = `video_split="eval"`.
"""
from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tyro
from tqdm import tqdm

from masklam.errors import MasklamError
from masklam.seeding import stream_seed


class Policy(Protocol):
    """What evaluation needs from a policy."""

    frame_stack: int

    def select_action(self, obs: np.ndarray) -> np.ndarray:
        """(B, F, H, W, 3) uint8 -> (B, A) float32 actions."""


@dataclass
class EnvSpec:
    """How to build one evaluation environment: `factory(task, **kwargs)` in the worker."""

    task: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    factory: str = "masklam.envs:make"
    """`module:function` building the env (tests substitute a tiny one)"""

    def build(self):  # noqa: ANN201 (gymnasium.Env)
        """Import the factory and make the environment."""
        module, _, name = self.factory.partition(":")
        return getattr(importlib.import_module(module), name)(self.task, **self.kwargs)


@dataclass
class EvalResult:
    """Per-episode returns (in episode order) and their summary; success where the env reports it."""

    returns: list[float]
    mean: float
    std: float
    normalized: float | None
    episodes_per_s: float
    successes: list[bool] | None = None
    """per episode: info["success"] was true at some step (None: the env reports no success)"""

    @property
    def success_rate(self) -> float | None:
        return None if self.successes is None else float(np.mean(self.successes))

    def as_dict(self) -> dict[str, Any]:
        return {"returns": self.returns, "mean": self.mean, "std": self.std,
                "normalized": self.normalized, "episodes_per_s": self.episodes_per_s,
                "successes": self.successes, "success_rate": self.success_rate}


def standard_error(values: list[float] | np.ndarray) -> float:
    """Standard error of the mean (sample std / sqrt n); 0 for a single value."""
    v = np.asarray(values, np.float64)
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def episode_seed(seed: int, episode: int) -> int:
    """The reset seed of episode `episode` of an evaluation seeded with `seed`: the `eval` stream
    (masklam.seeding), never the seed of a collected trajectory, whatever the two seeds."""
    return stream_seed("eval", seed, episode)


def normalized_return(mean_return: float, normalizer: float | None) -> float | None:
    """Mean return divided by the full-data BC return measured with the same protocol."""
    if normalizer is None:
        return None
    if not np.isfinite(normalizer) or normalizer == 0:
        raise MasklamError(f"normaliser return must be finite and non-zero, got {normalizer}")
    return float(mean_return / normalizer)


def _step(env, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool | None]:  # noqa: ANN001
    """(obs, reward, done, success): success is info["success"], None where the env does not report it."""
    obs, reward, terminated, truncated, info = env.step(action)
    success = info.get("success") if isinstance(info, dict) else None
    return obs, float(reward), bool(terminated or truncated), None if success is None else bool(success)


def _worker(spec: EnvSpec, conn) -> None:  # noqa: ANN001 (multiprocessing connection)
    """Worker loop: ("reset", seed) -> obs; ("step", action) -> (obs, reward, done, success); ("close",)."""
    try:
        env = spec.build()
    except BaseException as e:  # report the failure to the parent as one line
        conn.send(("error", f"{type(e).__name__}: {e}" if isinstance(e, MasklamError) else traceback.format_exc()))
        return
    conn.send(("ready", None))
    while True:
        msg = conn.recv()
        if msg[0] == "reset":
            obs, _ = env.reset(seed=msg[1])
            conn.send(("obs", obs))
        elif msg[0] == "step":
            conn.send(("step", _step(env, msg[1])))
        else:
            env.close()
            conn.close()
            return


class _LocalEnv:
    """In-process stand-in for a worker (W = 0): same messages, no process."""

    def __init__(self, spec: EnvSpec) -> None:
        self.env = spec.build()
        self._reply: tuple = ("ready", None)

    def send(self, msg: tuple) -> None:
        if msg[0] == "reset":
            self._reply = ("obs", self.env.reset(seed=msg[1])[0])
        elif msg[0] == "step":
            self._reply = ("step", _step(self.env, msg[1]))
        else:
            self.env.close()

    def recv(self) -> tuple:
        return self._reply


def _recv(conn) -> tuple:  # noqa: ANN001
    kind, payload = conn.recv()
    if kind == "error":
        raise MasklamError(f"evaluation environment failed to start: {payload.strip().splitlines()[-1]}")
    return kind, payload


def _start(spec: EnvSpec, workers: int) -> tuple[list, list]:
    """Start W worker processes (forkserver: EGL and fork do not mix), or one local env for W = 0."""
    if workers == 0:
        return [_LocalEnv(spec)], []
    ctx = mp.get_context("forkserver")
    conns, procs = [], []
    for _ in range(workers):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(spec, child), daemon=True)
        p.start()
        child.close()
        conns.append(parent)
        procs.append(p)
    return conns, procs


def evaluate(policy: Policy, spec: EnvSpec, episodes: int, seed: int = 0, workers: int = 0,
             normalizer: float | None = None, progress: bool = True, desc: str = "eval") -> EvalResult:
    """Run `episodes` episodes of `policy`, `workers` at a time; returns per-episode returns in order."""
    if episodes < 1:
        raise MasklamError(f"episodes must be >= 1, got {episodes}")
    if workers < 0:
        raise MasklamError(f"workers must be >= 0, got {workers}")
    conns, procs = _start(spec, min(workers, episodes))
    n_slots, F = len(conns), max(1, int(policy.frame_stack))
    returns = np.zeros(episodes, dtype=np.float64)
    success = np.zeros(episodes, dtype=bool)
    reports_success = False
    slot_ep = [-1] * n_slots  # episode each slot is playing, -1 = idle
    stacks: list[np.ndarray | None] = [None] * n_slots  # (F, H, W, 3) per slot
    next_ep, done_eps = 0, 0
    bar = tqdm(total=episodes, desc=desc, unit="ep", disable=not progress)
    try:
        for c in conns:
            _recv(c)  # "ready" (or the worker's start-up error)
        t0 = time.perf_counter()  # episodes/s measures stepping, not process start-up

        def launch(slot: int) -> None:
            nonlocal next_ep
            if next_ep < episodes:
                slot_ep[slot] = next_ep
                conns[slot].send(("reset", episode_seed(seed, next_ep)))
                next_ep += 1
            else:
                slot_ep[slot] = -1

        for s in range(n_slots):
            launch(s)
        for s in range(n_slots):
            if slot_ep[s] >= 0:
                obs = _recv(conns[s])[1]
                stacks[s] = np.repeat(obs[None], F, axis=0)  # the first frame repeated at reset
        while done_eps < episodes:
            active = [s for s in range(n_slots) if slot_ep[s] >= 0]
            batch = np.stack([stacks[s] for s in active])  # (B, F, H, W, 3) uint8
            actions = np.asarray(policy.select_action(batch), dtype=np.float32)  # (B, A)
            for i, s in enumerate(active):
                conns[s].send(("step", actions[i]))
            for s in active:
                obs, reward, done, ok = _recv(conns[s])[1]
                returns[slot_ep[s]] += reward
                if ok is not None:
                    reports_success = True
                    success[slot_ep[s]] |= ok
                if done:
                    done_eps += 1
                    bar.update(1)
                    launch(s)
                    if slot_ep[s] >= 0:
                        obs = _recv(conns[s])[1]
                        stacks[s] = np.repeat(obs[None], F, axis=0)
                else:
                    stacks[s] = np.concatenate([stacks[s][1:], obs[None]], axis=0)
    finally:
        bar.close()
        for c in conns:
            try:
                c.send(("close",))
            except (BrokenPipeError, OSError):
                pass
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    elapsed = time.perf_counter() - t0
    mean = float(returns.mean())
    return EvalResult(returns.tolist(), mean, float(returns.std()), normalized_return(mean, normalizer),
                      episodes / max(elapsed, 1e-9), success.tolist() if reports_success else None)


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
    """evaluation seed; episode i is reset with a seed derived from (seed, i)"""
    splits: tuple[str, ...] = ("id", "ood")
    """'id' = training distractor videos, 'ood' = the evaluation video split"""
    normalizer_id: float | None = None
    """full-data BC return on the training videos, the normaliser of the 'id' split"""
    normalizer_ood: float | None = None
    """the same BC policy's return on the held-out videos, the normaliser of the 'ood' split"""
    max_episode_steps: int | None = None
    """shorter episodes (tests, smoke runs); default: the task's length"""
    out: Path | None = None
    """write eval.json here (default: <decoder or policy>/eval.json)"""

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.workers < 0:
            raise MasklamError("episodes must be >= 1 and workers >= 0")
        bad = [s for s in self.splits if s not in ("id", "ood")]
        if bad:
            raise MasklamError(f"unknown split {bad[0]!r}; use 'id' or 'ood'")


def env_spec(env_meta: dict[str, Any], split: str, task: str | None = None,
             max_episode_steps: int | None = None) -> EnvSpec:
    """The env of a policy's training data (recorded by bc.py), on the training ('id') or eval ('ood') videos."""
    if split not in ("id", "ood"):
        raise MasklamError(f"unknown split {split!r}; use 'id' or 'ood'")
    kwargs = {k: v for k, v in env_meta.items() if k not in ("task", "factory")}
    kwargs["video_split"] = "train" if split == "id" else "eval"
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    name = task or env_meta.get("task")
    if not name:
        raise MasklamError("no task recorded with the policy; pass --task")
    return EnvSpec(name, kwargs, env_meta.get("factory", "masklam.envs:make"))


def main(argv: list[str]) -> int:
    """`masklam evaluate --policy DIR [--decoder DIR]`."""
    from masklam.downstream.agent import load_policy

    cfg = tyro.cli(EvaluateConfig, args=argv)
    policy = load_policy(cfg.policy, cfg.decoder)
    results = {}
    for split in cfg.splits:
        spec = env_spec(policy.env_meta, split, cfg.task, cfg.max_episode_steps)
        normalizer = cfg.normalizer_id if split == "id" else cfg.normalizer_ood
        res = evaluate(policy, spec, cfg.episodes, cfg.seed, cfg.workers, normalizer, desc=f"eval {split}")
        results[split] = res.as_dict()
        norm = "" if res.normalized is None else f", normalised {res.normalized:.3f}"
        won = "" if res.success_rate is None else f", success {res.success_rate:.0%}"
        print(f"{split}: return {res.mean:.1f} ± {standard_error(res.returns):.1f} (standard error) over {cfg.episodes} episodes{norm}{won}")
    out = cfg.out or ((cfg.decoder or cfg.policy) / "eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return 0
