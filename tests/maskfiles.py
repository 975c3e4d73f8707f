"""A tiny dataset file for the `masklam masks` tests: given videos (and simulator masks), the minimal layout."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np


def write_mask_file(path: Path, videos: list[tuple[np.ndarray, np.ndarray | None]], domain: str = "cheetah") -> Path:
    """One trajectory group per (obs (T,H,W,3) uint8, masks (T,H,W) bool or None), with zero states and actions."""
    with h5py.File(path, "w") as f:
        f.attrs["domain_name"] = domain
        f.attrs["task_name"] = "run"
        f.attrs["version"] = 1
        f.attrs["img_hw"] = list(videos[0][0].shape[1:3]) if videos else [64, 64]
        for i, (obs, masks) in enumerate(videos):
            g = f.create_group(str(i))
            g.create_dataset("obs", data=obs)
            g.create_dataset("states", data=np.zeros((len(obs), 5), np.float32))
            g.create_dataset("actions", data=np.zeros((len(obs), 2), np.float32))
            if masks is not None:
                g.create_dataset("masks", data=masks)
    return path
