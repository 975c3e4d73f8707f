"""Evaluation throughput: episodes/s with W worker processes vs one sequential env with batch-1 inference.

Goal (issue 5): with W workers, at least 0.8 x W times the episodes/s of the sequential reference.
The policy is an untrained ImagePolicy (inference cost is what matters, not returns).
Run: .venv/bin/python benchmarks/eval_throughput.py --task cheetah-run --episodes 8 --steps 100 --workers 1 2
Prints a table; each worker and the parent use one torch thread.
"""
from __future__ import annotations

import argparse

import torch

from masklam.downstream.policy import ImagePolicy, PolicyConfig
from masklam.downstream.evaluate import EnvSpec, evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="cheetah-run")
    p.add_argument("--distractors", default="laom")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--steps", type=int, default=100, help="steps per episode (max_episode_steps)")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--encoder-scale", type=int, default=1)
    p.add_argument("--no-shadows", action="store_true", help="render without shadows/reflections (~5x faster)")
    a = p.parse_args()
    torch.set_num_threads(1)
    kwargs = {"distractors": a.distractors, "img_size": a.img_size, "max_episode_steps": a.steps}
    if a.no_shadows:
        kwargs.update(shadows=False, reflections=False)
    spec = EnvSpec(a.task, kwargs)
    action_dim = spec.build().action_space.shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        policy = ImagePolicy(PolicyConfig(out_dim=action_dim, action_dim=action_dim, frame_stack=3,
                                          img_hw=a.img_size, encoder_scale=a.encoder_scale)).eval()
    ref = evaluate(policy, spec, a.episodes, seed=0, workers=0, progress=False)
    print(f"task {a.task}, distractors {a.distractors}, {a.img_size}x{a.img_size}, {a.steps} steps/episode, "
          f"{a.episodes} episodes, encoder scale {a.encoder_scale}, shadows {'off' if a.no_shadows else 'on'}")
    print(f"{'mode':<22}{'episodes/s':>12}{'steps/s':>10}{'speed-up':>10}{'goal 0.8W':>11}{'same returns':>14}")
    print(f"{'sequential, batch 1':<22}{ref.episodes_per_s:>12.3f}{ref.episodes_per_s * a.steps:>10.1f}"
          f"{1.0:>10.2f}{'':>11}{'':>14}")
    for w in a.workers:
        res = evaluate(policy, spec, a.episodes, seed=0, workers=w, progress=False)
        same = max(abs(x - y) for x, y in zip(res.returns, ref.returns)) < 1e-3
        speed = res.episodes_per_s / ref.episodes_per_s
        print(f"{f'{w} workers, batched':<22}{res.episodes_per_s:>12.3f}{res.episodes_per_s * a.steps:>10.1f}"
              f"{speed:>10.2f}{0.8 * w:>11.2f}{str(same):>14}")


if __name__ == "__main__":
    main()
