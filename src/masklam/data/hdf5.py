"""The dataset file: LAOM's HDF5 layout plus ours, writing one trajectory, validating a whole file.

Layout (readers accept LAOM's published files, which have only ``obs``, ``states``, ``actions``):

- file attrs: ``domain_name, task_name, img_hw, split`` (LAOM) and ours ``distractors, seed, version,
  action_repeat, policy, steps, shadows, reflections, multisample, dataset_return`` and, only when the
  backgrounds came from a folder of videos, ``background_path`` (its absolute path);
- one group per trajectory named ``"0", "1", ...`` holding per-frame arrays with a leading ``T`` axis:
  ``obs (T,H,W,3) uint8``, ``states (T,S) float32``, ``actions (T,A) float32`` (both absent in video
  imported without them, `masklam import`: state and action dims are then 0), ``rewards (T,) float32``,
  ``masks (T,H,W) bool``, optional ``sam2_masks``, ``masks_mobilesam``, ``masks_student`` (T,H,W) bool
  (`masklam masks`), and the distractor metadata (``video_id (T,)``, ``video_frame (T,)``, ``camera (T,3)``,
  ``color (T,3)``), on Meta-World ``success (T,) bool`` (the env's flag after ``actions[t]``); attrs
  ``traj_return``, ``seed`` (the episode seed), ``length``.

Images and masks are chunked one frame per chunk, so a reader touching frame ``t`` decompresses only it;
every chunk has a checksum, so a corrupted byte is an error on reading, never silently wrong data.
Files are never written in place (HDF5 does not survive a kill mid-write): `write_atomically` builds a
file under a temporary name, syncs it to disk and renames it into place. Resumable writers (`masklam collect`,
`masklam masks`) keep each finished item as such a part file and merge them the same way at the end.
Every error a user can cause (missing, truncated or garbage file, inconsistent shapes) becomes a one-line
:class:`MasklamError` naming the file and, where it applies, the trajectory.

Our files store the executed actions. The peers' files (LAOM's HDF5, told from ours by having ``domain_name``
but no ``version`` attr; MaskLAM's parquet data) store the policy's output before the environment clipped it,
and their authors' loaders clip it to [-1, 1] on reading: so do ours (:func:`executed_actions`), with one
notice per file whose values leave the bounds.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from masklam.errors import MasklamError, note_once
from masklam.files import atomic_path
from masklam.resources import GuardedFile

FORMAT_VERSION = 1
REQUIRED_KEYS = ("obs",)
LABEL_KEYS = ("states", "actions")
"""in every trajectory or in none (imported video has neither: its state_dim and action_dim are 0)"""
MASK_KEYS = ("masks", "sam2_masks", "masks_mobilesam", "masks_student")
IMAGE_KEYS = ("obs",) + MASK_KEYS
COMPRESSIONS = ("lzf", "gzip", "none")
OPTIONAL_ATTRS = ("background_path", "actions_clipped_to", "recursive")
"""file attrs written only when they apply (`masklam collect --background-path`; `masklam import` of a peer's file,
whose actions it stores clipped to these bounds; `masklam import --recursive`)"""
PEER_ACTION_BOUNDS = (-1.0, 1.0)
"""the action bounds of the peers' benchmarks (DMC, Meta-World), which their stored actions may leave"""


@dataclass
class Trajectory:
    """One episode in memory, as a collector produces it and :func:`write_trajectory` stores it."""

    obs: np.ndarray  # (T, H, W, 3) uint8
    states: np.ndarray  # (T, S) float32
    actions: np.ndarray  # (T, A) float32, executed (inside the action bounds)
    rewards: np.ndarray  # (T,) float32
    masks: np.ndarray | None = None  # (T, H, W) bool
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # per-frame distractor metadata, (T, ...)
    seed: int = 0

    @property
    def length(self) -> int:
        return int(self.obs.shape[0])

    @property
    def traj_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))

    def arrays(self) -> dict[str, np.ndarray]:
        """All per-frame arrays by their dataset name."""
        out = {"obs": self.obs, "states": self.states, "actions": self.actions, "rewards": self.rewards}
        for key in LABEL_KEYS:
            if out[key].ndim == 2 and out[key].shape[1] == 0:  # none (imported video): not stored
                del out[key]
        if self.masks is not None:
            out["masks"] = self.masks
        for key, value in self.extras.items():
            if key in out or key in MASK_KEYS:
                raise MasklamError(f"distractor metadata key {key!r} clashes with a dataset name")
            out[key] = value
        return out


