"""Collection throughput: frames/s of `masklam collect` with 1 and 2 workers vs one core's render rate.

    python benchmarks/collect_fps.py [--task cheetah-run] [--steps 100] [--no-shadows] [--read]

Prints a table: the single-core rate (env.step with RGB + mask, no writing), then `collect` with W
workers (steady rate, start-up excluded, HDF5 writing included) and its ratio to W x the single-core
rate (goal >= 0.8). With --read, also the reading side: load_dataset frames/s and WindowSampler batches/s.
The machine is shared: numbers are what this run measured, not a property of the code alone (on a
crowded machine W processes get W fair shares of the CPU, so ratios above 1 can appear).
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from masklam.data import WindowSampler, load_dataset
from masklam.data.collect import CollectConfig, collect


@dataclass
class Bench:
    task: str = "cheetah-run"
    distractors: str = "laom"
    steps: int = 100
    """Frames per trajectory."""
    episodes_per_worker: int = 3
    img_size: int = 64
    shadows: bool = True
    reflections: bool = True
    workers: tuple[int, ...] = (1, 2)
    read: bool = False
    """Also measure load_dataset and WindowSampler on the collected file."""


def single_core_fps(b: Bench, frames: int) -> float:
    """env.step (physics + RGB + segmentation) frames/s in this process, after a warm-up."""
    from masklam.envs import make

    env = make(b.task, distractors=b.distractors, img_size=b.img_size, shadows=b.shadows,
               reflections=b.reflections, max_episode_steps=frames + 20)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(10):
        env.step(rng.uniform(-1, 1, env.action_space.shape))
    start = time.perf_counter()
    for _ in range(frames):
        env.step(rng.uniform(-1, 1, env.action_space.shape))
    env.close()
    return frames / (time.perf_counter() - start)


def read_side(path: Path) -> None:
    start = time.perf_counter()
    data = load_dataset(path, mask_key="masks", progress=False)
    load_fps = data.num_frames / (time.perf_counter() - start)
    print(f"\nload_dataset: {data.num_frames} frames at {load_fps:.0f} frames/s")
    print("| frame_stack | max_offset | batch | masks | batches/s | samples/s |")
    print("|---|---|---|---|---|---|")
    for fs, k, masks in ((1, 1, True), (3, 10, False)):
        sampler = WindowSampler(data, frame_stack=fs, max_offset=min(k, data.traj_lengths.min() - 1), need_masks=masks)
        rng = np.random.default_rng(0)
        sampler.sample(512, rng)
        n, start = 20, time.perf_counter()
        for _ in range(n):
            sampler.sample(512, rng)
        rate = n / (time.perf_counter() - start)
        print(f"| {fs} | {k} | 512 | {masks} | {rate:.1f} | {rate * 512:.0f} |")


def main() -> None:
    b = tyro.cli(Bench)
    torch.set_num_threads(1)
    print(f"{b.task}, distractors {b.distractors}, {b.img_size}x{b.img_size}, shadows {b.shadows}, "
          f"reflections {b.reflections}; {os.cpu_count()} CPUs, "
          f"LP_NUM_THREADS={os.environ.get('LP_NUM_THREADS', 'unset')}")
    print("one core = env.step (RGB + mask, no writing) in this process, measured just before each row\n")
    print("| workers | frames | one core frames/s | collect frames/s (steady) | wall s (incl. start-up) "
          "| ratio to W x one core | load avg |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        last = None
        for w in b.workers:
            one = single_core_fps(b, b.steps)
            out = Path(tmp) / f"w{w}.h5"
            episodes = w * b.episodes_per_worker
            cfg = CollectConfig(task=b.task, out=out, distractors=b.distractors, episodes=episodes, steps=b.steps,
                                seed=0, workers=w, policy="random", img_size=b.img_size, shadows=b.shadows,
                                reflections=b.reflections, progress=False)
            start = time.perf_counter()
            result = collect(cfg)
            wall = time.perf_counter() - start
            print(f"| {w} | {episodes * b.steps} | {one:.1f} | {result.frames_per_s:.1f} | {wall:.1f} | "
                  f"{result.frames_per_s / (w * one):.2f} | {os.getloadavg()[0]:.1f} |")
            last = out
        if b.read and last is not None:
            read_side(last)


if __name__ == "__main__":
    main()
