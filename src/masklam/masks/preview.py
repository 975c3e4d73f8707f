"""`masklam masks --preview`: a PNG grid of frames with their masks drawn on them, to check masks before training.

Rows are up to ``rows`` trajectories spread over the file, columns ``cols`` frames evenly spaced from the first
to the last; each cell is the frame with the mask's pixels tinted red and its outline drawn white, titled with
the trajectory, the frame and, where the file has the simulator's masks, that frame's IoU against them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from masklam.data.hdf5 import open_file, trajectory_names
from masklam.errors import MasklamError
from masklam.files import atomic_path
from masklam.masks.iou import frame_ious

TINT = np.array([255, 40, 40], np.float32)


def preview_path(data: Path, key: str) -> Path:
    """Where `--preview` writes: ``<data>.<key>.preview.png`` beside the dataset file."""
    data = Path(data)
    return data.with_name(f"{data.name}.{key}.preview.png")


def overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 frame and (H, W) bool mask -> (H, W, 3) uint8: mask pixels tinted, its outline white."""
    out = frame.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * TINT
    padded = np.pad(mask, 1, mode="edge")
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    out[mask & ~inner] = 255.0
    return out.astype(np.uint8)


def write_preview(data: Path, key: str, out: Path, rows: int = 4, cols: int = 6) -> Path:
    """Draw ``key`` masks of ``data`` over its frames into the PNG ``out`` (written atomically); returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open_file(data) as f:
        names = [name for name in trajectory_names(f) if key in f[name]]
        if not names:
            raise MasklamError(f"{data} has no {key!r} masks to preview; run `masklam masks` first")
        chosen = [names[i] for i in np.unique(np.linspace(0, len(names) - 1, min(rows, len(names))).astype(int))]
        grid: list[list[tuple[np.ndarray, str]]] = []  # per trajectory: (frame with mask, title) per column
        for name in chosen:
            group, row = f[name], []
            length = group["obs"].shape[0]
            for t in np.unique(np.linspace(0, length - 1, min(cols, length)).astype(int)):
                mask = group[key][int(t)]
                title = f"traj {name} t{t}"
                if "masks" in group and key != "masks":
                    title += f"\nIoU {frame_ious(mask[None], group['masks'][int(t)][None])[0]:.2f}"
                row.append((overlay(group["obs"][int(t)], mask), title))
            grid.append(row)
    ncols = max(len(row) for row in grid)
    fig, axes = plt.subplots(len(grid), ncols, figsize=(1.6 * ncols, 1.8 * len(grid)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(grid):
        for c, (image, title) in enumerate(row):
            axes[r, c].imshow(image, interpolation="nearest")
            axes[r, c].set_title(title, fontsize=7)
    fig.suptitle(f"{Path(data).name}: {key} (red, white outline)", fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return out
