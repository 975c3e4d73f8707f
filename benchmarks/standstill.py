"""Why does a latent policy stand still online? Open-loop and online diagnostics of policy + decoder variants.

    .venv/bin/python benchmarks/standstill.py --lam RUN/stages/pretrain/<lapo-clean> --data CLEAN.h5 \
        --out runs/standstill [--bc-steps 250 1500] [--frame-stacks 3 1] [--episodes 6] [--labels 16]

For each latent-BC variant (updates, policy frame stack) and decoder variant (2 or 3 layers; input latent,
hidden, latent+hidden) it prints: open-loop NMSE of decoded vs recorded actions on held-out trajectories at
t < 3 and t >= 3, the std of decoded actions relative to the recorded ones', and online (ID, new episodes)
the return ± standard error and the per-dimension std of the executed actions (a standstill shows std ~0).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from masklam.data import WindowSampler, load_dataset, split_trajectories
from masklam.downstream.agent import LatentAgent
from masklam.downstream.bc import BCConfig, train_bc
from masklam.downstream.decode import DecodeConfig, train_decoder
from masklam.downstream.decoder import ActionDecoder
from masklam.downstream.evaluate import env_spec
from masklam.downstream.policy import ImagePolicy
from masklam.downstream.targets import env_meta_of
from masklam.seeding import stream_seed


def open_loop(agent: LatentAgent | ImagePolicy, data, ids: np.ndarray) -> dict[str, float]:
    """NMSE of decoded vs recorded actions at t < 3 and t >= 3, and the decoded / recorded std ratio."""
    sampler = WindowSampler(data, ids, frame_stack=agent.frame_stack, max_offset=1)
    preds, acts, ts = [], [], []
    for b in sampler.all_windows(512, k=1):
        preds.append(agent.select_action(b["obs_t"]))
        acts.append(b["action_t"])
        traj = np.searchsorted(data.traj_starts, b["index"], side="right") - 1
        ts.append(b["index"] - data.traj_starts[traj])
    p, a, t = np.concatenate(preds), np.concatenate(acts), np.concatenate(ts)
    var = a.var(0).mean()
    out = {}
    for name, sel in (("t<3", t < 3), ("t>=3", t >= 3)):
        out[f"nmse {name}"] = float(((p[sel] - a[sel]) ** 2).mean() / var)
    out["std ratio"] = float(p.std(0).mean() / a.std(0).mean())
    return out


def online(agent: LatentAgent | ImagePolicy, meta: dict, episodes: int) -> dict[str, float]:
    """Return ± standard error over `episodes` new ID episodes and the mean per-dimension std of the actions."""
    env = env_spec(meta, "id").build()
    rets, stds, first = [], [], []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=stream_seed("eval", 0, i))
            stack = np.repeat(obs[None], agent.frame_stack, axis=0)
            done, ret, actions = False, 0.0, []
            while not done:
                a = agent.select_action(stack[None])[0]
                obs, r, term, trunc, _ = env.step(a)
                ret, done = ret + r, term or trunc
                actions.append(a)
                stack = np.concatenate([stack[1:], obs[None]])
            acts = np.asarray(actions)
            rets.append(ret), stds.append(acts.std(0).mean()), first.append(np.abs(acts[:3]).mean())
    finally:
        env.close()
    return {"return": float(np.mean(rets)), "return s.e.": float(np.std(rets, ddof=1) / np.sqrt(len(rets))),
            "action std": float(np.mean(stds)), "|a| t<3": float(np.mean(first))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lam", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/standstill"))
    ap.add_argument("--bc-steps", type=int, nargs="+", default=[250, 1500])
    ap.add_argument("--frame-stacks", type=int, nargs="+", default=[3])
    ap.add_argument("--labels", type=int, default=16)
    ap.add_argument("--episodes", type=int, default=6)
    ap.add_argument("--decoders", nargs="+", default=["2:latent", "3:latent", "2:hidden", "2:latent+hidden"])
    args = ap.parse_args()
    torch.set_num_threads(2)

    data = load_dataset([args.data], progress=False)
    _, held = split_trajectories(data.num_trajectories, 0.1, 0)
    meta = env_meta_of(dict(data.meta), {})
    rows = []
    for steps in args.bc_steps:  # the normaliser: BC on true actions, same updates
        pol = args.out / f"bcfull-{steps}"
        if not (pol / "model.safetensors").is_file():
            train_bc(BCConfig(data=(args.data,), out=pol, target="action", updates=steps, batch_size=64, lr=3e-4,
                              frame_stack=3), progress=False)
        policy = ImagePolicy.from_pretrained(pol)
        row = {"policy frame stack": 3, "bc updates": steps, "decoder": "bc on true actions",
               **open_loop(policy, data, held), **online(policy, meta, args.episodes)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for fs in args.frame_stacks:
        for steps in args.bc_steps:
            pol = args.out / f"bc-fs{fs}-{steps}"
            if not (pol / "model.safetensors").is_file():
                train_bc(BCConfig(data=(args.data,), out=pol, lam=args.lam, updates=steps, batch_size=64, lr=3e-4,
                                  frame_stack=fs), progress=False)
            for spec in args.decoders:
                layers, inp = spec.split(":")
                dec = args.out / f"dec-fs{fs}-{steps}-{layers}-{inp}"
                if not (dec / "model.safetensors").is_file():
                    train_decoder(DecodeConfig(policy=pol, data=(args.data,), out=dec, labels=args.labels, updates=300,
                                               batch_size=256, layers=int(layers), input=inp), progress=False)
                agent = LatentAgent(ImagePolicy.from_pretrained(pol), ActionDecoder.from_pretrained(dec))
                row = {"policy frame stack": fs, "bc updates": steps, "decoder": spec,
                       **open_loop(agent, data, held), **online(agent, meta, args.episodes)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n" + "|---" * len(keys) + "|")
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    (args.out / "standstill.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
