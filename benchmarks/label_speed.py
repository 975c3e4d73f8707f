"""`masklam label` on video: frames/s from a video file to every frame's latent action, and peak memory.

    python benchmarks/label_speed.py [--lengths 3000 30000] [--frame-stack 3] [--threads 1]

Trains a LAPO LAM of the quickstart's size (cpu-small preset, 64x64, frame stack 3; 2 updates: labelling costs the
same whatever its weights) on a short imported clip recorded at 15 fps, then runs `masklam label --data FOLDER` on
a synthetic 30 fps h264 video of each length, in a fresh process: the video is imported at the LAM's 15 fps and
64 px, then labelled. Prints the labelled frames per second of the whole command (import included) and that
process's peak resident memory (ru_maxrss): flat memory means it does not grow with the video's length. The
machine may be shared: numbers are what this run measured.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from import_speed import make_video, run_child

CHILD = """
import json, resource, sys, time
import torch
from pathlib import Path
from masklam.downstream.label import LabelConfig, label
torch.set_num_threads(int(sys.argv[4]))
t = time.perf_counter()
out = label(LabelConfig(lam=Path(sys.argv[1]), data=Path(sys.argv[2]), out=Path(sys.argv[3]), progress=False,
                        device="cpu"))
dt = time.perf_counter() - t
import h5py
with h5py.File(out) as f:
    frames = sum(len(f[g]["latent_action"]) for g in f)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"frames": frames, "seconds": dt, "peak_mib": peak}))
"""


@dataclass
class Bench:
    lengths: list[int] = field(default_factory=lambda: [3_000, 30_000])
    """frames of each synthetic 30 fps video"""
    width: int = 128
    height: int = 96
    frame_stack: int = 3
    """the LAM's frame stack (the quickstart's: 3)"""
    threads: int = 1
    """torch threads of the labelling process"""


def main(b: Bench) -> None:
    from masklam.data.importer import ImportConfig, run_import
    from masklam.train.config import PretrainConfig
    from masklam.train.pretrain import pretrain

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "train").mkdir()
        make_video(root / "train" / "clip.mp4", 120, b.height, b.width, 15.0)
        data = run_import(ImportConfig(src=root / "train", out=root / "train.h5", img_size=64, progress=False)).path
        lam = root / "lam"
        pretrain(PretrainConfig(method="lapo", data=(data,), out=lam, updates=2, batch_size=8,
                                frame_stack=b.frame_stack, heldout=0, tensorboard=False, progress=False,
                                recon_samples=0, threads=b.threads))
        print(f"{'video frames':>12} {'latents':>8} {'latents/s':>10} {'peak MiB':>9} {'seconds':>8}   ({b.width}x"
              f"{b.height} h264 30 fps -> 15 fps, 64x64; LAPO cpu-small, frame stack {b.frame_stack}, {b.threads} "
              "thread(s))")
        for n in b.lengths:
            (root / f"v{n}").mkdir()
            make_video(root / f"v{n}" / "clip.mp4", n, b.height, b.width, 30.0)
            r = run_child(CHILD, lam, root / f"v{n}", root / f"l{n}.h5", b.threads)
            print(f"{n:>12} {r['frames']:>8} {r['frames'] / r['seconds']:>10.0f} {r['peak_mib']:>9.0f} "
                  f"{r['seconds']:>8.0f}", flush=True)
            (root / f"l{n}.h5").unlink()


if __name__ == "__main__":
    main(tyro.cli(Bench))
