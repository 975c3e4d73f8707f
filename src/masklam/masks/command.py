"""`masklam masks`: add agent masks to every trajectory of a dataset file, in place and resumable; `--evaluate`.

MaskLAM's masks are zero-shot: a segmenter prompted with one fixed box on the first frame of each trajectory
(the agent starts at a known place in the frame) and followed through the video. Two segmenters:
``--segmenter sam2`` (SAM 2.1 hiera-tiny video model, local weights, a GPU job) and ``--segmenter mobilesam``
(MobileSAM, weights from `masklam weights fetch mobilesam`; an image model, so each next frame is prompted
with the box of the previous frame's mask). On a CPU, ``--frames-per-traj N --student`` labels only N frames
per trajectory with MobileSAM and masks every frame with a small U-Net trained on them (`distill`).
Each trajectory group gets a ``(T, H, W) bool`` dataset (``sam2_masks`` / ``masks_mobilesam`` by default;
the simulator's ``masks`` are never overwritten). HDF5 files do not survive a kill in the middle of a write,
so the file is never written in place: each finished trajectory is kept as a small part file beside it
(atomic rename), and when all are done a copy of the file receives them and is renamed over the original.
A killed run loses at most the trajectory in progress; a rerun skips what is done.
Where the file has the simulator's ``masks``, the mean per-frame IoU against them is stored as the group
attribute ``<key>_iou`` and printed; ``--evaluate`` prints the IoU of any mask key per task and trajectory.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import tyro
from tqdm import tqdm

from masklam.data.hdf5 import open_file, read_layout, trajectory_names, write_atomically
from masklam.devices import resolve_device
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
DEFAULT_KEYS = {"sam2": "sam2_masks", "mobilesam": "masks_mobilesam"}


@dataclass
class MasksConfig:
    """Add agent masks to a dataset file (in place; rerun to resume), or --evaluate masks it has."""

    data: Path
    """HDF5 dataset file (from `masklam collect`); a dataset is added to each trajectory group."""
    segmenter: Literal["sam2", "mobilesam"] = "sam2"
    """sam2 (video model, local --weights, GPU job) or mobilesam (image model tracked by boxes; CPU-able)."""
    weights: Path | None = None
    """sam2: a HF-format directory or .safetensors file (required); mobilesam: the checkpoint (default: the one
    `masklam weights fetch mobilesam` cached)."""
    box: tuple[float, float, float, float] | None = None
    """Box prompt on frame 0, x0 y0 x1 y1 in pixels of the HxW frame (default: sized for the file's domain)."""
    device: str = "auto"
    """Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:N."""
    batch: int = 8
    """Frames per image-encoder batch."""
    key: str | None = None
    """Name of the (T,H,W) bool dataset to write (or to --evaluate); default sam2_masks / masks_mobilesam."""
    frames_per_traj: int | None = None
    """mobilesam --student: label only N evenly spaced frames per trajectory with MobileSAM."""
    label_trajs: int | None = None
    """mobilesam --student: label only this many trajectories (evenly spread over the file; default all)."""
    student: bool = False
    """Train a small 64x64 U-Net on the MobileSAM labels and mask every frame with it (needs --frames-per-traj)."""
    student_steps: int = 500
    """Training steps of the student (batch 32; 500 reached mean IoU 0.84 on cheetah-run, docs/results.md)."""
    evaluate: bool = False
    """Only print the IoU of --key (default: the --segmenter's key) vs the simulator masks, per task and trajectory."""

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = DEFAULT_KEYS[self.segmenter]
        if self.batch < 1:
            raise MasklamError(f"--batch must be >= 1, got {self.batch}")
        if self.evaluate:
            return
        if not self.key or "/" in self.key or self.key in RESERVED_KEYS or self.key.endswith(".partial"):
            raise MasklamError(f"--key {self.key!r} is not allowed (reserved, empty, or contains '/')")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (0 <= x0 < x1 and 0 <= y0 < y1):
                raise MasklamError(f"--box must be x0 y0 x1 y1 with 0 <= x0 < x1 and 0 <= y0 < y1, got {self.box}")
        if self.segmenter == "sam2" and self.weights is None:
            raise MasklamError("--segmenter sam2 needs --weights (a local SAM 2 directory or .safetensors file)")
        if self.segmenter == "sam2" and (self.student or self.frames_per_traj is not None):
            raise MasklamError("--student and --frames-per-traj go with --segmenter mobilesam")
        if self.frames_per_traj is not None and (self.frames_per_traj < 1 or not self.student):
            raise MasklamError(f"--frames-per-traj must be >= 1 and comes with --student (got {self.frames_per_traj})")
        if self.student and self.frames_per_traj is None:
            raise MasklamError("--student needs --frames-per-traj N (MobileSAM frames per trajectory to learn from)")
        if self.label_trajs is not None and (self.label_trajs < 1 or not self.student):
            raise MasklamError(f"--label-trajs must be >= 1 and comes with --student (got {self.label_trajs})")
        if self.student_steps < 1:
            raise MasklamError(f"--student-steps must be >= 1, got {self.student_steps}")
        resolve_device(self.device)


def default_box(domain: str, frame_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """The box prompt for a domain, in pixels of an ``H x W`` frame."""
    height, width = frame_hw
    fx0, fy0, fx1, fy1 = TASK_BOXES.get(domain, CENTRE_BOX)
    return (fx0 * width, fy0 * height, fx1 * width, fy1 * height)


def frame_ious(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-frame |pred & true| / |pred | true| of (T, H, W) bool masks; a frame where both are empty counts 1."""
    inter = np.logical_and(pred, true).sum(axis=(1, 2), dtype=np.int64)
    union = np.logical_or(pred, true).sum(axis=(1, 2), dtype=np.int64)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def mask_iou(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over frames of :func:`frame_ious`; nan for no frames."""
    per_frame = frame_ious(pred, true)
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


def _write_part(parts: Path, name: str, masks: np.ndarray, iou: float | None, extra: dict | None = None) -> None:
    """Store one trajectory's masks (T, H, W) bool (and ``extra`` arrays) as ``parts/<name>.h5``, atomically."""
    with write_atomically(parts / f"{name}.h5") as f:
        chunks = (1,) + masks.shape[1:] if len(masks) else None
        f.create_dataset("masks", data=masks, chunks=chunks, compression="lzf" if chunks else None)
        for k, v in (extra or {}).items():
            f.create_dataset(k, data=v)
        if iou is not None:
            f.attrs["iou"] = iou


def _merge_parts(path: Path, parts: Path, key: str, box: tuple[float, ...], weights: Path) -> None:
    """Copy ``path``, add every part's masks to the copy, then rename it over ``path``: never a half-written file."""
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


def add_masks(path: Path, weights: Path | None, box: tuple[float, float, float, float] | None = None,
              device: str = "auto", batch: int = 8, key: str = "sam2_masks",
              segmenter: str = "sam2") -> dict[str, float]:
    """Add ``key`` masks to every trajectory of ``path`` lacking them; returns {group: IoU vs simulator masks}
    for every group that has both (including groups done by an earlier run).

    Each finished trajectory is first stored in ``<path>.<key>.parts/`` (so a killed run loses at most the
    trajectory in progress); at the end a copy of ``path`` receives all of them and replaces ``path``.
    ``segmenter``: "sam2" (``weights`` required) or "mobilesam" (``weights`` default: the fetched checkpoint).
    """
    path = Path(path)
    p = plan(path, key, box)
    if p.missing:
        if segmenter == "mobilesam" and weights is None:
            from masklam.masks.weights import checkpoint_path

            weights = checkpoint_path("mobilesam")
        todo = p.todo()
        if todo:
            _segment_all(path, p.parts, todo, p.lengths, weights, p.box, device, batch, len(p.names), segmenter)
        _merge_parts(path, p.parts, key, p.box, weights)
    return stored_ious(path, key)


def video_segmenter(segmenter: str, weights: Path, device: str, batch: int):
    """A function (video (T,H,W,3) uint8, box, progress) -> (T,H,W) bool masks, with its model loaded."""
    dev = resolve_device(device)
    if segmenter == "mobilesam":
        from masklam.masks.mobilesam import load_mobilesam, track

        model = load_mobilesam(weights, dev)
        return lambda video, box, progress: track(model, video, box, batch=batch, progress=progress), dev
    from masklam.masks import segmenter as sam2_segmenter

    model = sam2_segmenter.load_model(weights, dev)
    return lambda video, box, progress: sam2_segmenter.segment_video(model, video, box, batch=batch,
                                                                     progress=progress) > 0, dev


def _segment_all(path: Path, parts: Path, todo: list[str], lengths: dict[str, int], weights: Path,
                 box: tuple[float, ...], device: str, batch: int, num_trajectories: int,
                 segmenter: str = "sam2") -> None:
    """The segmenter's pass: one part file per trajectory in ``todo``, with a frames/s progress bar."""
    segment, dev = video_segmenter(segmenter, weights, device, batch)
    total = sum(lengths[name] for name in todo)
    print(f"{path}: {len(todo)} of {num_trajectories} trajectories to mask ({total} frames) with {segmenter} on "
          f"{dev}, box {tuple(round(v, 1) for v in box)}")
    with open_file(path) as f, tqdm(total=total, unit="frame", desc=f"{segmenter} masks", dynamic_ncols=True) as bar:
        for name in todo:
            group = f[name]
            masks = segment(group["obs"][()], box, bar.update)  # (T, H, W) bool
            iou = mask_iou(masks, group["masks"][()]) if "masks" in group else None
            _write_part(parts, name, masks, iou)
            if iou is not None:
                bar.set_postfix(iou=f"{iou:.3f}")
                tqdm.write(f"trajectory {name}: IoU vs simulator masks {iou:.3f}")


def evaluate(path: Path, key: str) -> dict[str, dict[str, float]]:
    """Per-frame IoU of ``key`` against the simulator's ``masks``: {trajectory: stats} and {"task <name>": stats},
    stats = mean, p10 (10th percentile over frames), min, frames. Prints a table."""
    rows: dict[str, dict[str, float]] = {}
    per_task: dict[str, list[np.ndarray]] = {}
    with open_file(path) as f:
        task = f"{f.attrs.get('domain_name', '?')}-{f.attrs.get('task_name', '?')}"
        for name in trajectory_names(f):
            group = f[name]
            if key not in group or "masks" not in group:
                continue
            ious = frame_ious(group[key][()], group["masks"][()])
            rows[name] = _stats(ious)
            per_task.setdefault(task, []).append(ious)
    if not rows:
        raise MasklamError(f"{path} has no trajectory with both {key!r} and the simulator's 'masks'")
    print(f"{key} vs simulator masks, per trajectory:\n"
          "| trajectory | mean IoU | p10 | min | frames |\n|---|---|---|---|---|")
    for name, st in rows.items():
        print(f"| {name} | {st['mean']:.3f} | {st['p10']:.3f} | {st['min']:.3f} | {st['frames']} |")
    print("per task:\n| task | mean IoU | p10 | min | frames |\n|---|---|---|---|---|")
    for task, parts in per_task.items():
        st = rows[f"task {task}"] = _stats(np.concatenate(parts))
        print(f"| {task} | {st['mean']:.3f} | {st['p10']:.3f} | {st['min']:.3f} | {st['frames']} |")
    return rows


def _stats(ious: np.ndarray) -> dict[str, float]:
    return {"mean": float(ious.mean()), "p10": float(np.percentile(ious, 10)), "min": float(ious.min()),
            "frames": int(len(ious))}


def main(argv: list[str]) -> int:
    """`masklam masks --data F.h5 [--segmenter sam2|mobilesam] [--weights W] [--box x0 y0 x1 y1] [--key K]
    [--frames-per-traj N --student] [--evaluate]`."""
    cfg = tyro.cli(MasksConfig, args=argv)
    if cfg.evaluate:
        evaluate(cfg.data, cfg.key)
        return 0
    if cfg.student:
        from masklam.masks.distill import add_student_masks

        ious = add_student_masks(cfg.data, cfg.weights, cfg.frames_per_traj, cfg.label_trajs, cfg.box,
                                 cfg.device, cfg.batch, cfg.key, cfg.student_steps)
    else:
        ious = add_masks(cfg.data, cfg.weights, cfg.box, cfg.device, cfg.batch, cfg.key, cfg.segmenter)
    if ious:
        values = np.array(list(ious.values()))
        print(f"{cfg.key} IoU vs simulator masks over {len(values)} trajectories: mean {values.mean():.3f}, "
              f"min {values.min():.3f}, max {values.max():.3f}")
    else:
        print(f"{cfg.data} has no simulator masks: no IoU to report")
    return 0
