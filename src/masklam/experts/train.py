"""`masklam expert train|eval`: state-based SAC experts without distractors (stable-baselines3).

    masklam expert train --task cheetah-run --steps 150000 --action-repeat 4
    masklam expert eval --task cheetah-run --episodes 10

Training writes `runs/experts/<task>/` (`checkpoint/`: SB3's checkpoint, replay buffer and the random streams, to
resume exactly; the best actor so far by periodic evaluation; `metrics.json`); `--ship` copies the best actor into
the source tree's `src/masklam/experts/` (only from a source checkout), `--ship-to DIR` into DIR. Evaluation
episodes are played by the one rollout loop (masklam.envs.rollout), reset from the `eval` seed stream.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from masklam.envs.rollout import EnvSpec, rollout
from masklam.envs.suite import dmc_domain_task
from masklam.args import PROG, parse
from masklam.errors import MasklamError, one_line
from masklam.files import config_record, read_json, read_record, write_json
from masklam.experts import sac_state
from masklam.experts.policy import SHIPPED_DIR, ExpertPolicy, load, save_expert
from masklam.experts.state_env import StateEnv

SELECTION_EPISODES = 5
"""episodes of each periodic evaluation during training (the best actor is kept)"""
SELECTION_FIRST_EPISODE = 10_000
"""periodic evaluations at update n play eval-stream episodes 10_000 + n ..: never the final evaluation's"""
FINAL_EPISODES = 10
"""episodes of the final evaluation recorded with the actor (`mean_return_10`)"""
LEARNING_STARTS = 5000
"""SAC's steps of uniformly random actions before its first update"""
BUFFER_MAX = 1_000_000
"""SAC's replay buffer holds the whole run up to this many transitions (so resume files stay as small as the data)"""


@dataclasses.dataclass
class ExpertTrainConfig:
    """Train a state-based expert: SAC on the proprioceptive state without distractors."""

    task: str = "cheetah-run"
    """dm_control suite task, domain-task."""
    steps: int = 150_000
    """environment steps (agent decisions) to train for; SAC makes one update per step after 5000."""
    action_repeat: int = 4
    """physics steps per action; the expert's datasets use the same value."""
    seed: int = 0
    """seeds SAC and the training environment."""
    eval_every: int = 10_000
    """evaluate the current actor every this many steps (5 episodes), keep the best, and checkpoint (an
    interrupted run resumes from the last checkpoint, exactly as it would have gone on)."""
    out: Path = Path("runs/experts")
    """run directory root; the run goes to OUT/TASK (OUT/TASK/checkpoint: what a resume reads)."""
    ship: bool = False
    """copy the best actor into the source tree's src/masklam/experts/ (error unless installed from a checkout)."""
    ship_to: Path | None = None
    """copy the best actor to SHIP_TO/TASK.safetensors and .json instead."""
    batch_size: int = 256
    """SAC minibatch size (one gradient step per environment step); 128 halves the CPU cost."""
    threads: int = 1
    """torch threads."""

    def __post_init__(self) -> None:
        dmc_domain_task(self.task)  # unknown task -> one-line error
        _positive(self, ("steps", "action_repeat", "eval_every", "batch_size", "threads"))
        if self.steps < self.eval_every:  # no actor would be evaluated, so none kept: fail before training
            raise MasklamError(f"--steps ({self.steps}) must be at least --eval-every ({self.eval_every}): the best "
                               "actor is chosen among the evaluated ones")


@dataclasses.dataclass
class ExpertEvalConfig:
    """Evaluate a state-based expert: its mean return over seeded episodes."""

    task: str = "cheetah-run"
    """dm_control suite task, domain-task."""
    episodes: int = FINAL_EPISODES
    """episodes to average (episodes 0.. of the `eval` seed stream)."""
    seed: int = 0
    """evaluation seed."""
    path: Path | None = None
    """a .safetensors expert to evaluate instead of the shipped one."""
    threads: int = 1
    """torch threads."""

    def __post_init__(self) -> None:
        dmc_domain_task(self.task)
        _positive(self, ("episodes", "threads"))


