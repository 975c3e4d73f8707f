"""Frames/s of the SAM 2 mask pass (`masklam masks`) with the default hiera-tiny config and random weights.

Random weights cost the same as the released ones. On a CPU keep it tiny (about 3 s a frame at 1024x1024):

    python benchmarks/sam2_fps.py --frames 3 --threads 2          # CPU
    python benchmarks/sam2_fps.py --frames 64 --batch 1 8 16      # GPU

Prints one table row per encoder batch size: seconds for the first frame (box prompt, no memory), then the
steady rate over the remaining frames (memory attention over past frames).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3, help="frames per video (first one is the prompt)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="image-encoder batch sizes to compare")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--size", type=int, default=64, help="frame height and width (pixels)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import Sam2VideoConfig, Sam2VideoModel

    from masklam.devices import resolve_device
    from masklam.masks.sam2 import segment_video

    device = resolve_device(args.device)
    with torch.random.fork_rng():  # seeded random init without touching the global RNG state
        torch.manual_seed(0)
        model = Sam2VideoModel(Sam2VideoConfig()).to(device).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (args.frames, args.size, args.size, 3), dtype=np.uint8)
    box = (0.2 * args.size, 0.3 * args.size, 0.8 * args.size, 0.8 * args.size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{args.threads} threads"
    print(f"SAM 2 hiera-tiny ({params:.1f}M params, input {model.config.image_size}px), {name}, "
          f"{args.frames} frames of {args.size}x{args.size}")
    print("| batch | first frame s | later frames/s | all frames/s |")
    print("|---|---|---|---|")
    for batch in args.batch:
        stamps: list[float] = []

        def tick(n: int) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stamps.extend([time.perf_counter()] * n)

        if device.type == "cuda":  # warm-up: kernels, allocator
            segment_video(model, video[:2], box, batch=batch)
        start = time.perf_counter()
        segment_video(model, video, box, batch=batch, progress=tick)  # frames of one chunk finish together
        total = stamps[-1] - start
        first = stamps[0] - start
        later = ((len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0]
                 else float("nan"))
        print(f"| {batch} | {first:.2f} | {later:.2f} | {len(stamps) / total:.2f} |")


if __name__ == "__main__":
    main()
