"""The papers' own public data, read as our trajectories: MaskLAM's parquet datasets (and LAOM's HDF5 files).

LAOM's HDF5 files are our layout's subset (groups "0", "1", ... with ``obs``, ``states``, ``actions``; no
rewards, no masks) and are read by our HDF5 readers, their actions clipped to [-1, 1]
(:func:`masklam.data.hdf5.executed_actions`). This module reads
MaskLAM's Hugging Face datasets: parquet files (one shard, or a directory of shards such as
``<task>/train-00000-of-00004.parquet`` read in name order as one table), one row per frame, with columns

- ``observation`` (distractor-free) and ``observation_distracted`` (the same step with distractors): images,
  stored as Hugging Face ``Image`` structs ``{bytes: PNG/JPEG, path}`` (or raw bytes, or nested lists);
- ``mask`` (the simulator's agent mask, an ``L`` image 0/255) and, where present, SAM's masks ``pred_mask``
  (on the clean frames) / ``pred_mask_distracted`` (on the distracted frames);
- ``state``, ``action`` (lists of float32; the action is the policy's output before the environment clipped it,
  read clipped to [-1, 1] as the authors' loader reads it), ``reward``, ``terminated``, ``truncated``.

Shards are grouped by their ``<split>-NNNNN-of-NNNNN.parquet`` prefix: a directory holding one split's shards
is that split; one holding several (``train-*`` and ``test-*``) is a one-line error, and ``DIR/train`` (or
``DIR/train-*``, quoted) selects the ``train-*`` shards of DIR.

Episodes end at a row whose ``terminated`` or ``truncated`` is true (HF shards are cut by size, so an episode may
straddle two shards: give the directory); rows after the last such flag form a last, unfinished trajectory.
DMC episodes end on the time limit, which may set neither flag (DCS data may have only ``terminated``): then
``episode_length`` (DCS: 1000 steps) cuts the rows every that many rows, as well as at any flag. A table of
more than MAX_EPISODE rows with no flag set and no ``episode_length`` is a one-line error (it would silently
be one trajectory).

Row t holds o_t and the action a_t taken at o_t (with its reward r_t and the state s_t of o_t): the alignment of
our HDF5 layout, assumed, not checkable from the data.
Each episode becomes one of our trajectories, named "0", "1", ... in row order, with our dataset names:
``obs`` (the distracted frames by default, `observations="clean"` for the clean ones), ``states``, ``actions``,
``rewards``, ``masks`` (from ``mask``) and ``sam2_masks`` (SAM's masks of the chosen frames), so
``load_dataset(..., mask_key="masks" | "sam2_masks")`` selects simulator or SAM masks.

pyarrow reads them (a dependency of masklam); without it a parquet file is a one-line error.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from masklam.data.hdf5 import PEER_ACTION_BOUNDS, FileLayout, executed_actions
from masklam.errors import MasklamError

PARQUET_MAGIC = b"PAR1"
OBSERVATIONS = ("distracted", "clean")
OBS_COLUMNS = {"distracted": "observation_distracted", "clean": "observation"}
SAM_COLUMNS = {"distracted": "pred_mask_distracted", "clean": "pred_mask"}
"""SAM's masks of each kind of frame (MaskLAM's `pred_mask*` columns)"""
VECTOR_COLUMNS = {"states": "state", "actions": "action"}
INSTALL = "pip install 'pyarrow>=14' (a dependency of masklam: in a checkout, bash install.sh installs it)"
MAX_EPISODE = 1000
"""the longest plausible episode (DMC: 1000 steps, Meta-World: 500); a longer table needs an end flag or
`episode_length`"""
SHARD = re.compile(r"^(?P<split>.+)-(?P<index>\d+)-of-(?P<count>\d+)\.parquet$")
"""a Hugging Face shard name, `<split>-00000-of-00004.parquet`"""


def _selected(path: Path) -> list[Path]:
    """The shards `DIR/<split>` (or `DIR/<split>-*`) selects: DIR's `<split>-NNNNN-of-NNNNN.parquet` files."""
    split = path.name[:-2] if path.name.endswith("-*") else path.name
    if not path.parent.is_dir() or path.exists():
        return []
    return sorted(p for p in path.parent.glob("*.parquet") if (m := SHARD.match(p.name)) and m["split"] == split)


