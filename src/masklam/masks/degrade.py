"""Controlled damage to agent masks, to measure how good masks must be (benchmarks/mask_robustness.py).

Each function maps (T, H, W) bool masks to masks of the same shape; randomness comes only from ``seed``.
The conditions mirror MaskLAM's ablations (masks eroded or dilated by a radius of 1-3 px, 25-75% of the
agent occluded) and the ways a zero-shot segmenter fails (a box instead of a silhouette, frames it missed).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from masklam.errors import MasklamError


def disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) bool disk: offsets with dy^2 + dx^2 <= r^2."""
    r = int(radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return yy ** 2 + xx ** 2 <= r * r


def _check(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.dtype != bool:
        raise MasklamError(f"masks must be (T, H, W) bool, got {masks.shape} {masks.dtype}")
    return masks


def dilate(masks: np.ndarray, radius: int) -> np.ndarray:
    """Every pixel within ``radius`` (Euclidean) of the mask joins it."""
    masks = _check(masks)
    if radius <= 0 or masks.size == 0:
        return masks.copy()
    kernel = torch.from_numpy(disk(radius).astype(np.float32))[None, None]
    x = torch.from_numpy(masks.astype(np.float32))[:, None]
    return (F.conv2d(x, kernel, padding=int(radius))[:, 0] > 0.5).numpy()


def erode(masks: np.ndarray, radius: int) -> np.ndarray:
    """Only pixels whose whole ``radius`` disk lies in the mask stay (outside the frame counts as mask)."""
    masks = _check(masks)
    return ~dilate(~masks, radius)


def boxes(masks: np.ndarray) -> np.ndarray:
    """Each frame's mask replaced by its filled bounding box (empty frames stay empty)."""
    masks = _check(masks)
    out = np.zeros_like(masks)
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (T, H), (T, W)
    for t in np.flatnonzero(rows.any(axis=1)):
        y, x = np.flatnonzero(rows[t]), np.flatnonzero(cols[t])
        out[t, y[0]:y[-1] + 1, x[0]:x[-1] + 1] = True
    return out


def occlude(masks: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Remove ``fraction`` of each frame's agent pixels as one occluder: the pixels first along a random direction
    (a half-plane sweeping in from a random side), so the rest stays one piece."""
    masks = _check(masks)
    if not 0 <= fraction <= 1:
        raise MasklamError(f"occlusion fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    out = masks.copy()
    angles = rng.uniform(0, 2 * np.pi, len(masks))
    for t in range(len(masks)):
        y, x = np.nonzero(masks[t])
        drop = int(round(fraction * len(y)))
        if drop == 0:
            continue
        proj = x * np.cos(angles[t]) + y * np.sin(angles[t])
        gone = np.argsort(proj, kind="stable")[:drop]
        out[t, y[gone], x[gone]] = False
    return out


def drop_frames(masks: np.ndarray, fraction: float, seed: int = 0, fill: bool = False) -> np.ndarray:
    """A random ``fraction`` of frames lose their mask: all False (``fill=False``, a missed detection) or all True."""
    masks = _check(masks)
    if not 0 <= fraction <= 1:
        raise MasklamError(f"drop fraction must be in [0, 1], got {fraction}")
    out = masks.copy()
    gone = np.random.default_rng(seed).permutation(len(masks))[:int(round(fraction * len(masks)))]
    out[gone] = fill
    return out


# name -> function of (masks, seed); the robustness benchmark's conditions
CONDITIONS = {
    "erode1": lambda m, s: erode(m, 1),
    "erode2": lambda m, s: erode(m, 2),
    "erode3": lambda m, s: erode(m, 3),
    "dilate1": lambda m, s: dilate(m, 1),
    "dilate2": lambda m, s: dilate(m, 2),
    "dilate3": lambda m, s: dilate(m, 3),
    "box": lambda m, s: boxes(m),
    "occlude25": lambda m, s: occlude(m, 0.25, s),
    "occlude50": lambda m, s: occlude(m, 0.50, s),
    "missing25": lambda m, s: drop_frames(m, 0.25, s),
    "missing50": lambda m, s: drop_frames(m, 0.50, s),
}


def degrade(masks: np.ndarray, condition: str, seed: int = 0) -> np.ndarray:
    """Apply a named condition of :data:`CONDITIONS` (e.g. ``dilate2``, ``box``, ``occlude50``, ``missing25``)."""
    if condition not in CONDITIONS:
        raise MasklamError(f"unknown mask degradation {condition!r}; one of: {', '.join(CONDITIONS)}")
    return CONDITIONS[condition](_check(masks), seed)
