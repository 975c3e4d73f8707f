"""Masks in a dataset file, written resumably: the box prompt, one part file per finished trajectory, one merge.

A segmenter is prompted with one fixed box on the first frame of each trajectory (the agent starts at a known
place in the frame): `default_box` sizes it for the file's domain. HDF5 files do not survive a kill in the
middle of a write, so a dataset is never written in place: each finished trajectory is kept as a small part
file beside it (`masklam.data.hdf5.write_atomically`), and when all are done a copy of the file receives them
and is renamed over the original. A killed run loses at most the trajectory in progress; a rerun skips what
is done (`plan`). The box and the weights used are stored as file attributes ``<key>_box``, ``<key>_weights``;
each trajectory's IoU against the simulator masks (when it has them) as the group attribute ``<key>_iou``.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from masklam.data.hdf5 import open_file, read_layout, trajectory_names, write_atomically
from masklam.errors import MasklamError
from masklam.resources import check_free_space

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


def default_box(domain: str, frame_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """The box prompt for a domain, in pixels of an ``H x W`` frame."""
    height, width = frame_hw
    fx0, fy0, fx1, fy1 = TASK_BOXES.get(domain, CENTRE_BOX)
    return (fx0 * width, fy0 * height, fx1 * width, fy1 * height)


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


def write_part(parts: Path, name: str, masks: np.ndarray, iou: float | None, extra: dict | None = None) -> None:
    """Store one trajectory's masks (T, H, W) bool (and ``extra`` arrays) as ``parts/<name>.h5``, atomically."""
    with write_atomically(parts / f"{name}.h5") as f:
        chunks = (1,) + masks.shape[1:] if len(masks) else None
        f.create_dataset("masks", data=masks, chunks=chunks, compression="lzf" if chunks else None)
        for k, v in (extra or {}).items():
            f.create_dataset(k, data=v)
        if iou is not None:
            f.attrs["iou"] = iou


def merge_parts(path: Path, parts: Path, key: str, box: tuple[float, ...], weights: Path) -> None:
    """Copy ``path``, add every part's masks to the copy, then rename it over ``path``: never a half-written file."""
    need = path.stat().st_size + sum(p.stat().st_size for p in parts.glob("*.h5"))
    check_free_space(path, need, f"adding {key} to {path}")
    with write_atomically(path, start_from=path) as f:
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
    shutil.rmtree(parts)


@dataclass
class Plan:
    """What a run has to do: the box, the part-file directory, and the trajectories lacking ``key``."""

    box: tuple[float, ...]
    parts: Path
    names: list[str]
    missing: list[str]
    lengths: dict[str, int]

    def todo(self) -> list[str]:
        """Missing trajectories without a finished part file."""
        return [name for name in self.missing if not (self.parts / f"{name}.h5").is_file()]


def plan(path: Path, key: str, box: tuple[float, ...] | None) -> Plan:
    """Validate the file and the box (default: the domain's), check it matches earlier runs, prepare the parts dir."""
    layout = read_layout(path)  # validates obs (T,H,W,3) uint8 in every trajectory
    frame_hw = layout.img_hw
    if box is None:
        box = default_box(str(layout.attrs.get("domain_name", "")), frame_hw)
    box = tuple(float(v) for v in box)
    _check_box(path, box, frame_hw)
    parts = parts_dir(path, key)
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
        config_file.write_text(json.dumps({"box": list(box), "key": key}))
    else:
        print(f"{path}: all {len(names)} trajectories already have {key}")
    return Plan(box, parts, names, missing, lengths)


def stored_ious(path: Path, key: str) -> dict[str, float]:
    """{group: IoU vs simulator masks} for every group holding ``key`` and its stored IoU."""
    with open_file(path) as f:
        return {name: float(f[name].attrs[f"{key}_iou"])
                for name in trajectory_names(f) if f"{key}_iou" in f[name].attrs}