def is_parquet(path: str | os.PathLike) -> bool:
    """True for a parquet file (by its magic bytes, whatever its name), a directory of ``*.parquet`` shards, or
    one split's shards of a directory (``DIR/train``)."""
    path = Path(path)
    if path.is_dir():
        return any(path.glob("*.parquet"))
    if not path.exists():
        return bool(_selected(path))
    try:
        with open(path, "rb") as f:
            return f.read(4) == PARQUET_MAGIC
    except OSError:
        return False


def _pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MasklamError(f"reading MaskLAM's parquet data needs pyarrow: {INSTALL}") from None
    return pq


def parquet_shards(path: str | os.PathLike) -> list[Path]:
    """The shards of a parquet source, in name order: a file; a directory's shards (a one-line error when they
    are Hugging Face shards of several splits; other names are read as they are); or `DIR/<split>`, that
    split's shards of DIR. [] when there are none."""
    path = Path(path)
    if not path.is_dir():
        return _complete([path] if path.exists() else _selected(path), path)
    shards = sorted(path.glob("*.parquet"))
    splits = sorted({m["split"] for p in shards if (m := SHARD.match(p.name))})
    if len(splits) > 1:
        raise MasklamError(f"{path} holds the shards of several splits ({', '.join(splits)}); give one, "
                           f"e.g. {path / splits[0]}")
    return _complete(shards, path)


def _complete(shards: list[Path], where: Path) -> list[Path]:
    """`shards`, or one line when they are `-NNNNN-of-MMMMM` shards and some of the M are missing (an interrupted
    download: episodes would be glued across the gap)."""
    numbered = [m for p in shards if (m := SHARD.match(p.name))]
    if not numbered:
        return shards
    counts = {int(m["count"]) for m in numbered}
    have = {int(m["index"]) for m in numbered}
    missing = sorted(set(range(max(counts))) - have)
    if len(counts) > 1 or missing:
        raise MasklamError(f"{where}: shards missing ({', '.join(str(i) for i in missing[:5]) or 'of several counts'}"
                           f" of {max(counts)}); a shard's episodes may continue in the next: download them all")
    return shards


@dataclass
class ParquetLayout(FileLayout):
    """A FileLayout of MaskLAM parquet data, plus where each trajectory's rows lie and which columns hold what."""

    shards: list[Path] = field(default_factory=list)
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """(n,) first row of each trajectory in the shards' concatenated rows"""
    columns: dict[str, str] = field(default_factory=dict)
    """our dataset name -> parquet column"""


def _read_columns(path: Path, shards: list[Path], columns: list[str]) -> Any:
    """The shards' columns, concatenated, as one pyarrow Table (MasklamError for an unreadable file)."""
    pq = _pyarrow()
    import pyarrow as pa

    tables = []
    for shard in shards:
        try:
            tables.append(pq.read_table(shard, columns=columns))
        except (OSError, pa.ArrowException) as e:
            raise MasklamError(f"{shard} is not a readable parquet file ({str(e).splitlines()[0]})") from None
    try:
        return pa.concat_tables(tables)
    except pa.ArrowException as e:
        raise MasklamError(f"{path}: its shards' columns differ ({str(e).splitlines()[0]})") from None