def open_file(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """Open an HDF5 file, turning a missing, truncated or garbage file into a one-line MasklamError."""
    path = Path(path)
    if mode == "r" and not path.is_file():
        raise MasklamError(f"no such file: {path}")
    try:
        return h5py.File(path, mode)
    except OSError as e:
        raise MasklamError(f"{path} is not a readable HDF5 file ({_first_line(e)})") from None


def fsync(path: str | os.PathLike) -> None:
    """Flush a written file to disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def write_atomically(path: str | os.PathLike, start_from: str | os.PathLike | None = None) -> Iterator[h5py.File]:
    """An HDF5 file to fill that replaces ``path`` only once complete: written as ``<path>.tmp`` (a copy of
    ``start_from``, opened r+, or a new file), synced, then renamed; on an error the temporary is removed.

    Part files (one finished item each) and the merge of parts into a dataset both go through here. HDF5 writes
    through a `GuardedFile`, so a full disk never reaches HDF5 (which would crash the process): it is one line
    naming ``path`` once the file is closed (`masklam.resources.disk_full`), and the temporary is removed."""
    with atomic_path(path) as tmp:
        if start_from is not None:
            shutil.copyfile(start_from, tmp)
        guard = GuardedFile(tmp, "r+b" if start_from is not None else "w+b")
        try:
            with h5py.File(guard, "r+" if start_from is not None else "w") as f:
                yield f
        finally:
            guard.close()
        if guard.full is not None:
            raise guard.full
        fsync(tmp)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


READ_ERRORS = (OSError, RuntimeError, ValueError, TypeError)
"""what h5py raises reading a corrupt chunk, or a dataset not of the kind asked for"""


def read_error(path: str | os.PathLike, name: str, key: str, e: BaseException) -> MasklamError:
    """The one line for a trajectory's dataset that cannot be read (`READ_ERRORS`)."""
    return MasklamError(f"{path}: cannot read trajectory {name}/{key} ({_first_line(e)})")


def read_array(path: str | os.PathLike, group: h5py.Group, key: str, rows: slice = slice(None)) -> np.ndarray:
    """``group[key][rows]`` (a trajectory's dataset), or `read_error`'s one line."""
    try:
        return group[key][rows]
    except READ_ERRORS as e:
        raise read_error(path, group.name.lstrip("/"), key, e) from None


def plain(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()] if value.ndim else plain(value.item())
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(obj: h5py.File | h5py.Group) -> dict[str, Any]:
    """All attributes of a file or group as plain Python values."""
    return {key: plain(obj.attrs[key]) for key in obj.attrs}


def trajectory_names(f: h5py.File) -> list[str]:
    """Names of the trajectory groups ("0", "1", ...), in numeric order; other entries are ignored."""
    names = [name for name in f.keys() if name.isdigit() and f.get(name, getclass=True) is h5py.Group]
    return sorted(names, key=int)


def write_trajectory(parent: h5py.Group, name: str, traj: Trajectory, compression: str = "lzf") -> h5py.Group:
    """Write one trajectory as group ``parent[name]``: images chunked per frame and compressed."""
    if compression not in COMPRESSIONS:
        raise MasklamError(f"unknown compression {compression!r}; one of {', '.join(COMPRESSIONS)}")
    arrays = traj.arrays()
    length = traj.length
    for key, value in arrays.items():
        if value.shape[:1] != (length,):
            raise MasklamError(f"trajectory {name}: {key} has {value.shape[:1]} frames, obs has {length}")
    group = parent.create_group(name)
    comp = None if compression == "none" else compression
    for key, value in arrays.items():
        value = np.ascontiguousarray(value)
        # per-frame chunks for images; every chunk carries a Fletcher-32 checksum, so corruption is caught on read
        chunks = (1,) + value.shape[1:] if key in IMAGE_KEYS else value.shape
        group.create_dataset(key, data=value, chunks=chunks, compression=comp if key in IMAGE_KEYS else None,
                             fletcher32=True)
    group.attrs["traj_return"] = traj.traj_return
    group.attrs["seed"] = int(traj.seed)
    group.attrs["length"] = length
    return group


def read_trajectory(group: h5py.Group) -> Trajectory:
    """Read one of our trajectory groups back into memory (the inverse of :func:`write_trajectory`)."""
    base = {"obs", "states", "actions", "rewards", "masks"}
    data = {key: group[key][()] for key in group.keys()}
    n = len(data["obs"])
    rewards = data.get("rewards", np.zeros(n, np.float32))
    for key in LABEL_KEYS:
        data.setdefault(key, np.zeros((n, 0), np.float32))
    extras = {key: value for key, value in data.items() if key not in base and key not in MASK_KEYS}
    return Trajectory(data["obs"], data["states"], data["actions"], rewards, data.get("masks"), extras,
                      int(group.attrs.get("seed", 0)))


@dataclass
class FileLayout:
    """What a dataset file holds, after checking that its trajectories agree with each other."""

    path: Path
    attrs: dict[str, Any]
    names: list[str]  # trajectory group names, numeric order
    lengths: np.ndarray  # (n,) int64 frames per trajectory
    returns: np.ndarray  # (n,) float64 episode returns (nan where the file does not say)
    img_hw: tuple[int, int]
    state_dim: int  # 0: no states (imported video)
    action_dim: int  # 0: no actions (imported video)
    keys: list[str]  # datasets present in every trajectory
    partial_keys: list[str]  # datasets present in some trajectories only
    action_bounds: tuple[float, float] | None = None
    """the bounds readers clip the stored actions to (the peers' files, which store them unclipped); None: ours"""

    @property
    def num_trajectories(self) -> int:
        return len(self.names)

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    def has(self, key: str) -> bool:
        return key in self.keys


def read_layout(path: str | os.PathLike, required: tuple[str, ...] = REQUIRED_KEYS) -> FileLayout:
    """Open ``path`` and check every trajectory's shapes and dtypes; MasklamError naming the first problem.

    ``required``: the datasets every trajectory must hold (``("obs",)`` for readers of video only, such as
    `masklam masks`; then a file without states or actions has ``state_dim`` / ``action_dim`` 0)."""
    path = Path(path)
    with open_file(path) as f:
        try:
            return _layout(path, f, required)
        except (OSError, RuntimeError, KeyError, AttributeError, IndexError, ValueError, TypeError) as e:
            raise MasklamError(f"{path} is corrupted ({_first_line(e)})") from None  # e.g. obs a group, or a scalar


def _layout(path: Path, f: h5py.File, required: tuple[str, ...] = REQUIRED_KEYS) -> FileLayout:
    attrs = read_attrs(f)
    names = trajectory_names(f)
    if not names:
        raise MasklamError(f"{path} holds no trajectories (no groups named 0, 1, ...)")
    lengths, returns, key_sets = [], [], []
    dims: dict[str, tuple] = {}
    first_labels: tuple[bool, ...] = ()
    for name in names:
        group = f[name]
        missing = [key for key in required if key not in group]
        if missing:
            raise MasklamError(f"{path}: trajectory {name} lacks {', '.join(missing)}")
        length = group["obs"].shape[0]
        if length < 1:
            raise MasklamError(f"{path}: trajectory {name} is empty (0 frames)")
        for key in group.keys():
            ds = group[key]
            if not isinstance(ds, h5py.Dataset):
                continue
            if ds.shape[:1] != (length,):
                raise MasklamError(
                    f"{path}: trajectory {name}: {key} has shape {ds.shape}, expected {length} frames like obs")
            expected = (tuple(int(d) for d in ds.shape[1:]), str(ds.dtype))
            if key in dims and dims[key] != expected:
                raise MasklamError(
                    f"{path}: trajectory {name}: {key} has shape {ds.shape} {ds.dtype}, other trajectories (T, "
                    f"{', '.join(map(str, dims[key][0]))}) {dims[key][1]}")
            dims.setdefault(key, expected)
        _check_image_shapes(path, name, group, dims)
        labels = tuple(key in group for key in LABEL_KEYS)
        first_labels = first_labels if name != names[0] else labels
        for key, has, first in zip(LABEL_KEYS, labels, first_labels):
            if has != first:
                raise MasklamError(f"{path}: trajectory {name} {'has' if has else 'lacks'} {key}, "
                                   f"trajectory {names[0]} {'has' if first else 'lacks'} them")
        lengths.append(length)
        returns.append(_traj_return(group))
        key_sets.append({key for key in group.keys() if isinstance(group[key], h5py.Dataset)})
    keys = sorted(set.intersection(*key_sets))
    partial = sorted(set.union(*key_sets) - set(keys))
    h, w = dims["obs"][0][:2]
    state_dim, action_dim = (int(dims[k][0][0]) if k in dims else 0 for k in LABEL_KEYS)
    laom = "domain_name" in attrs and "version" not in attrs  # LAOM's published files: unclipped actions
    return FileLayout(path, attrs, names, np.asarray(lengths, np.int64), np.asarray(returns, np.float64),
                      (int(h), int(w)), state_dim, action_dim, keys, partial, PEER_ACTION_BOUNDS if laom else None)


def executed_actions(path: Path, name: str, actions: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    """A trajectory's ``actions`` (T, A) clipped to ``bounds`` (a peer's file), as the environment executed them and
    the authors' loaders read them; the first time a file's values leave the bounds, one notice line. NaN and inf
    stay as they are, for the readers' finiteness checks to name."""
    if bounds is None:
        return actions
    lo, hi = bounds
    outside = np.isfinite(actions) & ((actions < lo) | (actions > hi))
    if not outside.any():
        return actions
    note_once(("clipped actions", str(path)),
              f"{path}: trajectory {name} holds actions outside [{lo:g}, {hi:g}] (up to "
              f"{float(np.abs(actions[outside]).max()):.3g}; the file stores the policy's output before the "
              "environment clipped it); read clipped, as the authors' loaders do")
    return np.where(outside, np.clip(actions, lo, hi), actions)  # (T, A), the dtype of `actions`


def _check_image_shapes(path: Path, name: str, group: h5py.Group, dims: dict) -> None:
    obs_tail, obs_dtype = dims["obs"]
    if len(obs_tail) != 3 or obs_tail[2] != 3 or obs_dtype != "uint8":
        raise MasklamError(f"{path}: trajectory {name}: obs must be (T,H,W,3) uint8, got (T,{_dims(obs_tail)}) "
                           f"{obs_dtype}")
    for key in LABEL_KEYS:
        if key not in dims:
            continue
        tail, dtype = dims[key]
        if len(tail) != 1 or tail[0] < 1 or not np.issubdtype(np.dtype(dtype), np.number):
            raise MasklamError(f"{path}: trajectory {name}: {key} must be (T,D) numbers with D >= 1, "
                               f"got (T,{_dims(tail)}) {dtype}")
    for key in MASK_KEYS:
        if key in group:
            tail, dtype = dims[key]
            if tail != obs_tail[:2] or dtype != "bool":
                raise MasklamError(
                    f"{path}: trajectory {name}: {key} must be (T,{_dims(obs_tail[:2])}) bool, the size of its frames "
                    f"(obs (T,{_dims(obs_tail)})), got (T,{_dims(tail)}) {dtype}")


def _dims(tail: Any) -> str:
    """A shape's trailing dimensions as "H,W,C"."""
    return ",".join(map(str, tail))


def _traj_return(group: h5py.Group) -> float:
    if "traj_return" in group.attrs:
        return float(plain(group.attrs["traj_return"]))
    if "rewards" in group:
        return float(np.sum(group["rewards"][()], dtype=np.float64))
    return float("nan")


def check_attrs(path: Path, found: dict[str, Any], expected: dict[str, Any]) -> None:
    """MasklamError if a file's attrs disagree with the expected ones (the arguments of a resumed run).

    A key absent from the file is not checked (files of older versions lack newer keys), except the
    OPTIONAL_ATTRS, which are written only when set: there absent on one side only is a difference too."""
    for key in OPTIONAL_ATTRS:
        if (key in found) != (key in expected):
            raise MasklamError(f"{path} was written {'with' if key in found else 'without'} {key}"
                               f"{'=' + repr(plain(found[key])) if key in found else ''}, this run "
                               f"{'lacks it' if key in found else 'sets ' + repr(expected[key])}; "
                               "use the same arguments to resume, or another --out")
    for key, value in expected.items():
        if key in found and plain(found[key]) != value:
            raise MasklamError(
                f"{path} was written with {key}={plain(found[key])!r}, not {value!r}; "
                "use the same arguments to resume, or another --out")
