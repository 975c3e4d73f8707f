"""Mask quality: per-frame IoU against the simulator's masks, and the `masklam masks --evaluate` table."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from masklam.data.hdf5 import open_file, trajectory_names
from masklam.errors import MasklamError


def frame_ious(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-frame |pred & true| / |pred | true| of (T, H, W) bool masks; a frame where both are empty counts 1."""
    inter = np.logical_and(pred, true).sum(axis=(1, 2), dtype=np.int64)
    union = np.logical_or(pred, true).sum(axis=(1, 2), dtype=np.int64)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def mask_iou(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over frames of :func:`frame_ious`; nan for no frames."""
    per_frame = frame_ious(pred, true)
    return float(per_frame.mean()) if len(per_frame) else float("nan")

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
            if group[key].shape != group["masks"].shape or group[key].dtype != bool:
                raise MasklamError(f"{path}: trajectory {name}/{key} is {group[key].dtype} of shape "
                                   f"{group[key].shape}, not masks like 'masks' (bool, {group['masks'].shape}); "
                                   "--key names a mask dataset")
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