def _positive(cfg: Any, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise MasklamError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")


class _StatePolicy:
    """A state -> action callable as a rollout policy (frame stack 1: the newest state)."""

    frame_stack = 1

    def __init__(self, policy: Callable[[np.ndarray], np.ndarray]) -> None:
        self.policy = policy

    def select_action(self, obs: np.ndarray) -> np.ndarray:
        """(B, 1, S) states -> (B, A) actions."""
        return np.asarray(self.policy(obs[:, -1]), np.float32).reshape(len(obs), -1)


def evaluate_policy(policy: Callable[[np.ndarray], np.ndarray], task: str, action_repeat: int, episodes: int,
                    seed: int = 0, first_episode: int = 0) -> np.ndarray:
    """Returns of `policy` (state -> action) over `episodes` episodes of the `eval` seed stream, (episodes,)."""
    spec = EnvSpec(task, {"action_repeat": action_repeat}, "masklam.experts.state_env:StateEnv")
    return rollout(_StatePolicy(policy), spec, episodes, seed, workers=0, first_episode=first_episode,
                   progress=False).returns


def actor_weights(model: Any) -> dict[str, torch.Tensor]:
    """The deterministic part of an SB3 SAC actor as plain tensors (hidden.i.*, mu.*)."""
    linears = [m for m in model.policy.actor.latent_pi if isinstance(m, torch.nn.Linear)]
    w = {}
    for i, lin in enumerate(linears):
        w[f"hidden.{i}.weight"], w[f"hidden.{i}.bias"] = lin.weight.detach().clone(), lin.bias.detach().clone()
    w["mu.weight"], w["mu.bias"] = (model.policy.actor.mu.weight.detach().clone(),
                                    model.policy.actor.mu.bias.detach().clone())
    return w


def ship_dir(cfg: ExpertTrainConfig) -> Path | None:
    """Where `--ship` / `--ship-to` copy the best actor: SHIP_TO, the source tree's experts/, or None."""
    if cfg.ship_to is not None:
        return cfg.ship_to
    if not cfg.ship:
        return None
    if SHIPPED_DIR.parent.parent.name != "src" or not (SHIPPED_DIR.parents[2] / "pyproject.toml").is_file():
        raise MasklamError(f"--ship writes into a source checkout's src/masklam/experts, but masklam runs from "
                           f"{SHIPPED_DIR}; use --ship-to DIR")
    return SHIPPED_DIR


class _Run:
    """The files of a training run in OUT/TASK: the last checkpoint (checkpoint/: SAC, its replay buffer, the random
    streams and episode in progress, the metrics up to it), metrics.json and the best actor."""

    def __init__(self, cfg: ExpertTrainConfig) -> None:
        self.cfg, self.dir = cfg, cfg.out / cfg.task
        self.ckpt_dir, self.metrics_path = self.dir / "checkpoint", self.dir / "metrics.json"
        self.saved_step: int | None = None  # the step of the last checkpoint, once known
        found = self.found()
        self.metrics = {"evals": [], "best_return": -1e9}
        if found is not None and (found / "metrics.json").is_file():
            self.metrics = read_json(found / "metrics.json")
        best = read_record(self.dir / "best.json")  # a best kept after the checkpoint: a new best must beat it
        if found is not None and best.get("selection_return", -1e9) > self.metrics["best_return"]:
            self.metrics.update(best_return=best["selection_return"], best_step=best.get("step"))

    def found(self) -> Path | None:
        """The folder of the last complete checkpoint: checkpoint/; checkpoint.old/ when a save was cut between
        its renames; OUT/TASK itself for a run from before checkpoints had a folder; None before the first."""
        for d in (self.ckpt_dir, self.dir / "checkpoint.old", self.dir):
            if (d / "sac.zip").is_file():
                return d
        return None

    def model(self, env: StateEnv) -> Any:
        """SAC resumed from the checkpoint, or a fresh one."""
        from stable_baselines3 import SAC

        cfg, found = self.cfg, self.found()
        if found is not None:
            try:
                model = SAC.load(found / "sac.zip", env=env, device="cpu", batch_size=cfg.batch_size)
                if (found / "replay.pkl").is_file():
                    model.load_replay_buffer(found / "replay.pkl")
            except Exception as e:  # a damaged or foreign file: SB3 raises ValueError, pickle's own errors, ...
                raise MasklamError(f"cannot resume from {found} ({one_line(e)}); delete it to start over, or use "
                                   "another --out") from None
            sac_state.grow_buffer(model, min(cfg.steps, BUFFER_MAX))  # resumed with more --steps
            exact = sac_state.load(found / "resume.pt", model)
            self.saved_step = int(model.num_timesteps)
            print(f"resuming {cfg.task} from step {model.num_timesteps}"
                  + ("" if exact else " (a checkpoint without its random streams: they are re-seeded)"))
            return model
        return SAC("MlpPolicy", env, seed=cfg.seed, device="cpu", learning_starts=LEARNING_STARTS, verbose=0,
                   batch_size=cfg.batch_size, buffer_size=min(cfg.steps, BUFFER_MAX),
                   policy_kwargs={"net_arch": [256, 256]})

    def save(self, model: Any) -> None:
        """A checkpoint, whole or not at all: written to checkpoint.new/, then renamed over checkpoint/ (the
        previous one kept as checkpoint.old/ between the two renames); then metrics.json."""
        new, old = self.dir / "checkpoint.new", self.dir / "checkpoint.old"
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(parents=True)
        model.save(new / "sac.zip")
        model.save_replay_buffer(new / "replay.pkl")
        sac_state.save(new / "resume.pt", model)
        write_json(new / "metrics.json", self.metrics)
        if self.ckpt_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.ckpt_dir, old)
        os.replace(new, self.ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
        for legacy in ("sac.zip", "replay.pkl"):  # a run from before the folder: its checkpoint is superseded
            (self.dir / legacy).unlink(missing_ok=True)
        write_json(self.metrics_path, self.metrics)
        self.saved_step = int(model.num_timesteps)

    def select(self, model: Any, n: int) -> float:
        """Evaluate the current actor at step n; keep it as best.safetensors when it beats the best so far."""
        cfg, w = self.cfg, actor_weights(model)
        pol = ExpertPolicy(w, {"task": cfg.task, "action_repeat": cfg.action_repeat})
        rets = evaluate_policy(pol, cfg.task, cfg.action_repeat, SELECTION_EPISODES, cfg.seed,
                               SELECTION_FIRST_EPISODE + n)
        self.metrics["evals"].append({"step": n, "mean": float(rets.mean()), "std": float(rets.std())})
        if rets.mean() > self.metrics["best_return"]:
            self.metrics["best_return"], self.metrics["best_step"] = float(rets.mean()), n
            save_expert(self.dir / "best", w, {"task": cfg.task, "action_repeat": cfg.action_repeat,
                                               "algorithm": "SAC (stable-baselines3)", "step": n,
                                               "selection_return": float(rets.mean())})
        return float(rets.mean())


def _learn(run: _Run, model: Any) -> None:
    """SAC until cfg.steps in stretches of eval_every steps, each followed by an evaluation and a checkpoint: a
    checkpoint falls between two steps (SB3's callbacks run mid-step), so a resume continues exactly; an interrupted
    stretch is trained again from the last checkpoint."""
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger

    cfg = run.cfg
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's own makes a /tmp/SB3-<time> folder per learn()
    bar = tqdm(total=cfg.steps, initial=model.num_timesteps, desc=f"expert {cfg.task}", unit="step")

    class Progress(BaseCallback):
        def _on_step(self) -> bool:
            bar.update(1)
            return True

    try:
        while model.num_timesteps < cfg.steps:
            n = model.num_timesteps
            model.learn(min(cfg.eval_every - n % cfg.eval_every, cfg.steps - n), callback=Progress(),
                        reset_num_timesteps=False)
            if model.num_timesteps % cfg.eval_every == 0:
                ret = run.select(model, model.num_timesteps)
                bar.set_postfix(ret=f"{ret:.0f}", best=f"{run.metrics['best_return']:.0f}")
            run.save(model)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: the same command resumes {cfg.task} from its checkpoint at step {run.saved_step}"
              if run.saved_step is not None else
              f"interrupted before {cfg.task}'s first checkpoint: the same command starts over")
        raise
    bar.close()


