"""Masks in a dataset file, written resumably: the prompt, one part file per finished trajectory, one merge.

A segmenter is prompted on the first frame of each trajectory with one fixed box (the agent starts at a known
place in the frame; `default_box` sizes it for the file's domain when the file names one), a box or a point
the user gives (``--box``, ``--point``, in pixels of the file's frames), or ``"auto"`` (`masklam.masks.auto`
finds a box per trajectory from the video's motion). HDF5 files do not survive a kill in the
middle of a write, so a dataset is never written in place: each finished trajectory is kept as a small part
file beside it (`masklam.data.hdf5.write_atomically`), and when all are done a copy of the file receives them
and is renamed over the original. A killed run loses at most the trajectory in progress; a rerun skips what
is done (`plan`). The prompt and the weights used are stored as file attributes ``<key>_prompt`` (4 numbers: a
box, 2: a point, or "auto"), ``<key>_weights``; each trajectory's IoU against the simulator masks (when it has
them) as the group attribute ``<key>_iou``, and a box found per trajectory (--auto; SAM 2's box of a --point) as the
group attribute ``<key>_prompt``.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from masklam.data.hdf5 import open_file, read_layout, trajectory_names, write_atomically
from masklam.errors import MasklamError, note_once
from masklam.files import read_record, write_text
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
AUTO = "auto"
Prompt = tuple[float, ...] | str  # (x0, y0, x1, y1) box, (x, y) point, or AUTO


def default_box(domain: str, frame_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """The box prompt for a domain, in pixels of an ``H x W`` frame."""
    height, width = frame_hw
    fx0, fy0, fx1, fy1 = TASK_BOXES.get(domain, CENTRE_BOX)
    return (fx0 * width, fy0 * height, fx1 * width, fy1 * height)


def describe(prompt: Prompt) -> str:
    """'box [x0, y0, x1, y1]', 'point [x, y]' or 'auto', for messages."""
    if isinstance(prompt, str):
        return prompt
    return f"{'box' if len(prompt) == 4 else 'point'} {[round(float(v), 2) for v in prompt]}"


def _check_prompt(path: Path, prompt: Prompt, frame_hw: tuple[int, int]) -> None:
    """MasklamError if a box or point does not lie inside the frames of ``path`` (all are H x W)."""
    height, width = frame_hw
    if isinstance(prompt, str):
        return
    if len(prompt) == 4:
        x0, y0, x1, y1 = prompt
        inside = 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    else:
        x, y = prompt
        inside = 0 <= x < width and 0 <= y < height
    if not inside:
        name = "--box" if len(prompt) == 4 else "--point"
        raise MasklamError(f"{name} {tuple(prompt)} lies outside the {height}x{width} frames of {path} "
                           f"(x in 0..{width}, y in 0..{height}, every trajectory)")


def _same(found, prompt: Prompt) -> bool:
    if isinstance(found, bytes):
        found = found.decode()
    if isinstance(found, str) or isinstance(prompt, str):
        return found == prompt
    found = np.asarray(found, np.float64)
    return found.shape == (len(prompt),) and bool(np.allclose(found, prompt))


def _check_same_prompt(where: Path, found, prompt: Prompt, key: str) -> None:
    """MasklamError if ``where`` holds masks made with another prompt (one file must not mix prompts)."""
    if found is not None and not _same(found, prompt):
        shown = found.decode() if isinstance(found, bytes) else found if isinstance(found, str) else tuple(found)
        raise MasklamError(f"{where} holds {key} made with {describe(shown)}, not {describe(prompt)}; pass that "
                           f"prompt to resume, or --replace to make them again with this one")


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


def merge_parts(path: Path, parts: Path, key: str, prompt: Prompt, weights: Path) -> None:
    """Copy ``path``, add every part's masks to the copy, then rename it over ``path``: never a half-written file,
    never masks that do not fit their frames."""
    need = path.stat().st_size + sum(p.stat().st_size for p in parts.glob("*.h5"))
    check_free_space(path, need, f"adding {key} to {path}")
    with write_atomically(path, start_from=path) as f:
        for part in tqdm(sorted(parts.glob("*.h5")), desc="merging", unit="traj", leave=False):
            group = f[part.stem]
            with h5py.File(part, "r") as src:
                masks = src["masks"][()]
                if masks.shape != group["obs"].shape[:3]:
                    raise MasklamError(f"{part} holds masks of shape {masks.shape} for frames of shape "
                                       f"{group['obs'].shape[:3]}: not this file's; remove {parts} and run again")
                if key in group:  # made again (--replace): nothing of the old masks stays
                    del group[key]
                for stale in (f"{key}_iou", f"{key}_prompt"):
                    group.attrs.pop(stale, None)
                chunks = (1,) + masks.shape[1:] if len(masks) else None
                group.create_dataset(key, data=masks, chunks=chunks, compression="lzf" if chunks else None)
                if "iou" in src.attrs:
                    group.attrs[f"{key}_iou"] = float(src.attrs["iou"])
                if "prompt" in src:  # the box found for this trajectory (--auto, or sam2's box of a --point)
                    group.attrs[f"{key}_prompt"] = src["prompt"][()]
        f.attrs[f"{key}_prompt"] = prompt if isinstance(prompt, str) else np.asarray(prompt, np.float64)
        f.attrs[f"{key}_weights"] = str(weights)
        made = read_record(parts / "config.json")  # how they were made (segmenter, student...), kept
        f.attrs[f"{key}_config"] = json.dumps({k: v for k, v in made.items() if k != "data"})
    shutil.rmtree(parts)


@dataclass
class Plan:
    """What a run has to do: the prompt, the part-file directory, and the trajectories lacking ``key``."""

    prompt: Prompt
    parts: Path
    names: list[str]
    missing: list[str]
    lengths: dict[str, int]

    def todo(self) -> list[str]:
        """Missing trajectories without a finished part file."""
        return [name for name in self.missing if not (self.parts / f"{name}.h5").is_file()]


def data_fingerprint(path: Path) -> dict[str, int]:
    """What tells one version of a dataset file from another (a run never changes it before its merge)."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def keep_folder(folder: Path, path: Path) -> None:
    """After this run's merge rewrote ``path`` (masks added, frames as they were), the work ``folder`` it kept
    (MobileSAM labels) stays valid for it: its recorded version of ``path`` is the new one."""
    config_file = folder / "config.json"
    if config_file.is_file():
        write_text(config_file, json.dumps({**read_record(config_file), "data": data_fingerprint(path)}))


