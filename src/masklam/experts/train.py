"""`masklam expert train|eval`: state-based SAC experts without distractors (stable-baselines3).

    masklam expert train --task cheetah-run --steps 150000 --action-repeat 4
    masklam expert eval --task cheetah-run --episodes 10

Training writes `runs/experts/<task>/` (SB3 checkpoint + replay buffer for resume, the best actor
so far by periodic evaluation, `metrics.json`); `--ship` copies the best actor into the package.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro
from tqdm import tqdm

from masklam.errors import MasklamError
from masklam.experts.policy import SHIPPED_DIR, ExpertPolicy, load, save_expert
from masklam.envs.suite import parse_task
from masklam.experts.state_env import StateEnv


@dataclasses.dataclass
class ExpertConfig:
    """Train (or evaluate) a state-based expert."""

    mode: tyro.conf.Positional[Literal["train", "eval"]]
    """train: SAC on the state without distractors; eval: mean return of an expert over episodes."""
    task: str = "cheetah-run"
    """dm_control suite task, domain-task."""
    steps: int = 150_000
    """Environment steps (agent decisions) to train for."""
    action_repeat: int = 4
    """Physics steps per action; the expert's datasets use the same value."""
    seed: int = 0
    """Seeds SAC and the training environment."""
    episodes: int = 10
    """eval: episodes to average (seeds 1000..1000+episodes-1)."""
    eval_every: int = 10_000
    """train: evaluate the current actor every this many steps (5 episodes), keep the best."""
    out: Path = Path("runs/experts")
    """train: run directory root; the run goes to OUT/TASK."""
    ship: bool = False
    """train: copy the best actor into the package (masklam/experts/TASK.safetensors)."""
    path: Path | None = None
    """eval: a .safetensors expert to evaluate instead of the shipped one."""
    batch_size: int = 256
    """train: SAC minibatch size (one gradient step per environment step); 128 halves the CPU cost."""
    threads: int = 1
    """torch threads."""

    def __post_init__(self):
        parse_task(self.task)  # unknown task -> one-line error
        for name in ("steps", "action_repeat", "episodes", "eval_every", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise MasklamError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def evaluate_policy(policy, task: str, action_repeat: int, episodes: int, seed0: int = 1000) -> np.ndarray:
    """Returns of `policy` (state -> action) over `episodes` seeded episodes, shape (episodes,)."""
    env = StateEnv(task, action_repeat)
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed0 + ep)
        done, ret = False, 0.0
        while not done:
            obs, r, term, trunc, _ = env.step(policy(obs))
            ret, done = ret + r, term or trunc
        returns.append(ret)
    return np.asarray(returns)


def actor_weights(model) -> dict[str, torch.Tensor]:
    """The deterministic part of an SB3 SAC actor as plain tensors (hidden.i.*, mu.*)."""
    linears = [m for m in model.policy.actor.latent_pi if isinstance(m, torch.nn.Linear)]
    w = {}
    for i, lin in enumerate(linears):
        w[f"hidden.{i}.weight"], w[f"hidden.{i}.bias"] = lin.weight.detach().clone(), lin.bias.detach().clone()
    w["mu.weight"], w["mu.bias"] = model.policy.actor.mu.weight.detach().clone(), model.policy.actor.mu.bias.detach().clone()
    return w


def train(cfg: ExpertConfig) -> dict:
    """Train SAC, resuming from OUT/TASK/sac.zip when present; returns the metrics written."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(cfg.threads)
    run = cfg.out / cfg.task
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str) + "\n")
    env = StateEnv(cfg.task, cfg.action_repeat)
    env.reset(seed=cfg.seed)
    ckpt, buffer = run / "sac.zip", run / "replay.pkl"
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() and ckpt.exists() else {"evals": [], "best_return": -1e9}
    if ckpt.exists():
        model = SAC.load(ckpt, env=env, device="cpu", batch_size=cfg.batch_size)
        if buffer.exists():
            model.load_replay_buffer(buffer)
        print(f"resuming {cfg.task} from step {model.num_timesteps}")
    else:
        # The buffer holds the whole run (never more than 1M), so resume files stay as small as the data.
        model = SAC("MlpPolicy", env, seed=cfg.seed, device="cpu", learning_starts=5000, verbose=0,
                    batch_size=cfg.batch_size, buffer_size=min(cfg.steps, 1_000_000),
                    policy_kwargs={"net_arch": [256, 256]})

    def save_state():
        model.save(ckpt)
        model.save_replay_buffer(buffer)
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")

    class Progress(BaseCallback):
        def _on_training_start(self):
            self.bar = tqdm(total=cfg.steps, initial=self.model.num_timesteps, desc=f"expert {cfg.task}", unit="step")

        def _on_step(self) -> bool:
            self.bar.update(1)
            n = self.model.num_timesteps
            if n % cfg.eval_every == 0:
                w = actor_weights(self.model)
                pol = ExpertPolicy(w, {"task": cfg.task, "action_repeat": cfg.action_repeat})
                rets = evaluate_policy(pol, cfg.task, cfg.action_repeat, 5, seed0=10_000 + n)
                metrics["evals"].append({"step": n, "mean": float(rets.mean()), "std": float(rets.std())})
                self.bar.set_postfix(ret=f"{rets.mean():.0f}", best=f"{max(metrics['best_return'], rets.mean()):.0f}")
                if rets.mean() > metrics["best_return"]:
                    metrics["best_return"], metrics["best_step"] = float(rets.mean()), n
                    save_expert(run / "best", w, {"task": cfg.task, "action_repeat": cfg.action_repeat,
                                                  "algorithm": "SAC (stable-baselines3)", "step": n})
                save_state()
            return True

    remaining = cfg.steps - model.num_timesteps
    if remaining > 0:
        try:
            model.learn(remaining, callback=Progress(), reset_num_timesteps=False)
        except KeyboardInterrupt:
            save_state()
            raise
    save_state()
    best = load(cfg.task, run / "best.safetensors")
    rets = evaluate_policy(best, cfg.task, cfg.action_repeat, 10)
    metrics.update(final_mean_return=float(rets.mean()), final_std_return=float(rets.std()), steps=cfg.steps)
    best.meta.update(mean_return_10=float(rets.mean()), std_return_10=float(rets.std()), train_steps=cfg.steps,
                     eval_command=f"masklam expert eval --task {cfg.task} --episodes 10")
    (run / "best.json").write_text(json.dumps(best.meta, indent=2) + "\n")
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"{cfg.task}: best actor (step {metrics.get('best_step')}) returns {rets.mean():.1f} ± {rets.std():.1f} over 10 episodes")
    if cfg.ship:
        for suffix in (".safetensors", ".json"):
            shutil.copy(run / f"best{suffix}", SHIPPED_DIR / f"{cfg.task}{suffix}")
        print(f"shipped to {SHIPPED_DIR / cfg.task}.safetensors")
    return metrics


def main(argv: list[str]) -> int:
    cfg = tyro.cli(ExpertConfig, args=argv)
    if cfg.mode == "train":
        train(cfg)
        return 0
    torch.set_num_threads(cfg.threads)
    policy = load(cfg.task, cfg.path)
    t0 = time.time()
    rets = evaluate_policy(policy, cfg.task, policy.action_repeat, cfg.episodes)
    print(f"{cfg.task} (action repeat {policy.action_repeat}): return {rets.mean():.1f} ± {rets.std():.1f} "
          f"over {cfg.episodes} episodes [{', '.join(f'{r:.0f}' for r in rets)}] in {time.time() - t0:.0f}s")
    return 0