RESUMABLE = frozenset({"steps", "eval_every", "out", "ship", "ship_to", "threads"})
"""what may change between an interrupted `masklam expert train` and its resumption"""


def _check_resume(run: _Run) -> None:
    """One line when OUT/TASK holds a checkpoint made with other settings (another action repeat would mix two
    in the replay buffer, and measure the best actor at the wrong one)."""
    path = run.dir / "config.json"
    if not (run.found() is not None and path.is_file()):
        return
    old = read_json(path)
    new = config_record(run.cfg)
    for key, value in new.items():
        if key not in RESUMABLE and key in old and old[key] != value:
            raise MasklamError(f"{run.dir} holds a run with {key}={old[key]!r}, not {value!r}; use the same "
                               "arguments to resume, or another --out")


def _finish(run: _Run) -> None:
    """Evaluate the best actor over FINAL_EPISODES episodes, at its own action repeat, and record the result
    beside it."""
    cfg = run.cfg
    best = load(cfg.task, run.dir / "best.safetensors")
    rets = evaluate_policy(best, cfg.task, best.action_repeat, FINAL_EPISODES)
    run.metrics.update(final_mean_return=float(rets.mean()), final_std_return=float(rets.std()), steps=cfg.steps)
    best.meta.update(mean_return_10=float(rets.mean()), std_return_10=float(rets.std()), train_steps=cfg.steps,
                     eval_command=f"masklam expert eval --task {cfg.task} --episodes {FINAL_EPISODES}")
    write_json(run.dir / "best.json", best.meta)
    write_json(run.metrics_path, run.metrics)
    print(f"{cfg.task}: best actor (step {run.metrics.get('best_step')}) returns {rets.mean():.1f} ± {rets.std():.1f} "
          f"over {FINAL_EPISODES} episodes")