def _is_list(t: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _numeric(t: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _check_types(path: Path, schema: Any, columns: list[str]) -> None:
    """Each used column's type, checked up front: odd data as one line, never an Arrow traceback later."""
    import pyarrow as pa

    for col in columns:
        t = schema.field(col).type
        if col in ("terminated", "truncated"):
            ok, want = pa.types.is_boolean(t) or pa.types.is_integer(t), "bool or integer flags"
        elif col == "reward":
            ok, want = pa.types.is_integer(t) or pa.types.is_floating(t), "numbers"
        elif col in VECTOR_COLUMNS.values():
            ok, want = (_is_list(t) and _numeric(t.value_type)) or _numeric(t), "lists of numbers"
        else:  # images: HF Image structs {bytes, path}, raw bytes, or nested lists of numbers
            if _is_list(t):
                while _is_list(t):
                    t = t.value_type
                ok = _numeric(t)
            else:
                t = t.field("bytes").type if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 else t
                ok = pa.types.is_binary(t) or pa.types.is_large_binary(t)
            want = "images (Image structs with bytes, bytes, or nested lists of numbers)"
        if not ok:
            raise MasklamError(f"{path}: column {col!r} must hold {want}, not {schema.field(col).type}")


def _episode_bounds(path: Path, done: np.ndarray, episode_length: int | None) -> np.ndarray:
    """Row bounds of the episodes: after each flagged row, and every `episode_length` rows within a run."""
    n = len(done)
    last = np.flatnonzero(done)
    if episode_length is None and not len(last) and n > MAX_EPISODE:
        raise MasklamError(f"{path}: no row sets 'terminated' or 'truncated' in {n} rows, so no episode ends; give "
                           f"episode_length (DCS: 1000; masklam pretrain --episode-length 1000)")
    bounds = np.concatenate([[0], last + 1, [n] if (not len(last) or last[-1] != n - 1) else []]).astype(np.int64)
    if episode_length is not None:
        if episode_length < 1:
            raise MasklamError(f"episode_length must be >= 1, got {episode_length}")
        bounds = np.unique(np.concatenate([np.arange(a, b, episode_length) for a, b in zip(bounds[:-1], bounds[1:])]
                                          + [[n]])).astype(np.int64)
    return bounds


def parquet_layout(path: str | os.PathLike, observations: str = "distracted",
                   episode_length: int | None = None) -> ParquetLayout:
    """Read the schema and the small columns of MaskLAM parquet data; check them; split the rows into episodes
    (at the end flags, and every `episode_length` rows when given)."""
    if observations not in OBSERVATIONS:
        raise MasklamError(f"unknown observations {observations!r}; one of {', '.join(OBSERVATIONS)}")
    pq = _pyarrow()
    path = Path(path)
    shards = parquet_shards(path)
    if not shards:
        raise MasklamError(f"no such file: {path}")
    try:
        schema = pq.read_schema(shards[0])
    except Exception as e:  # pyarrow raises several types for a garbage file
        raise MasklamError(f"{shards[0]} is not a readable parquet file ({str(e).splitlines()[0]})") from None
    names = set(schema.names)
    obs_col = OBS_COLUMNS[observations]
    if obs_col not in names:
        other = OBS_COLUMNS["clean" if observations == "distracted" else "distracted"]
        hint = f" (it has {other!r}: observations={'clean' if observations == 'distracted' else 'distracted'})" \
            if other in names else ""
        raise MasklamError(f"{path} has no {obs_col!r} column, so no {observations} observations{hint}; "
                           f"columns: {', '.join(sorted(names))}")
    missing = [c for c in VECTOR_COLUMNS.values() if c not in names]
    if missing:
        raise MasklamError(f"{path} lacks the column {missing[0]!r} (MaskLAM's data has observation, "
                           f"observation_distracted, mask, state, action, reward, terminated, truncated)")
    ends = [c for c in ("terminated", "truncated") if c in names]
    if not ends and episode_length is None:
        raise MasklamError(f"{path} has neither a 'terminated' nor a 'truncated' column to split it into episodes; "
                           "give episode_length (DCS: 1000)")
    small = ends + list(VECTOR_COLUMNS.values()) + (["reward"] if "reward" in names else [])
    _check_types(path, schema, small + [c for c in [obs_col, "mask", SAM_COLUMNS[observations]] if c in names])
    table = _read_columns(path, shards, small)
    n = table.num_rows
    if n < 1:
        raise MasklamError(f"{path} holds no rows")
    done = np.zeros(n, bool)
    for c in ends:
        done |= np.asarray(table.column(c).fill_null(False).to_numpy(zero_copy_only=False), bool)
    bounds = _episode_bounds(path, done, episode_length)
    starts, lengths = bounds[:-1], np.diff(bounds)
    dims = {key: _vector(path, table, col, 0, n).shape[1] for key, col in VECTOR_COLUMNS.items()}
    columns = {"obs": obs_col, **VECTOR_COLUMNS}
    if "reward" in names:
        columns["rewards"] = "reward"
    if "mask" in names:
        columns["masks"] = "mask"
    if SAM_COLUMNS[observations] in names:
        columns["sam2_masks"] = SAM_COLUMNS[observations]
    returns = np.full(len(starts), np.nan)
    if "reward" in names:
        r = np.asarray(table.column("reward").to_numpy(zero_copy_only=False), np.float64)
        returns = np.add.reduceat(r, starts) if len(r) else returns
    batches = (b for shard in shards for b in pq.ParquetFile(shard).iter_batches(batch_size=1, columns=[obs_col]))
    first = _images(path, next(b for b in batches if b.num_rows).column(0).slice(0, 1), obs_col, "0")  # frame 0
    h, w = first.shape[1:3]
    attrs = {"format": "masklam-parquet", "observations": observations, "img_hw": int(h), "columns": sorted(names)}
    return ParquetLayout(path, attrs, [str(i) for i in range(len(starts))], lengths.astype(np.int64), returns,
                         (int(h), int(w)), dims["states"], dims["actions"], sorted(columns), [], PEER_ACTION_BOUNDS,
                         shards=shards, starts=starts.astype(np.int64), columns=columns)


def _vector(path: Path, table: Any, col: str, start: int, length: int, name: str = "") -> np.ndarray:
    """Rows start..start+length of a list<float> column as a (T, D) float32 array (one D for every row)."""
    import pyarrow as pa

    arr = table.column(col).slice(start, length).combine_chunks()
    where = f"{path}: trajectory {name}: " if name else f"{path}: "
    if not _is_list(arr.type):
        return np.asarray(arr.to_numpy(zero_copy_only=False), np.float32).reshape(length, 1)
    if arr.null_count:
        raise MasklamError(f"{where}{col} has empty (null) rows")
    sizes = np.asarray(pa.compute.list_value_length(arr).to_numpy(zero_copy_only=False))
    if len(sizes) and (sizes != sizes[0]).any():
        row = int(np.flatnonzero(sizes != sizes[0])[0])
        raise MasklamError(f"{where}{col} has {sizes[row]} values at row {row}, {sizes[0]} at row 0")
    if len(sizes) and sizes[0] < 1:
        raise MasklamError(f"{where}{col} is empty")
    values = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), np.float32)
    return values.reshape(length, int(sizes[0]) if len(sizes) else 0)


