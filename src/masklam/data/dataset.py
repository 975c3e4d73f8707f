"""Reading datasets for training: all shards as one flat array, trajectory splits, vectorised windows.

Every frame of every selected trajectory lies in one contiguous array (``obs (N,H,W,3) uint8``); trajectory
``i`` occupies rows ``traj_starts[i] : traj_starts[i] + traj_lengths[i]``. A :class:`WindowSampler` keeps
the flat indices of every valid window start and draws a batch with one fancy-indexing gather per key,
never a Python loop per sample; a window ``t, t+1, ..., t+max_offset`` never crosses a trajectory end.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np
from tqdm.auto import tqdm

from masklam.data.formats import HDF5_SUFFIXES, trainable
from masklam.data.hdf5 import (MASK_KEYS, READ_ERRORS, FileLayout, executed_actions, open_file, read_error,
                                read_layout)
from masklam.data.peers import ParquetLayout, ParquetReader, is_parquet, parquet_layout, parquet_shards
from masklam.errors import MasklamError, note_once
from masklam.resources import check_memory

PathsLike = str | os.PathLike | Sequence[str | os.PathLike]


@dataclass
class TrajectoryData:
    """Frames of many trajectories concatenated; per-trajectory offsets say where each one lies."""

    obs: np.ndarray
    """(N, H, W, 3) uint8"""
    actions: np.ndarray
    """(N, A) float32"""
    states: np.ndarray
    """(N, S) float32"""
    rewards: np.ndarray | None
    """(N,) float32, None when a file has no rewards (LAOM's files)"""
    masks: np.ndarray | None
    """(N, H, W) bool, None unless requested and present in every file"""
    traj_starts: np.ndarray
    """(n,) int64 first flat row of each trajectory"""
    traj_lengths: np.ndarray
    """(n,) int64"""
    traj_returns: np.ndarray
    """(n,) float64 (nan where unknown)"""
    sources: list[tuple[str, str]]
    """(file, group name) of each trajectory"""
    meta: dict[str, Any]
    """attrs of the first file, plus `files`"""
    mask_key: str | None = None
    """the mask dataset requested (None: masks not requested)"""
    files_without_masks: list[str] = field(default_factory=list)
    """files lacking `mask_key` (then `masks` is None)"""
    other_mask_keys: list[str] = field(default_factory=list)
    """the masks the first file without `mask_key` has under another key (what to pass as --mask-key)"""
    _masks_checked: bool = field(default=False, init=False, repr=False, compare=False)
    """whether `require_masks` has checked the masks' cover (or the caller took them as they are: `masks_taken`)"""

    @property
    def num_trajectories(self) -> int:
        return len(self.traj_starts)

    @property
    def num_frames(self) -> int:
        return int(self.obs.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def state_dim(self) -> int:
        return int(self.states.shape[1])

    @property
    def img_hw(self) -> tuple[int, int]:
        return int(self.obs.shape[1]), int(self.obs.shape[2])

    def require_masks(self) -> np.ndarray:
        """The masks, or a MasklamError naming the file without them (for methods that need masks) or saying that
        they are empty in every frame; trajectories whose masks are all empty are named once in a note."""
        if self.masks is not None:
            if not self._masks_checked:
                self._check_masks_cover()
                self._masks_checked = True
            return self.masks
        if self.mask_key is None:
            raise MasklamError("masks were not loaded: call load_dataset(..., mask_key='masks')")
        if self.other_mask_keys:
            raise MasklamError(f"{self.files_without_masks[0]} has no {self.mask_key!r} (agent masks) but has "
                               f"{', '.join(map(repr, self.other_mask_keys))}: pass --mask-key "
                               f"{self.other_mask_keys[0]} to train on those")
        raise MasklamError(f"{self.files_without_masks[0]} has no {self.mask_key!r} (agent masks); "
                           "this method needs them: collect with `masklam collect` or add them with `masklam masks`")

    def masks_taken(self) -> "TrajectoryData":
        """These data, with their masks taken as they are (`require_masks` checks no cover): one episode of many,
        whose masks may be empty where its segmenter found no agent (its caller notes that); -> self."""
        self._masks_checked = True
        return self

    def _check_masks_cover(self) -> None:
        """One line if the masks mark no pixel in any frame (a wrong prompt, a segmenter that found nothing); a note
        naming the trajectories without a masked pixel."""
        assert self.masks is not None
        frame_any = self.masks.reshape(len(self.masks), -1).any(axis=1)  # (N,)
        traj_any = np.add.reduceat(frame_any, self.traj_starts) > 0 if len(frame_any) else np.zeros(0, bool)
        files = ", ".join(dict.fromkeys(f for f, _ in self.sources))
        if not traj_any.any():
            raise MasklamError(f"the agent masks {self.mask_key!r} of {files} are empty in every frame: nothing to "
                               "focus on; look at them (`masklam masks --data FILE --preview`) and make them again")
        if not traj_any.all():
            empty = [f"{f}:{name}" for (f, name), ok in zip(self.sources, traj_any) if not ok]
            note_once(("empty-masks", files, self.mask_key),
                      f"{len(empty)} of {len(traj_any)} trajectories have empty agent masks {self.mask_key!r} in every "
                      f"frame ({', '.join(empty[:3])}{' ...' if len(empty) > 3 else ''}): a masked loss learns "
                      "nothing from them")

    def require_actions(self, what: str = "this") -> np.ndarray:
        """The actions, or a MasklamError when the data have none (video imported without actions)."""
        if self.action_dim:
            return self.actions
        raise MasklamError(f"{self.meta['files'][0]} has no actions (video imported without them); {what} needs "
                           "actions")

    def trajectory(self, i: int) -> dict[str, np.ndarray]:
        """Views of trajectory ``i``'s frames: obs, actions, states (and rewards, masks when loaded)."""
        rows = slice(int(self.traj_starts[i]), int(self.traj_starts[i] + self.traj_lengths[i]))
        out = {"obs": self.obs[rows], "actions": self.actions[rows], "states": self.states[rows]}
        if self.rewards is not None:
            out["rewards"] = self.rewards[rows]
        if self.masks is not None:
            out["masks"] = self.masks[rows]
        return out


def fingerprint_files(path: str | os.PathLike) -> list[Path]:
    """The files a data path stands for, in name order (what a cache fingerprints): a file itself; a directory's
    HDF5 and parquet files; `DIR/<split>`: that split's parquet shards of DIR; [] for none."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(_hdf5_shards(path) + [p for p in path.iterdir() if p.is_file() and p.suffix == ".parquet"])
    return parquet_shards(path)


def _hdf5_shards(directory: Path) -> list[Path]:
    """A directory's HDF5 files (.h5, .hdf5), in name order."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in HDF5_SUFFIXES)


def dataset_files(paths: PathsLike) -> list[Path]:
    """Data files: a directory stands for its .h5 / .hdf5 shards, or (MaskLAM's parquet data) for itself."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            shards = _hdf5_shards(path)
            if shards and is_parquet(path):
                raise MasklamError(f"{path} holds both HDF5 and .parquet files; give the files themselves")
            if not shards and not is_parquet(path):
                trainable(path)  # video, image folders, LeRobot: a hint to import them
                raise MasklamError(f"no .h5, .hdf5 or .parquet files in directory {path}")
            files += shards or [path]
        else:
            files.append(path)
    if not files:
        raise MasklamError("no dataset files given")
    seen: set[Path] = set()
    for f in files:  # a file read twice would put one copy of a trajectory in training, the other in the held-out set
        if f.resolve() in seen:
            raise MasklamError(f"{f} is given twice (itself, or inside a folder also given)")
        seen.add(f.resolve())
    return files


def data_layouts(paths: PathsLike, observations: str | None = None,
                 episode_length: int | None = None) -> list[FileLayout]:
    """The checked layouts of every data file `paths` stands for (shards agreeing on sizes and task), without
    loading any frame: what artefacts are checked against before work (`observations`, `episode_length`: how
    MaskLAM's parquet data are read, as `data_layout`)."""
    layouts = [data_layout(p, observations, episode_length) for p in dataset_files(paths)]
    _check_shards_agree(layouts)
    return layouts


def _check_shards_agree(layouts: list[FileLayout]) -> None:
    first = layouts[0]
    for lay in layouts[1:]:
        for what in ("img_hw", "state_dim", "action_dim"):
            if getattr(lay, what) != getattr(first, what):
                raise MasklamError(f"{lay.path} has {what} {getattr(lay, what)}, "
                                   f"{first.path} has {getattr(first, what)}")
        for key in ("domain_name", "task_name"):
            if key in lay.attrs and key in first.attrs and lay.attrs[key] != first.attrs[key]:
                raise MasklamError(f"{lay.path} has {key} {lay.attrs[key]!r}, {first.path} has {first.attrs[key]!r}")


def data_layout(path: str | os.PathLike, observations: str | None = None,
                episode_length: int | None = None) -> FileLayout:
    """The checked layout of one data source: our HDF5 (LAOM's files included), or MaskLAM's parquet data (a file
    or a directory of shards), told apart by content."""
    path = Path(path)
    trainable(path)  # other formats: a one-line hint to import them
    if is_parquet(path):
        return parquet_layout(path, observations or "distracted", episode_length)
    if observations == "clean":
        raise MasklamError(f"{path}: observations='clean' picks the clean frames of MaskLAM's parquet data; an HDF5 "
                           "file holds one kind of frame (give the distractor-free file instead)")
    return read_layout(path)


def _open(layout: FileLayout, keys: list[str]) -> Any:
    """An open source whose `[name][key]` are a trajectory's datasets (h5py.File, or a ParquetReader)."""
    return ParquetReader(layout, keys) if isinstance(layout, ParquetLayout) else open_file(layout.path)


def load_dataset(paths: PathsLike, mask_key: str | None = None, traj_ids: Sequence[int] | None = None,
                 progress: bool = True, observations: str | None = None,
                 episode_length: int | None = None) -> TrajectoryData:
    """Read every trajectory of one or more files (shards, or directories of them) into one TrajectoryData.

    Files are our HDF5 layout (LAOM's published HDF5 files are its subset) or MaskLAM's parquet datasets (a
    file or a directory of shards; masklam.data.peers), told apart by their content. ``observations``:
    which frames of MaskLAM's parquet data, "distracted" (None: the default) or "clean"; ``episode_length``:
    also cut MaskLAM's parquet rows every that many steps (DCS: 1000; masklam.data.peers).

    ``mask_key`` (one of MASK_KEYS: "masks", "sam2_masks", "masks_mobilesam", "masks_student") loads agent
    masks when every file has them; otherwise ``masks`` is None and :meth:`TrajectoryData.require_masks`
    names the file lacking them.
    ``traj_ids`` selects trajectories by global index (files in order, then groups "0", "1", ...).
    """
    if mask_key is not None and mask_key not in MASK_KEYS:
        raise MasklamError(f"unknown mask_key {mask_key!r}; one of {', '.join(MASK_KEYS)} or None")
    layouts = data_layouts(paths, observations, episode_length)
    catalogue = [(li, name, int(length)) for li, lay in enumerate(layouts)
                 for name, length in zip(lay.names, lay.lengths)]
    returns_all = np.concatenate([lay.returns for lay in layouts])
    ids = np.arange(len(catalogue)) if traj_ids is None else _check_ids(traj_ids, len(catalogue))
    chosen = [catalogue[i] for i in ids]
    used = sorted({li for li, _, _ in chosen})
    without = [layouts[li] for li in used if mask_key is not None and not layouts[li].has(mask_key)]
    lacking = [str(lay.path) for lay in without]
    others = [k for k in MASK_KEYS if without and without[0].has(k)]  # what the first one has instead
    load_masks = mask_key is not None and not lacking
    load_rewards = all(layouts[li].has("rewards") for li in used)

    lengths = np.asarray([length for _, _, length in chosen], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    n, (h, w) = int(lengths.sum()), layouts[0].img_hw
    per_frame = h * w * (3 + load_masks) + 4 * (layouts[0].action_dim + layouts[0].state_dim + load_rewards)
    # MaskLAM's parquet data: the reader holds the encoded columns of every shard it reads (at most their size)
    staged = sum(f.stat().st_size for li in used for f in getattr(layouts[li], "shards", None) or [])
    check_memory(n * per_frame + staged, f"loading {n} frames of {', '.join(str(lay.path) for lay in layouts[:2])}"
                                f"{' ...' if len(layouts) > 2 else ''} whole")
    arrays: dict[str, np.ndarray] = {
        "obs": np.empty((n, h, w, 3), np.uint8),
        "actions": np.empty((n, layouts[0].action_dim), np.float32),
        "states": np.empty((n, layouts[0].state_dim), np.float32),
    }
    if load_rewards:
        arrays["rewards"] = np.empty((n,), np.float32)
    if load_masks:
        arrays[mask_key] = np.empty((n, h, w), bool)

    stored = [key for key, value in arrays.items() if value.ndim < 2 or value.shape[1]]  # no (N, 0) labels
    bar = tqdm(total=n, unit="frame", desc="loading", disable=not progress or n < 10_000, leave=False)
    for li in used:
        with _open(layouts[li], stored) as f:
            for row, (fi, name, length) in zip(starts, chosen):
                if fi == li:
                    _read_group(layouts[li], f, name, {k: arrays[k] for k in stored}, int(row), length)
                    bar.update(length)
            if isinstance(f, ParquetReader):
                f.check_masks()
    bar.close()

    meta = dict(layouts[0].attrs)
    meta["files"] = [str(lay.path) for lay in layouts]
    for key in ("resize", "camera"):  # how the files' frames were made, where they agree
        if len({str(lay.attrs.get(key)) for lay in layouts}) > 1:
            meta.pop(key, None)
    rates = {lay.attrs.get("fps") for lay in layouts}
    if len(rates) > 1:  # files at different frame rates: the data have none
        meta.pop("fps", None)
        shown = ", ".join(f"{float(r):g} fps" if r else "none" for r in sorted(rates, key=lambda r: float(r or 0)))
        note_once(("mixed-rates", *meta["files"]), f"the data are at different frame rates ({shown}): one latent "
                  "spans another motion in each, and nothing downstream can check video against one rate; "
                  "`masklam import --fps` resamples them to one")
    return TrajectoryData(
        obs=arrays["obs"], actions=arrays["actions"], states=arrays["states"], rewards=arrays.get("rewards"),
        masks=arrays.get(mask_key) if load_masks else None, traj_starts=starts, traj_lengths=lengths,
        traj_returns=returns_all[ids], sources=[(str(layouts[li].path), name) for li, name, _ in chosen],
        meta=meta, mask_key=mask_key, files_without_masks=lacking, other_mask_keys=others)


def _check_ids(traj_ids: Sequence[int], total: int) -> np.ndarray:
    ids = np.asarray(traj_ids, np.int64).reshape(-1)
    if ids.size == 0:
        raise MasklamError("traj_ids is empty")
    if ids.min() < 0 or ids.max() >= total:
        raise MasklamError(f"traj_ids must lie in 0..{total - 1}, got {int(ids.min())}..{int(ids.max())}")
    if len(np.unique(ids)) != len(ids):
        raise MasklamError("traj_ids has duplicates")
    return ids


FINITE_KEYS = ("actions", "states", "rewards")
"""Float arrays checked on loading: a NaN or inf there would surface only as a NaN loss during training
(frames and masks are uint8 / bool, so they cannot hold one)."""


def _read_group(layout: FileLayout, f: h5py.File | ParquetReader, name: str, arrays: dict[str, np.ndarray],
                row: int, length: int) -> None:
    path, group = layout.path, f[name]
    for key, out in arrays.items():
        try:
            if isinstance(f, ParquetReader):
                out[row:row + length] = group[key]  # decoded and checked by the reader
            else:
                group[key].read_direct(out, dest_sel=np.s_[row:row + length])
        except READ_ERRORS as e:
            raise read_error(path, name, key, e) from None
        if key in FINITE_KEYS:
            _check_finite(path, name, key, out[row:row + length])
        if key == "actions" and not isinstance(f, ParquetReader):  # the parquet reader clips on decoding
            out[row:row + length] = executed_actions(path, name, out[row:row + length], layout.action_bounds)


def _check_finite(path: Path, name: str, key: str, values: np.ndarray) -> None:
    """A one-line MasklamError naming the file, trajectory, key and first frame holding a NaN or inf."""
    finite = np.isfinite(values)
    if not finite.all():
        frame = int(np.argwhere(~finite)[0][0])
        bad = values.reshape(len(values), -1)[frame][~finite.reshape(len(values), -1)[frame]][0]
        raise MasklamError(f"{path}: trajectory {name}: {key} holds {bad} at frame {frame} (NaN or inf); "
                           "fix or drop that trajectory")


def split_trajectories(n: int, heldout: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split trajectory ids ``0..n-1`` into (train, held-out), both sorted; at least one of each when heldout > 0."""
    if n < 1:
        raise MasklamError(f"need at least one trajectory to split, got {n}")
    if not 0.0 <= heldout < 1.0:
        raise MasklamError(f"heldout must be a fraction in [0, 1), got {heldout}")
    n_held = 0 if heldout == 0 else min(n - 1, max(1, round(heldout * n)))
    if heldout > 0 and n_held == 0:
        raise MasklamError(f"cannot hold out trajectories from a dataset of {n}: the held-out probe and "
                           "reconstructions need a trajectory training does not see (one long video: `masklam import "
                           "--chunk-seconds S` cuts it into episodes)")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_held:]).astype(np.int64), np.sort(perm[:n_held]).astype(np.int64)


def labeled_subset(train_ids: Sequence[int], n: int, seed: int = 0) -> np.ndarray:
    """The ``n`` labeled trajectories: the first n of one seeded permutation of ``train_ids`` (so nested in n)."""
    train_ids = np.asarray(train_ids, np.int64)
    if not 1 <= n <= len(train_ids):
        raise MasklamError(f"--labels (labeled trajectories) must be in 1..{len(train_ids)} (the training "
                           f"trajectories), got {n}")
    perm = np.random.default_rng(seed).permutation(len(train_ids))
    return np.sort(train_ids[perm[:n]])


class WindowSampler:
    """Batches of frame-stacked windows ``(o_t, o_{t+1}, o_{t+k})`` from chosen trajectories.

    A start ``t`` is valid when ``t + max_offset <= T - 1`` inside its trajectory; frame stacks ending at a
    frame ``f`` hold ``f-F+1 .. f``, repeating the trajectory's first frame before its start.
    """

    def __init__(self, data: TrajectoryData, traj_ids: Sequence[int] | None = None, frame_stack: int = 1,
                 max_offset: int = 1, need_masks: bool = False) -> None:
        if frame_stack < 1:
            raise MasklamError(f"frame_stack must be >= 1, got {frame_stack}")
        if max_offset < 1:
            raise MasklamError(f"max_offset must be >= 1, got {max_offset}")
        self.data = data
        self.traj_ids = (np.arange(data.num_trajectories, dtype=np.int64) if traj_ids is None
                         else _check_ids(traj_ids, data.num_trajectories))
        self.frame_stack = frame_stack
        self.max_offset = max_offset
        self.masks = data.require_masks() if need_masks else None
        self._starts, self._first = self._valid(max_offset)
        if len(self._starts) == 0:
            longest = int(data.traj_lengths[self.traj_ids].max())
            raise MasklamError(f"no windows: max_offset {max_offset} needs trajectories longer than {max_offset} "
                               f"frames, the longest has {longest}")

    @property
    def num_windows(self) -> int:
        """How many valid window starts there are."""
        return len(self._starts)

    def _valid(self, offset: int) -> tuple[np.ndarray, np.ndarray]:
        """Flat rows t with t + offset inside their trajectory, and the first row of that trajectory."""
        starts = self.data.traj_starts[self.traj_ids]
        counts = np.maximum(self.data.traj_lengths[self.traj_ids] - offset, 0)  # starts per trajectory
        first = np.repeat(starts, counts)  # (W,)
        within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        return first + within, first

    def _rows(self, end: np.ndarray, first: np.ndarray) -> np.ndarray:
        """(B,) flat frame rows -> (B, F) rows of the stacks ending there, clamped at trajectory starts."""
        rows = end[:, None] + np.arange(1 - self.frame_stack, 1)[None, :]  # (B, F)
        return np.maximum(rows, first[:, None])

    def _stack(self, end: np.ndarray, first: np.ndarray) -> np.ndarray:
        """(B,) flat frame rows -> (B, F, H, W, 3) uint8 stacks ending there."""
        return self.data.obs[self._rows(end, first)]

    def _gather(self, t: np.ndarray, first: np.ndarray, k: np.ndarray) -> dict[str, np.ndarray]:
        batch = {
            "obs_t": self._stack(t, first),
            "obs_t1": self._stack(t + 1, first),
            "obs_tk": self._stack(t + k, first),
            "k": k,
            "index": t,  # (B,) flat frame rows, for relabelling
        }
        if self.data.action_dim:  # data without actions or states (imported video) have no such keys
            batch["action_t"] = self.data.actions[t]  # (B, A)
        if self.data.state_dim:
            batch["state_t"] = self.data.states[t]  # (B, S)
        if self.masks is not None:  # the agent masks of every frame of each stack: (B, F, H, W) bool
            batch["mask_t"] = self.masks[self._rows(t, first)]
            batch["mask_t1"] = self.masks[self._rows(t + 1, first)]
            batch["mask_tk"] = self.masks[self._rows(t + k, first)]
        return batch

    def sample(self, batch_size: int, rng: np.random.Generator, pick: np.ndarray | None = None
               ) -> dict[str, np.ndarray]:
        """A batch of windows drawn uniformly over valid starts (or the windows `pick`, (B,) indices into
        ``0..num_windows-1``), ``k`` uniform in ``1..max_offset``."""
        if pick is None:
            pick = rng.integers(0, len(self._starts), size=batch_size)
        elif len(pick) != batch_size or len(pick) and not 0 <= pick.min() <= pick.max() < len(self._starts):
            raise MasklamError(f"pick needs {batch_size} window indices in 0..{len(self._starts) - 1}")
        k = rng.integers(1, self.max_offset + 1, size=batch_size, dtype=np.int64)
        return self._gather(self._starts[pick], self._first[pick], k)

    def all_windows(self, batch_size: int, k: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Every start ``t`` with ``t + k`` inside its trajectory, once, in order, in batches."""
        if k < 1:
            raise MasklamError(f"k must be >= 1, got {k}")
        starts, first = self._valid(k)
        for lo in range(0, len(starts), batch_size):
            t, f = starts[lo:lo + batch_size], first[lo:lo + batch_size]
            yield self._gather(t, f, np.full(len(t), k, np.int64))
