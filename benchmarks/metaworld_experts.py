"""Success rate of Meta-World's scripted experts through our environment (the MT10 tasks).

    python benchmarks/metaworld_experts.py [--episodes 10] [--noise 0.1] [--tasks mw-push mw-reach ...]

Each task: `episodes` episodes of the scripted expert with seeded Gaussian action noise (`masklam
collect`'s NoisyPolicy, seeded exactly as `collect --seed 0` seeds trajectory i), in the distracted
environment (preset `masklam`, 64x64, shadows/reflections/multisampling off: the expert reads the state,
so the rendering settings do not change what it does). An episode succeeds when Meta-World's success
flag is set at any step of its 500; it is stopped there. Prints a Markdown table (the README's).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import tyro

from masklam.data.collect import NoisyPolicy
from masklam.envs import MW_TASKS, make
from masklam.experts import load
from masklam.seeding import stream_seed


@dataclass
class Bench:
    tasks: tuple[str, ...] = MW_TASKS
    episodes: int = 10
    noise: float = 0.1
    """std of the Gaussian noise added to the expert's actions (then clipped to [-1, 1])"""
    seed: int = 0
    distractors: str = "masklam"
    max_steps: int = 500


def success_rate(b: Bench, task: str) -> tuple[list[bool], list[int]]:
    """Per episode: success, and the first step with success (or max_steps)."""
    env = make(task, distractors=b.distractors, shadows=False, reflections=False, multisample=False,
               max_episode_steps=b.max_steps)
    expert = load(task)
    wins, steps = [], []
    for i in range(b.episodes):
        rng = np.random.default_rng(np.random.SeedSequence([b.seed, i, 1]))
        policy = NoisyPolicy(expert, rng, b.noise) if b.noise > 0 else expert
        _, info = env.reset(seed=stream_seed("collect", b.seed, i))
        won, t = False, 0
        for t in range(1, b.max_steps + 1):
            _, _, _, truncated, info = env.step(policy(info["state"]))
            if info["success"]:
                won = True
                break
        wins.append(won)
        steps.append(t)
    env.close()
    return wins, steps


def main() -> None:
    b = tyro.cli(Bench)
    print(f"scripted experts, noise {b.noise}, {b.episodes} episodes per task (seed {b.seed}), "
          f"distractors {b.distractors}\n")
    print("| task | success | first success step (median) | s |")
    print("|---|---|---|---|")
    total = 0
    for task in b.tasks:
        t0 = time.perf_counter()
        wins, steps = success_rate(b, task)
        ok = [s for s, w in zip(steps, wins) if w]
        med = f"{int(np.median(ok))}" if ok else "-"
        total += np.mean(wins) >= 0.9
        print(f"| {task} | {sum(wins)}/{len(wins)} | {med} | {time.perf_counter() - t0:.0f} |", flush=True)
    print(f"\n{total}/{len(b.tasks)} tasks at >= 90% success")


if __name__ == "__main__":
    main()