def _images(path: Path, column: Any, col: str, name: str, mask: bool = False) -> np.ndarray:
    """A column slice of images -> (T, H, W, 3) uint8, or (T, H, W) bool for masks."""
    import pyarrow as pa

    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    where = f"{path}: trajectory {name}: {col}"
    if arr.null_count:
        raise MasklamError(f"{where} has empty (null) images")
    if _is_list(arr.type):
        out = _nested(arr, where, mask)
    else:
        if pa.types.is_struct(arr.type):
            arr = arr.field("bytes")
        frames = [_decode(b, where, t, mask) for t, b in enumerate(arr.to_pylist())]
        for t, frame in enumerate(frames):
            if frame.shape[:2] != frames[0].shape[:2]:
                raise MasklamError(f"{where} has a {frame.shape[0]}x{frame.shape[1]} image at frame {t}, "
                                   f"{frames[0].shape[0]}x{frames[0].shape[1]} at frame 0")
        out = np.stack(frames)
    if mask:
        if out.ndim == 4:
            out = out.any(axis=-1)
        if out.ndim != 3:
            raise MasklamError(f"{where} must hold (H, W) masks, got shape {out.shape[1:]}")
        return out.astype(bool)
    if out.ndim != 4 or out.shape[-1] != 3:
        raise MasklamError(f"{where} must hold (H, W, 3) images, got shape {out.shape[1:]}")
    return out.astype(np.uint8)


MASK_MODES = ("1", "L", "P", "I", "I;16")
"""mask image modes read as they are (nonzero = agent: 0/255 'L', palette indices 'P', 0/1 '1' or 'I')"""


