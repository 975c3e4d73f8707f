"""`masklam import` throughput and memory: frames/s decoded, resized to 64x64 and written, and peak memory
against the input's length.

    python benchmarks/import_speed.py [--lengths 10000 100000] [--width 128 --height 96]

Makes synthetic h264 videos of each length (a moving square on a gradient, ``width x height``), imports each
in a fresh process (centre crop to 64x64, lzf HDF5) and prints frames/s and that process's peak resident
memory (ru_maxrss). Flat memory: the peak does not grow with the length. The machine is shared: numbers are
what this run measured.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tyro

from masklam.data.video import VideoWriter

CHILD = """
import json, resource, sys, time
from pathlib import Path
from masklam.data.importer import ImportConfig, run_import
t = time.perf_counter()
r = run_import(ImportConfig(src=Path(sys.argv[1]), out=Path(sys.argv[2]), img_size=64, progress=False))
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"frames": r.frames, "seconds": dt, "peak_mib": peak}))
"""


@dataclass
class Bench:
    lengths: list[int] = field(default_factory=lambda: [10_000, 100_000])
    """frames of each synthetic video"""
    width: int = 128
    height: int = 96
    fps: float = 30.0


def make_video(path: Path, n: int, h: int, w: int, fps: float) -> None:
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 120)], -1).astype(np.uint8)
    with VideoWriter(path, fps, h, w, "h264", crf=23, gop=250) as writer:
        for lo in range(0, n, 500):
            chunk = np.repeat(base[None], min(500, n - lo), 0)
            for i in range(len(chunk)):
                t = lo + i
                r, c = (t * 3) % (h - 16), (t * 5) % (w - 16)
                chunk[i, r:r + 16, c:c + 16] = 250
            writer.write(chunk)


def run_child(code: str, *args: object) -> dict:
    """Run `code` in a fresh Python process (its own peak memory) with `args`; its last stdout line, as JSON."""
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(b: Bench) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for n in b.lengths:
            folder = Path(tmp) / f"v{n}"
            folder.mkdir()
            t = time.perf_counter()
            make_video(folder / "clip.mp4", n, b.height, b.width, b.fps)
            made = time.perf_counter() - t
            out = Path(tmp) / f"d{n}.h5"
            r = run_child(CHILD, folder, out)
            rows.append((n, r["frames"], r["frames"] / r["seconds"], r["peak_mib"], made))
            out.unlink()
        print(f"{'frames':>8} {'imported':>9} {'frames/s':>9} {'peak MiB':>9}   "
              f"({b.width}x{b.height} h264 -> 64x64 crop)")
        for n, frames, fps, peak, made in rows:
            print(f"{n:>8} {frames:>9} {fps:>9.0f} {peak:>9.0f}   (video made in {made:.0f} s)")


if __name__ == "__main__":
    main(tyro.cli(Bench))