def train(cfg: ExpertTrainConfig) -> dict:
    """Train SAC, resuming from the checkpoint in OUT/TASK when there is one; returns the metrics written."""
    ship_to = ship_dir(cfg)  # a bad --ship fails before training, not after
    torch.set_num_threads(cfg.threads)
    run = _Run(cfg)
    _check_resume(run)
    run.dir.mkdir(parents=True, exist_ok=True)
    write_json(run.dir / "config.json", dataclasses.asdict(cfg))
    env = StateEnv(cfg.task, cfg.action_repeat)
    env.reset(seed=cfg.seed)
    _learn(run, run.model(env))
    _finish(run)
    if ship_to is not None:
        ship_to.mkdir(parents=True, exist_ok=True)
        for suffix in (".safetensors", ".json"):
            shutil.copy(run.dir / f"best{suffix}", ship_to / f"{cfg.task}{suffix}")
        print(f"shipped to {ship_to / cfg.task}.safetensors")
    return run.metrics


def evaluate(cfg: ExpertEvalConfig) -> np.ndarray:
    """Mean return of the shipped (or given) expert; prints it; returns the per-episode returns."""
    torch.set_num_threads(cfg.threads)
    policy = load(cfg.task, cfg.path)
    t0 = time.time()
    rets = evaluate_policy(policy, cfg.task, policy.action_repeat, cfg.episodes, cfg.seed)
    print(f"{cfg.task} (action repeat {policy.action_repeat}): return {rets.mean():.1f} ± {rets.std():.1f} "
          f"over {cfg.episodes} episodes [{', '.join(f'{r:.0f}' for r in rets)}] in {time.time() - t0:.0f}s")
    return rets


def main(argv: list[str]) -> int:
    """`masklam expert train ...` or `masklam expert eval ...`."""
    if not argv or argv[0] not in ("train", "eval"):
        if argv and argv[0] in ("-h", "--help"):
            print("usage: masklam expert {train,eval} [OPTIONS]\n\n  train  SAC on the state, no distractors "
                  "(masklam expert train --help)\n  eval   an expert's mean return (masklam expert eval --help)")
            raise SystemExit(0)  # as every command's --help
        raise MasklamError("usage: masklam expert {train,eval} [OPTIONS]")
    token = PROG.set(f"{PROG.get()} {argv[0]}")  # usage lines read `masklam expert train ...`
    try:
        cfg = parse(ExpertTrainConfig if argv[0] == "train" else ExpertEvalConfig, argv[1:])
    finally:
        PROG.reset(token)
    if isinstance(cfg, ExpertTrainConfig):
        train(cfg)
    else:
        evaluate(cfg)
    return 0
