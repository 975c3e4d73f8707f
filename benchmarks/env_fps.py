"""Frames per second of the distracted environment against a plain dm_control render, in one run.

Rows: plain dm_control (env.step + physics.render RGB at the same size and camera); ours without
distractors; ours with `laom` distractors (RGB only, i.e. without the segmentation pass); ours with
`laom` distractors and masks; the same with shadows and reflections off (the fast, lower-fidelity
path). Columns: FPS, ms per step, ratio to the plain render, and where our time goes (physics,
texture = distractor state + video frame + texture upload, scene build, RGB pass, segmentation pass).

    python benchmarks/env_fps.py --task cheetah-run --steps 200 --img-size 64

llvmpipe (Mesa's CPU rasteriser) is limited to one thread (LP_NUM_THREADS=1) unless set otherwise.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("LP_NUM_THREADS", "1")
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

PARTS = ("physics", "texture", "scene", "rgb", "segmentation")


def plain_dm_control(task: str, steps: int, size: int, camera_id: int) -> float:
    """Seconds per step of dm_control's own step + physics.render (RGB)."""
    from dm_control import suite

    domain, name = task.split("-", 1)
    env = suite.load(domain, name, task_kwargs={"random": 0})
    env.reset()
    spec = env.action_spec()
    rng = np.random.default_rng(0)
    for _ in range(10):
        env.step(rng.uniform(spec.minimum, spec.maximum))
        env.physics.render(size, size, camera_id=camera_id)
    t0 = time.perf_counter()
    for _ in range(steps):
        ts = env.step(rng.uniform(spec.minimum, spec.maximum))
        if ts.last():
            env.reset()
        env.physics.render(size, size, camera_id=camera_id)
    return (time.perf_counter() - t0) / steps


def ours(task: str, steps: int, size: int, preset: str, **kw) -> tuple[float, dict[str, float]]:
    """Seconds per step of our env (RGB + mask) and the per-part seconds per step."""
    from masklam.envs import make

    env = make(task, distractors=preset, img_size=size, **kw)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(10):
        env.step(rng.uniform(-1, 1, env.action_space.shape))
    env.profile = dict.fromkeys(PARTS, 0.0)
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, _, trunc, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        if trunc:
            env.reset()
    total = (time.perf_counter() - t0) / steps
    parts = {k: v / steps for k, v in env.profile.items()}
    env.close()
    return total, parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="cheetah-run")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--img-size", type=int, default=64)
    args = ap.parse_args()

    from masklam.envs.suite import default_camera, parse_task

    domain, _ = parse_task(args.task)
    plain = plain_dm_control(args.task, args.steps, args.img_size, default_camera(domain))
    rows: list[tuple[str, float, dict[str, float] | None]] = [("dm_control step + render (RGB)", plain, None)]
    t, p = ours(args.task, args.steps, args.img_size, "none")
    rows.append(("ours, no distractors, RGB + mask", t, p))
    t, p = ours(args.task, args.steps, args.img_size, "laom")
    rows.append(("ours, laom, RGB only", t - p["segmentation"], {**p, "segmentation": 0.0}))
    rows.append(("ours, laom, RGB + mask", t, p))
    t, p = ours(args.task, args.steps, args.img_size, "laom", shadows=False, reflections=False)
    rows.append(("ours, laom, RGB + mask, no shadows/refl.", t, p))

    print(f"# {args.task}, {args.img_size}x{args.img_size}, {args.steps} steps, "
          f"LP_NUM_THREADS={os.environ['LP_NUM_THREADS']}")
    head = (f"| {'setting':<42} | {'FPS':>6} | {'ms/step':>7} | {'x plain':>7} | "
            + " | ".join(f"{k[:7]:>7}" for k in PARTS) + " |")
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for name, sec, parts in rows:
        cells = " | ".join(f"{1000 * parts[k]:7.2f}" if parts else f"{'':>7}" for k in PARTS)
        print(f"| {name:<42} | {1 / sec:6.1f} | {1000 * sec:7.2f} | {sec / plain:7.2f} | {cells} |")
    print("(part columns: ms per step; texture = distractor walks + video frame + skybox upload)")


if __name__ == "__main__":
    main()
