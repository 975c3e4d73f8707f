"""Training throughput (samples/s) of each latent action model, on synthetic batches.

Runs the real model forward + backward + Adam step + EMA update on random uint8 frame batches of the
preset's shape (no data loading), after a few warm-up steps, and prints a table.
`cpu-small` runs anywhere; `paper` needs a GPU (bf16 autocast), like the papers.
Each method is timed in fp32 and, where the device computes bf16 natively (CUDA, or a CPU with AVX-512
BF16 / AMX: `masklam.train.precision`), with bf16 autocast, the default of `masklam pretrain`.
With --contiguous, fp32 is also timed with the weights in contiguous memory instead of channels_last (what
`masklam.devices.place` gives every trained model), right after the channels_last timing.

    python benchmarks/pretrain_throughput.py --preset cpu-small --threads 2 --frame-stack 3
    python benchmarks/pretrain_throughput.py --preset paper --device cuda
    python benchmarks/pretrain_throughput.py --methods lapo --frame-stack 3 --img-size 128 --contiguous
"""
from __future__ import annotations

import argparse
import time

import torch

from masklam.devices import place
from masklam.models import build_lam
from masklam.train.config import PretrainConfig
from masklam.train.precision import autocast, bf16_active


def make_batch(cfg: PretrainConfig, action_dim: int, state_dim: int, hw: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    shape = (cfg.batch_size, cfg.frame_stack, hw, hw, 3)
    frames = lambda b=cfg.batch_size: torch.randint(0, 256, (b,) + shape[1:], generator=g,  # noqa: E731
                                                    dtype=torch.uint8).to(device)
    batch = dict(obs_t=frames(), obs_t1=frames(), obs_tk=frames(),
                 mask_t1=(torch.rand(cfg.batch_size, hw, hw, generator=g) < 0.1).to(device),
                 action_t=torch.randn(cfg.batch_size, action_dim, generator=g).to(device),
                 state_t=torch.randn(cfg.batch_size, state_dim, generator=g).to(device))
    if cfg.method == "laom-sup":
        lb = cfg.labels_batch_size
        batch["labeled"] = dict(obs_t=frames(lb), obs_tk=frames(lb), action_t=torch.randn(lb, action_dim).to(device))
    return batch


def measure(method: str, preset: str, device: torch.device, steps: int, warmup: int, compile_: bool, bf16: bool,
            frame_stack: int | None, hw: int = 64, contiguous: bool = False) -> tuple[float, int]:
    cfg = PretrainConfig(method=method, data=("none.h5",), out="none", preset=preset, frame_stack=frame_stack,
                         labels=1 if method == "laom-sup" else 0)
    torch.manual_seed(0)
    model = build_lam(cfg.lam_config(6, 17, hw))
    model = model.to(device) if contiguous else place(model, device)
    forward = torch.compile(model) if compile_ else model
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batch = make_batch(cfg, 6, 17, hw, device)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        with autocast(device, bf16):
            loss, _ = forward(batch, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.update_target()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return steps * cfg.batch_size / dt, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["cpu-small", "paper"], default="cpu-small")
    parser.add_argument("--methods", nargs="+", default=["lapo", "masklam", "laom", "laom-sup"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--frame-stack", type=int, default=None, help="default: the method's (3 in the quickstart)")
    parser.add_argument("--img-size", type=int, default=64, help="frame height and width (mw128: 128)")
    parser.add_argument("--contiguous", action="store_true",
                        help="also time fp32 with contiguous weights (channels_last is what training uses)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} thread(s)"
    print(f"preset {args.preset}, device {name}, {args.img_size}x{args.img_size} frames, {args.steps} timed steps "
          f"after {args.warmup} warm-up")
    native = bf16_active(device)
    extra = " samples/s fp32 contiguous weights |" if args.contiguous else ""
    print(f"| method | params (M) | batch | samples/s fp32 | samples/s bf16 autocast |{extra}\n"
          f"|---|---|---|---|---|{'---|' if extra else ''}")
    for method in args.methods:
        def rate(bf16: bool, contiguous: bool = False) -> tuple[float, int]:
            return measure(method, args.preset, device, args.steps, args.warmup, args.compile, bf16,
                           args.frame_stack, args.img_size, contiguous)

        (fp32, params), plain = rate(False), (rate(False, True)[0] if args.contiguous else None)
        bf16 = rate(True)[0] if native else None
        bf = f"{bf16:.0f} ({bf16 / fp32:.2f}x)" if bf16 else "- (not native here)"
        bs = PretrainConfig(method=method, data=("x",), out="x", preset=args.preset,
                            labels=1 if method == "laom-sup" else 0).batch_size
        tail = f" {plain:.3g} (channels_last {fp32 / plain:.2f}x) |" if plain else ""
        print(f"| {method} | {params / 1e6:.1f} | {bs} | {fp32:.3g} | {bf} |{tail}", flush=True)


if __name__ == "__main__":
    main()
