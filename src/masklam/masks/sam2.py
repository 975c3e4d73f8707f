"""`masklam masks`: add SAM 2 agent masks to every trajectory of a dataset file, in place and resumable.

MaskLAM's masks are zero-shot: SAM 2.1 hiera-tiny, prompted with one fixed box on the first frame of each
trajectory (the agent starts at a known place in the frame), propagated through the video. Each trajectory
group gets a ``(T, H, W) bool`` dataset (``sam2_masks`` by default). HDF5 files do not survive a kill in the
middle of a write, so the file is never written in place: each finished trajectory is kept as a small part
file beside it (atomic rename), and when all are done a copy of the file receives them and is renamed over
the original. A killed run loses at most the trajectory in progress; a rerun skips what is done.
Where the file has the simulator's ``masks``, the mean per-frame IoU against them is stored as the group
attribute ``<key>_iou`` and printed: that is how to check the masks.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import tyro
from tqdm import tqdm

from masklam.data.hdf5 import open_file, read_layout, trajectory_names
from masklam.errors import MasklamError

# Default box per domain, as fractions (x0, y0, x1, y1) of the frame: the union of the agent's bounding box at
# reset over seeds 0..7 (dm_control camera 0, 2 for quadruped; measured at 64x64), with a pixel of margin.
TASK_BOXES: dict[str, tuple[float, float, float, float]] = {
    "cheetah": (0.20, 0.39, 0.83, 0.77),
    "walker": (0.03, 0.08, 0.92, 0.84),
    "hopper": (0.22, 0.23, 0.80, 0.81),
    "humanoid": (0.23, 0.28, 0.70, 0.81),
    "quadruped": (0.25, 0.22, 0.80, 0.80),
}
CENTRE_BOX = (0.2, 0.2, 0.8, 0.8)  # other domains: the middle of the frame
RESERVED_KEYS = ("obs", "states", "actions", "rewards", "masks")


@dataclass
class MasksConfig:
    """Add SAM 2 agent masks to a dataset file (in place; rerun to resume)."""

    data: Path
    """HDF5 dataset file (from `masklam collect`); a dataset is added to each trajectory group."""
    weights: Path
    """SAM 2 weights: a HF-format directory (config.json + model.safetensors) or a .safetensors file."""
    box: tuple[float, float, float, float] | None = None
    """Box prompt on frame 0, x0 y0 x1 y1 in pixels of the HxW frame (default: sized for the file's domain)."""
    device: str = "auto"
    """Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:N."""
    batch: int = 8
    """Frames per image-encoder batch."""
    key: str = "sam2_masks"
    """Name of the (T,H,W) bool dataset to write in each trajectory group."""

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise MasklamError(f"--batch must be >= 1, got {self.batch}")
        if not self.key or "/" in self.key or self.key in RESERVED_KEYS or self.key.endswith(".partial"):
            raise MasklamError(f"--key {self.key!r} is not allowed (reserved, empty, or contains '/')")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (0 <= x0 < x1 and 0 <= y0 < y1):
                raise MasklamError(f"--box must be x0 y0 x1 y1 with 0 <= x0 < x1 and 0 <= y0 < y1, got {self.box}")
        resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; MasklamError for an unknown or unavailable device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise MasklamError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MasklamError(f"device {name!r} requested but this torch has no usable CUDA; use --device cpu")
    return device


def default_box(domain: str, frame_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """The box prompt for a domain, in pixels of an ``H x W`` frame."""
    height, width = frame_hw
    fx0, fy0, fx1, fy1 = TASK_BOXES.get(domain, CENTRE_BOX)
    return (fx0 * width, fy0 * height, fx1 * width, fy1 * height)


def mask_iou(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over frames of |pred & true| / |pred | true|, (T, H, W) bool each; a frame where both are empty counts 1."""
    inter = np.logical_and(pred, true).sum(axis=(1, 2), dtype=np.int64)
    union = np.logical_or(pred, true).sum(axis=(1, 2), dtype=np.int64)
    per_frame = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return float(per_frame.mean()) if len(per_frame) else float("nan")


def _check_box(path: Path, box: tuple[float, ...], frame_hw: tuple[int, int]) -> None:
    height, width = frame_hw
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise MasklamError(f"--box {tuple(box)} lies outside the {height}x{width} frames of {path}")


def _check_same_box(where: Path, found, box: tuple[float, ...], key: str) -> None:
    """MasklamError if ``where`` holds masks made with another box (one file must not mix prompts)."""
    if found is not None and not np.allclose(np.asarray(found, np.float64), box):
        raise MasklamError(f"{where} holds {key} made with box {[round(float(v), 2) for v in found]}, not "
                           f"{[round(v, 2) for v in box]}; pass that --box to resume, or another --key")


def parts_dir(path: Path, key: str) -> Path:
    """Where finished trajectories wait, one small HDF5 file each, until they are merged into ``path``."""
    return path.with_name(f"{path.name}.{key}.parts")


def _write_part(parts: Path, name: str, masks: np.ndarray, iou: float | None) -> None:
    """Store one trajectory's masks (T, H, W) bool as ``parts/<name>.h5``, atomically (temporary file + rename)."""
    tmp = parts / f"{name}.h5.tmp"
    with h5py.File(tmp, "w") as f:
        chunks = (1,) + masks.shape[1:] if len(masks) else None
        f.create_dataset("masks", data=masks, chunks=chunks, compression="lzf" if chunks else None)
        if iou is not None:
            f.attrs["iou"] = iou
    os.replace(tmp, parts / f"{name}.h5")


def _merge_parts(path: Path, parts: Path, key: str, box: tuple[float, ...], weights: Path) -> None:
    """Copy ``path``, add every part's masks to the copy, then rename it over ``path``: never a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.copyfile(path, tmp)
    with h5py.File(tmp, "r+") as f:
        for part in tqdm(sorted(parts.glob("*.h5")), desc="merging", unit="traj", leave=False):
            group = f[part.stem]
            with h5py.File(part, "r") as src:
                masks = src["masks"][()]
                if key in group:
                    del group[key]
                chunks = (1,) + masks.shape[1:] if len(masks) else None
                group.create_dataset(key, data=masks, chunks=chunks, compression="lzf" if chunks else None)
                if "iou" in src.attrs:
                    group.attrs[f"{key}_iou"] = float(src.attrs["iou"])
        f.attrs[f"{key}_box"] = np.asarray(box, np.float64)
        f.attrs[f"{key}_weights"] = str(weights)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    shutil.rmtree(parts)


def add_masks(path: Path, weights: Path, box: tuple[float, float, float, float] | None = None,
              device: str = "auto", batch: int = 8, key: str = "sam2_masks") -> dict[str, float]:
    """Add ``key`` masks to every trajectory of ``path`` lacking them; returns {group: IoU vs simulator masks}
    for every group that has both (including groups done by an earlier run).

    Each finished trajectory is first stored in ``<path>.<key>.parts/`` (so a killed run loses at most the
    trajectory in progress); at the end a copy of ``path`` receives all of them and replaces ``path``.
    """
    path = Path(path)
    layout = read_layout(path)  # validates obs (T,H,W,3) uint8 in every trajectory
    frame_hw = layout.img_hw
    if box is None:
        box = default_box(str(layout.attrs.get("domain_name", "")), frame_hw)
    box = tuple(float(v) for v in box)
    _check_box(path, box, frame_hw)
    parts = parts_dir(path, key)
    run = {"box": list(box), "key": key}
    with open_file(path) as f:
        if f"{key}_box" in f.attrs:
            _check_same_box(path, f.attrs[f"{key}_box"], box, key)
        names = trajectory_names(f)
        missing = [name for name in names if key not in f[name]]
        lengths = {name: int(f[name]["obs"].shape[0]) for name in missing}
    if missing:
        parts.mkdir(exist_ok=True)
        config_file = parts / "config.json"
        if config_file.is_file():
            _check_same_box(parts, json.loads(config_file.read_text()).get("box"), box, key)
        config_file.write_text(json.dumps(run))
        todo = [name for name in missing if not (parts / f"{name}.h5").is_file()]
        if todo:
            _segment_all(path, parts, todo, lengths, weights, box, device, batch, len(names))
        _merge_parts(path, parts, key, box, weights)
    else:
        print(f"{path}: all {len(names)} trajectories already have {key}")
    with open_file(path) as f:
        return {name: float(f[name].attrs[f"{key}_iou"]) for name in names if f"{key}_iou" in f[name].attrs}


def _segment_all(path: Path, parts: Path, todo: list[str], lengths: dict[str, int], weights: Path,
                 box: tuple[float, ...], device: str, batch: int, num_trajectories: int) -> None:
    """The SAM 2 pass: one part file per trajectory in ``todo``, with a frames/s progress bar."""
    from masklam.masks.segmenter import load_model, segment_video

    dev = resolve_device(device)
    model = load_model(weights, dev)
    total = sum(lengths[name] for name in todo)
    print(f"{path}: {len(todo)} of {num_trajectories} trajectories to mask ({total} frames) on {dev}, "
          f"box {tuple(round(v, 1) for v in box)}")
    with open_file(path) as f, tqdm(total=total, unit="frame", desc="sam2 masks", dynamic_ncols=True) as bar:
        for name in todo:
            group = f[name]
            logits = segment_video(model, group["obs"][()], box, batch=batch, progress=bar.update)
            masks = logits > 0  # (T, H, W) bool
            iou = mask_iou(masks, group["masks"][()]) if "masks" in group else None
            _write_part(parts, name, masks, iou)
            if iou is not None:
                bar.set_postfix(iou=f"{iou:.3f}")
                tqdm.write(f"trajectory {name}: IoU vs simulator masks {iou:.3f}")


def main(argv: list[str]) -> int:
    """`masklam masks --data F.h5 --weights DIR [--box x0 y0 x1 y1] [--device auto] [--batch 8] [--key sam2_masks]`."""
    cfg = tyro.cli(MasksConfig, args=argv)
    ious = add_masks(cfg.data, cfg.weights, cfg.box, cfg.device, cfg.batch, cfg.key)
    if ious:
        values = np.array(list(ious.values()))
        print(f"{cfg.key} IoU vs simulator masks over {len(values)} trajectories: mean {values.mean():.3f}, "
              f"min {values.min():.3f}, max {values.max():.3f}")
    else:
        print(f"{cfg.data} has no simulator masks: no IoU to report")
    return 0
