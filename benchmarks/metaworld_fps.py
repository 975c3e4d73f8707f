"""Distracting Meta-World speed: env.step and `masklam collect` frames/s per fidelity setting.

    python benchmarks/metaworld_fps.py [--task mw-push] [--steps 60] [--sizes 64 128]

Rows: Meta-World's own scene settings (4096-px shadow map, reflective walls, 4x multisampling), then
shadows off, then shadows + reflections + multisampling off (`--no-shadows --no-reflections
--no-multisample`), at each image size. Columns: env.step frames/s (RGB + mask, the scripted expert
acting, no writing) with where the time goes, and `masklam collect` frames/s (1 worker, the same
settings, HDF5 writing included, start-up excluded). The machine is shared: numbers are what this run
measured.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from masklam.data.collect import CollectConfig, collect
from masklam.envs import make
from masklam.experts import load

PARTS = ("physics", "texture", "scene", "rgb", "segmentation")
SETTINGS = {  # name -> (shadows, reflections, multisample)
    "Meta-World default": (True, True, True),
    "shadows off": (False, True, True),
    "all off": (False, False, False),
}


@dataclass
class Bench:
    task: str = "mw-push"
    distractors: str = "masklam"
    steps: int = 60
    """frames per measurement (and per collected trajectory)"""
    sizes: tuple[int, ...] = (64, 128)
    collect: bool = True
    """also time `masklam collect` (2 trajectories per row)"""


def step_fps(b: Bench, size: int, flags: tuple[bool, bool, bool]) -> tuple[float, dict[str, float]]:
    """env.step frames/s after a warm-up, and ms per frame of each part."""
    shadows, reflections, multisample = flags
    env = make(b.task, distractors=b.distractors, img_size=size, shadows=shadows, reflections=reflections,
               multisample=multisample)
    expert = load(b.task)
    _, info = env.reset(seed=0)
    for _ in range(5):
        _, _, _, _, info = env.step(expert(info["state"]))
    for key in env.profile:
        env.profile[key] = 0.0
    start = time.perf_counter()
    for _ in range(b.steps):
        _, _, _, _, info = env.step(expert(info["state"]))
    fps = b.steps / (time.perf_counter() - start)
    parts = {k: 1000 * env.profile[k] / b.steps for k in PARTS}
    env.close()
    return fps, parts


def collect_fps(b: Bench, size: int, flags: tuple[bool, bool, bool], tmp: Path) -> float:
    shadows, reflections, multisample = flags
    out = tmp / f"c{size}{int(shadows)}{int(reflections)}{int(multisample)}.h5"
    cfg = CollectConfig(task=b.task, out=out, distractors=b.distractors, episodes=2, steps=b.steps, seed=0,
                        action_noise=0.1, img_size=size, shadows=shadows, reflections=reflections,
                        multisample=multisample, progress=False)
    return collect(cfg).frames_per_s


def main() -> None:
    b = tyro.cli(Bench)
    print(f"{b.task}, distractors {b.distractors}, {b.steps} frames per row; {os.cpu_count()} CPUs, "
          f"LP_NUM_THREADS={os.environ.get('LP_NUM_THREADS', 'unset')}\n")
    print("| setting | size | env.step frames/s | ms/frame: " + " / ".join(PARTS) + " | collect frames/s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in b.sizes:
            for name, flags in SETTINGS.items():
                fps, parts = step_fps(b, size, flags)
                col = f"{collect_fps(b, size, flags, Path(tmp)):.1f}" if b.collect else "-"
                split = " / ".join(f"{parts[k]:.1f}" for k in PARTS)
                print(f"| {name} | {size} | {fps:.1f} | {split} | {col} |", flush=True)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