def resume_folder(folder: Path, path: Path, settings: dict, what: str, replace: bool = False) -> None:
    """Create ``folder`` (work in progress on ``path``) or check the one an interrupted run left: made from another
    version of ``path`` (rewritten since) -> emptied, with a note; with other ``settings`` -> MasklamError (pass the
    same options to resume), or with ``replace`` emptied. Records both in ``folder``/config.json."""
    config_file = folder / "config.json"
    if replace and config_file.is_file() and any(read_record(config_file).get(k) != v for k, v in settings.items()):
        shutil.rmtree(folder)  # --replace: what an interrupted run made with other options goes too
    if config_file.is_file():
        found = read_record(config_file)  # {}: cut short by a kill while written, nothing to check by
        if found.get("data", data_fingerprint(path)) != data_fingerprint(path) or not found:
            shutil.rmtree(folder)
            note_once(("stale", str(folder)), f"{folder} was made from another version of {path} (or cannot be "
                      f"read): its {what} are made again")
        else:
            for name, value in settings.items():
                if name == "prompt" and name in found:  # a prompt compares as numbers
                    _check_same_prompt(folder, found[name], value, settings.get("key", "masks"))
                elif name in found and found[name] != value:
                    raise MasklamError(f"{folder} holds {what} made with {name} {found[name]!r}, not {value!r}; pass "
                                       f"the same options to resume (or delete {folder} to start over)")
    folder.mkdir(exist_ok=True)
    write_text(config_file, json.dumps({**settings, "data": data_fingerprint(path)}))


def plan(path: Path, key: str, prompt: Prompt | None, made_by: dict[str, Any] | None = None,
         replace: bool = False) -> Plan:
    """Validate the file and the prompt (default: the domain's box; a file naming no domain needs one), check it
    matches earlier runs (the prompt; ``made_by``: the segmenter, its weights, the student's settings), prepare the
    parts dir. ``replace``: every trajectory is to be made again, whatever the file holds under ``key``."""
    layout = read_layout(path, required=("obs",))  # validates obs (T,H,W,3) uint8 in every trajectory
    frame_hw = layout.img_hw
    if prompt is None:
        domain = str(layout.attrs.get("domain_name", ""))
        if not domain:
            raise MasklamError(f"{path} names no task (no domain_name attribute, e.g. an imported video): show the "
                               "agent on the first frame with --box X0 Y0 X1 Y1 or --point X Y (pixels), "
                               "or pass --auto")
        prompt = default_box(domain, frame_hw)
    if not isinstance(prompt, str):
        prompt = tuple(float(v) for v in prompt)
    _check_prompt(path, prompt, frame_hw)
    parts = parts_dir(path, key)
    with open_file(path) as f:
        for attr in (f"{key}_prompt", f"{key}_box"):  # _box: files of earlier versions
            if attr in f.attrs and not replace:
                _check_same_prompt(path, f.attrs[attr], prompt, key)
        names = trajectory_names(f)
        missing = [name for name in names if replace or key not in f[name]]
        lengths = {name: int(f[name]["obs"].shape[0]) for name in missing}
        made = json.loads(f.attrs.get(f"{key}_config", "{}")) if not missing else {}
    for name, value in (made_by or {}).items():  # all made already: under these options, or refused (not a no-op)
        if name in made and made[name] != value:
            raise MasklamError(f"{path} has {key} made with {name} {made[name]!r}, not {value!r}; pass --replace to "
                               "make them again with these options")
    if missing:
        resume_folder(parts, path, {"prompt": prompt if isinstance(prompt, str) else list(prompt), "key": key,
                                    **(made_by or {})}, "masks", replace)
    else:
        print(f"{path}: all {len(names)} trajectories already have {key}")
    return Plan(prompt, parts, names, missing, lengths)


def stored_ious(path: Path, key: str) -> dict[str, float]:
    """{group: IoU vs simulator masks} for every group holding ``key`` and its stored IoU."""
    with open_file(path) as f:
        return {name: float(f[name].attrs[f"{key}_iou"])
                for name in trajectory_names(f) if f"{key}_iou" in f[name].attrs}