def _decode(data: Any, where: str, t: int, mask: bool) -> np.ndarray:
    """An image's bytes -> (H, W, 3) uint8, or for a mask (H, W) bool (agent: nonzero; RGB(A): gray > 127)."""
    from PIL import Image

    if not isinstance(data, (bytes, bytearray)):
        raise MasklamError(f"{where}: frame {t} holds no image bytes ({type(data).__name__})")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if not mask:
                return np.asarray(im.convert("RGB"), np.uint8)
            if im.mode in MASK_MODES:
                return np.asarray(im) != 0
            return np.asarray(im.convert("L")) > 127
    except OSError as e:
        raise MasklamError(f"{where}: frame {t} is not a readable image ({e})") from None


def _nested(arr: Any, where: str, mask: bool = False) -> np.ndarray:
    """Nested lists (HF Array2D/3D or Sequence) -> one array, MasklamError when the rows' shapes differ; masks
    -> bool (agent: nonzero integers, floats > 0.5)."""
    import pyarrow as pa

    n, dims = len(arr), []
    while _is_list(arr.type):
        sizes = np.asarray(pa.compute.list_value_length(arr).to_numpy(zero_copy_only=False))
        if len(sizes) and (sizes != sizes[0]).any():
            raise MasklamError(f"{where} holds images of different shapes")
        dims.append(int(sizes[0]) if len(sizes) else 0)
        arr = arr.flatten()
    values = np.asarray(arr.to_numpy(zero_copy_only=False))
    if mask:
        return (values > 0.5 if values.dtype.kind == "f" else values != 0).reshape(n, *dims)
    if values.dtype.kind == "f" and values.size and values.max() <= 1.0:
        values = values * 255.0  # images in [0, 1]
    return np.clip(values, 0, 255).astype(np.uint8).reshape(n, *dims)


class ParquetReader:
    """`reader[name][key]` -> trajectory `name`'s array `key` (our names), decoded on access; a context manager
    like an open HDF5 file, so `load_dataset` reads both the same way."""

    def __init__(self, layout: ParquetLayout, keys: list[str]) -> None:
        self.layout = layout
        self.keys = keys
        self.table = _read_columns(layout.path, layout.shards, sorted({layout.columns[k] for k in keys}))
        self.agent_seen: dict[str, bool] = {}
        """mask key -> whether any frame read so far has an agent pixel"""

    def check_masks(self) -> None:
        """A mask column read with no agent pixel anywhere (e.g. an unreadable mask format) as one line."""
        empty = [k for k, seen in self.agent_seen.items() if not seen]
        if empty:
            raise MasklamError(f"{self.layout.path}: its {self.layout.columns[empty[0]]!r} masks are empty (no agent "
                               "pixel in any frame read); check the mask images")

    def __enter__(self) -> "ParquetReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.table = None

    def __getitem__(self, name: str) -> "_Trajectory":
        return _Trajectory(self, int(name))


@dataclass
class _Trajectory:
    reader: ParquetReader
    index: int

    def __getitem__(self, key: str) -> np.ndarray:
        lay = self.reader.layout
        start, length, col = int(lay.starts[self.index]), int(lay.lengths[self.index]), lay.columns[key]
        name = str(self.index)
        if key in VECTOR_COLUMNS:  # one width for the whole table: checked by parquet_layout
            values = _vector(lay.path, self.reader.table, col, start, length, name)
            return executed_actions(lay.path, name, values, lay.action_bounds) if key == "actions" else values
        if key == "rewards":
            return np.asarray(self.reader.table.column(col).slice(start, length).to_numpy(zero_copy_only=False),
                              np.float32)
        out = _images(lay.path, self.reader.table.column(col).slice(start, length), col, name, mask=key != "obs")
        if out.shape[1:3] != lay.img_hw:
            raise MasklamError(f"{lay.path}: trajectory {name}: {col} has {out.shape[1]}x{out.shape[2]} images, "
                               f"the first frame {lay.img_hw[0]}x{lay.img_hw[1]}")
        if key != "obs":
            self.reader.agent_seen[key] = self.reader.agent_seen.get(key, False) or bool(out.any())
        return out

