"""`masklam import SRC --out DATA.h5`: any data `masklam.data.sources` reads -> one HDF5 dataset file.

SRC is a video file or a folder of them (one episode per file, or ``--chunk-seconds`` long ones), a folder
of image folders, a LeRobot dataset (v3.0 or v2.x; ``--camera``), MaskLAM's parquet data or an HDF5 file.
Frames become ``--img-size`` squares by centre crop (default) or letterbox, recorded in the file's attrs
(``resize``); ``--fps`` resamples to a lower frame rate (a frame is kept when its time reaches the next
tick of the new rate; actions, states, rewards and masks follow the kept frames), the rate being recorded
(``fps``: the frame interval a latent action spans). Actions, states, rewards, agent masks and task strings
come along where the source has them; without actions the file still trains LAPO and MaskLAM (no probe).
Each trajectory records where it came from: attrs ``source_item``, ``source_file``, and per frame ``source_rows``
(the frame's index in its source item, so a latent action maps back to the source video after ``--fps`` and
``--chunk-seconds``); a dataset `masklam export` wrote from such a file gives back the first source too, as attrs
``origin_item``, ``origin_file`` and per frame ``origin_rows``.

Memory stays flat in the input's length: frames stream from the decoder into chunked HDF5 datasets.
Resumable like `masklam collect` (`masklam.data.parts`): each source item (file, folder, episode) is one
atomic part file in ``OUT.parts``; a re-run with the same arguments keeps them; ``OUT`` appears only complete.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Literal

import h5py
import numpy as np
import tyro
from tqdm.auto import tqdm

from masklam.args import parse
from masklam.data.hdf5 import FORMAT_VERSION, check_attrs, read_layout, write_atomically
from masklam.data.hub import fetch_dataset, is_hub_dataset
from masklam.data.parts import merge_parts, part_path, prepare_parts, remove_parts
from masklam.locks import check_free, output_lock
from masklam.resources import check_free_space
from masklam.data.sources import Episode, Item, Source, open_source
from masklam.data.video import RESIZE_MODES, Resizer, same_rate
from masklam.errors import MasklamError, note_once

WRITE_CHUNK = 256
"""frames buffered before they are appended to the HDF5 dataset"""


@dataclass
class ImportConfig:
    """Import video files, image folders or a LeRobot dataset (also MaskLAM's parquet, HDF5) as a masklam HDF5
    dataset: square frames, plus actions, states, rewards, masks and task strings where the source has them."""

    src: tyro.conf.Positional[Path]
    """A video file or a folder of them (mp4, m4v, webm, mkv, avi, mov, gif, mpg, mts, ...), a folder of image folders
    (DIR/<episode>/*.jpg|png), a LeRobot dataset directory (v3.0 or v2.x) or its Hugging Face Hub repo id
    ("user/name": fetched into the Hugging Face cache, one camera's videos), MaskLAM parquet data or an HDF5 file."""
    out: Path
    """Output HDF5 file (.h5); re-running the same command resumes an interrupted import."""
    img_size: int = 64
    """Frame height and width in pixels (a multiple of 8: the LAMs' encoders halve it three times)."""
    resize: Literal["crop", "letterbox"] = "crop"
    """crop: centre crop to a square (the long side's ends are cut); letterbox: the whole frame, black bars on the
    short side."""
    fps: float | None = None
    """Resample to this frame rate (at most the source's); image folders: the rate they were recorded at. Default:
    the source's rate (image folders: unknown, recorded as 0)."""
    chunk_seconds: float | None = None
    """Cut every source episode into episodes of this many seconds (the last, shorter one kept if >= 2 frames)."""
    recursive: bool = False
    """A folder: read the videos (or image folders) in its subfolders too, at any depth, one episode each, named by
    their path under it (kitchen/clip3)."""
    camera: str | None = None
    """LeRobot dataset: the camera (video or image feature) to import; default: its only one."""
    revision: str | None = None
    """Hub dataset (SRC a repo id): the branch, tag or commit to fetch; default: main."""
    compression: Literal["lzf", "gzip", "none"] = "lzf"
    """Compression of frames and masks (chunked per frame)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.out.suffix != ".h5":
            raise MasklamError(f"--out must end in .h5, got {self.out}")
        if self.img_size < 8 or self.img_size % 8:  # the LAMs' encoders halve it three times
            raise MasklamError(f"--img-size must be a multiple of 8 (>= 8), got {self.img_size}")
        if self.resize not in RESIZE_MODES:
            raise MasklamError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.fps is not None and not self.fps > 0:
            raise MasklamError(f"--fps must be > 0, got {self.fps}")
        if self.chunk_seconds is not None and not self.chunk_seconds > 0:
            raise MasklamError(f"--chunk-seconds must be > 0, got {self.chunk_seconds}")


@dataclass
class ImportResult:
    """What one `import` call did."""

    path: Path
    trajectories: int
    frames: int
    imported: int
    """source items read by this call"""
    reused: int
    """source items kept from an interrupted run"""


def file_attrs(cfg: ImportConfig, source: Source) -> dict[str, Any]:
    """The attrs an imported file carries (and a resumed import must match)."""
    fps = _out_fps(cfg, source)
    return {  # the source's own attrs first: what this import did wins over what an earlier one recorded
        **source.attrs(), "source": str(cfg.src.expanduser().resolve()), "source_format": source.kind,
        "img_hw": cfg.img_size, "resize": cfg.resize, "fps": fps,
        "source_fps": float(source.fps or 0.0) if len(source.rates()) <= 1 else 0.0,  # several (within 1%): none
        "chunk_seconds": float(cfg.chunk_seconds or 0.0), "version": FORMAT_VERSION,
        **({"actions_clipped_to": list(bounds)} if (bounds := getattr(source.layout, "action_bounds", None)) else {}),
        **({"recursive": True} if cfg.recursive else {}),
    }


def _out_fps(cfg: ImportConfig, source: Source) -> float:
    """The imported file's frame rate: --fps, else the source's (0: unknown); one line when it cannot be had."""
    rates = source.rates()
    if len(rates) > 1 and not same_rate(min(rates), max(rates)) and cfg.fps is None:
        raise MasklamError(f"{cfg.src}: videos of different frame rates ({', '.join(f'{r:g}' for r in rates)} fps); "
                           "give --fps to resample them all to one")
    if rates and cfg.fps is not None and cfg.fps > min(rates) and not same_rate(cfg.fps, min(rates)):
        raise MasklamError(f"--fps {cfg.fps:g} is above {cfg.src}'s {min(rates):g} fps; only lower rates are kept "
                           "(frames are dropped, never invented)")
    fps = float(cfg.fps or source.fps or 0.0)
    if cfg.chunk_seconds and not fps:
        raise MasklamError(f"--chunk-seconds needs a frame rate and {cfg.src} records none (image folders): give "
                           "--fps, the rate the frames were recorded at")
    return fps


def _kept(fps: float, src_fps: float | None) -> float:
    """The fraction of a source's frames a rate of ``fps`` keeps (for the progress bar's total)."""
    return min(1.0, fps / src_fps) if src_fps and fps else 1.0


def keeps_all(src_fps: float | None, fps: float) -> bool:
    """Whether a rate of ``fps`` keeps every frame of a source at ``src_fps``: no rate known, not lower, or within
    1% of it (29.97 from 30 fps: the time rule would drop a frame early on for a 0.1% difference)."""
    return not src_fps or not fps or fps >= src_fps or same_rate(fps, src_fps)


def _selected(frames: Iterator[Any], src_fps: float | None, fps: float,
              times: list[float] | None = None) -> Iterator[Any]:
    """The frames a rate of ``fps`` keeps, streamed: a frame when its time (from the first frame's; ``times``,
    filled as ``frames`` yields, else i / src_fps) reaches the next tick of the new rate, floor(t * fps)."""
    if keeps_all(src_fps, fps):
        yield from frames
        return
    last = -1.0
    for i, frame in enumerate(frames):
        t = times[i] - times[0] if times is not None else i / src_fps
        tick = math.floor(t * fps + 1e-6)
        if tick != last:
            last = tick
            yield frame


class _GroupWriter:
    """One trajectory group filled frame by frame: obs grows in chunks; the per-frame arrays are written at the end."""

    def __init__(self, f: h5py.File, name: str, size: int, compression: str) -> None:
        comp = None if compression == "none" else compression
        self.group = f.create_group(name)
        self.obs = self.group.create_dataset("obs", (0, size, size, 3), np.uint8, maxshape=(None, size, size, 3),
                                             chunks=(1, size, size, 3), compression=comp, fletcher32=True)
        self.comp = comp
        self.buffer: list[np.ndarray] = []
        self.n = 0

    def add(self, frame: np.ndarray) -> None:
        self.buffer.append(frame)
        if len(self.buffer) >= WRITE_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.obs.resize(self.n + len(self.buffer), axis=0)
            self.obs[self.n:] = np.stack(self.buffer)
            self.n += len(self.buffer)
            self.buffer = []

    def finish(self, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        self.flush()
        for key, value in arrays.items():
            image = value.ndim == 3
            self.group.create_dataset(key, data=np.ascontiguousarray(value), fletcher32=True,
                                      chunks=(1,) + value.shape[1:] if image else value.shape,
                                      compression=self.comp if image else None)
        if "rewards" in arrays:
            self.group.attrs["traj_return"] = float(np.sum(arrays["rewards"], dtype=np.float64))
        self.group.attrs["length"] = self.n
        self.group.attrs.update(attrs)


def _arrays(ep: Episode, rows: np.ndarray, item: Item, stop: int) -> dict[str, np.ndarray]:
    """The episode's per-frame arrays at source rows ``rows`` (our dataset names, our dtypes). A kept frame spans
    the source rows up to the next kept one (``stop`` after the last): its reward is their sum (--fps keeps the
    return), its action and state those of its own row."""
    out: dict[str, np.ndarray] = {}
    for key, value in (("actions", ep.actions), ("states", ep.states), ("rewards", ep.rewards)):
        if value is not None:
            value = np.asarray(value, np.float32)
            if key != "rewards":
                value = value.reshape(len(value), -1)
            where = getattr(item.ref, "data_file", None) or item.path  # a LeRobot episode's rows: its parquet
            if len(value) <= rows.max():
                raise MasklamError(f"{where}: {item.name} has {len(value)} {key} rows for {rows.max() + 1} frames")
            stop = max(stop, int(rows[-1]) + 1)
            bad = ~np.isfinite(value[rows[0]:stop] if key == "rewards" else value[rows])  # rewards: all summed
            if bad.any():
                first = int(np.nonzero(bad.reshape(len(bad), -1).any(1))[0][0])
                row = int(rows[0]) + first if key == "rewards" else int(rows[first])
                raise MasklamError(f"{where}: {item.name}'s {key} hold NaN or inf (first at its row {row})")
            out[key] = np.add.reduceat(value[:stop], rows) if key == "rewards" else value[rows]
    for key, value in ep.masks.items():
        out[key] = np.asarray(value, bool)[rows]
    return out


def import_item(cfg: ImportConfig, source: Source, item: Item, index: int, fps: float, resizer: Resizer,
                signature: str, tick: Any = None) -> int:
    """Read one source item into its part file (one or more trajectory groups, by --chunk-seconds, each recording
    the item's `signature`: Source.signature); returns the number of frames written."""
    ep = source.read(item, resizer)
    span = max(2, round(cfg.chunk_seconds * fps)) if cfg.chunk_seconds and fps else None
    consumed = [0]  # source frames decoded, kept or not

    def counted(frames: Iterator[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        for row, frame in enumerate(frames):
            consumed[0] = row + 1
            yield row, frame

    groups: list[tuple[_GroupWriter, list[int]]] = []
    with write_atomically(part_path(cfg.out, index)) as f:
        for row, frame in _selected(counted(ep.frames), item.fps or source.fps, fps, ep.times):
            if not groups or (span is not None and groups[-1][0].n + len(groups[-1][0].buffer) >= span):
                groups.append((_GroupWriter(f, str(len(groups)), cfg.img_size, cfg.compression), []))
            groups[-1][0].add(frame)
            groups[-1][1].append(row)
            if tick is not None:
                tick(1)
        if ep.length is not None and consumed[0] < ep.length:
            raise MasklamError(f"{item.path}: {item.name} ends after {consumed[0]} of its {ep.length} frames (a "
                               "truncated or corrupt file)")
        if not groups:
            raise MasklamError(f"{item.path}: {item.name} holds no frames")
        if len(groups[0][1]) < 2 and source.kind in ("videos", "frames"):  # no window (o_t, o_{t+1}) to train on
            raise MasklamError(f"{item.path}: {item.name} has 1 frame{f' at {cfg.fps:g} fps' if cfg.fps else ''}; "
                               "an episode needs at least 2: remove it from the source (the import resumes)")
        _note_variable_rate(cfg, item, ep.times, keeps_all(item.fps or source.fps, fps))
        if ep.stated and consumed[0] < 0.9 * ep.stated:
            note_once(("short", str(item.path)), f"{item.path}: {consumed[0]} frames decoded, its header's duration "
                      f"suggests about {ep.stated}: if the file was cut short, its end is missing")
        if len(groups) > 1 and len(groups[-1][1]) < 2:  # a 1-frame tail makes no window
            del f[groups.pop()[0].group.name]
        for i, (writer, rows) in enumerate(groups):
            attrs = {"source_item": item.name, "source_file": str(item.path.absolute()), "source_start": int(rows[0]),
                     "source_signature": signature, "task": ep.task, "seed": index,
                     **{k: v for k, v in ep.origin.items() if k != "origin_rows"}}  # a masklam export's
            stop = groups[i + 1][1][0] if i + 1 < len(groups) else consumed[0]  # the source rows it spans
            kept = np.asarray(rows, np.int64)
            origin = {"origin_rows": ep.origin["origin_rows"][kept]} if "origin_rows" in ep.origin else {}
            writer.finish({**_arrays(ep, kept, item, stop), "source_rows": kept, **origin}, attrs)
    return sum(writer.n for writer, _ in groups)


def source_digest(items: list[Item], signatures: list[str]) -> str:
    """A digest of the source's items as they are now (names, files, and their signatures: sizes, modification
    times)."""
    listing = [(item.name, str(item.path), signature) for item, signature in zip(items, signatures)]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def _note_variable_rate(cfg: ImportConfig, item: Item, times: list[float] | None, kept_all: bool) -> None:
    """A note when a video's frame intervals vary (a phone's variable frame rate) and it is not resampled by time
    (no --fps, or one within 1% of its rate: every frame kept): its frames are then kept one per step at the
    average rate, and motion per step varies."""
    if not kept_all or not times or len(times) < 3:
        return
    gaps = np.diff(np.asarray(times))
    typical = float(np.median(gaps))
    if typical > 0 and gaps.max() > 1.5 * typical:
        note_once(("variable-rate", str(item.path), cfg.fps),
                  f"{item.path}: frame intervals vary ({1e3 * gaps.min():.0f}-"
                  f"{1e3 * gaps.max():.0f} ms, a variable frame rate); its frames are kept one per step: give --fps "
                  "more than 1% below its rate to resample it by time")


def _existing(cfg: ImportConfig, attrs: dict[str, Any], digest: str) -> bool:
    """True when OUT exists already, written with these arguments from the source as it is now (MasklamError
    when with others, or when the source changed since: an item added, removed or edited)."""
    if not cfg.out.exists():
        return False
    layout = read_layout(cfg.out)
    check_attrs(cfg.out, layout.attrs, attrs)
    if layout.attrs.get("source_digest", digest) != digest:  # files imported before digests were kept: not known
        raise MasklamError(f"{cfg.out} was imported from {cfg.src} as it was before (a file was added, removed or "
                           "changed since); remove it, or use another --out, to import the source as it is now")
    return True


def run_import(cfg: ImportConfig) -> ImportResult:
    """Import ``cfg.src`` (a Hub repo id: fetched first) into ``cfg.out``, resuming whatever an earlier run
    finished."""
    hub: dict[str, str] = {}
    if is_hub_dataset(cfg.src):
        if cfg.recursive:
            raise MasklamError(f"--recursive reads the subfolders of a folder of videos; {cfg.src} is a Hub dataset")
        check_free(cfg.out, ", or use another --out")  # a busy --out is one line before a download
        fetched = fetch_dataset(str(cfg.src), cfg.camera, cfg.revision)
        cfg, hub = replace(cfg, src=fetched.path, camera=fetched.camera), fetched.attrs()
    elif cfg.revision is not None:
        raise MasklamError(f"--revision picks a Hub dataset's version; {cfg.src} is a local path")
    # every checkable problem: one line, before any file is touched; an --out inside SRC is not SRC's data
    source = open_source(cfg.src, cfg.camera, ignore=cfg.out, recursive=cfg.recursive)
    try:
        with output_lock(cfg.out, ", or use another --out"):  # one import per output at a time
            return _import_locked(cfg, source, hub)
    finally:
        source.close()


def _import_locked(cfg: ImportConfig, source: Source, hub: dict[str, str]) -> ImportResult:
    """`run_import` once it holds the output's lock (`hub`: a Hub dataset's repo id and revision, recorded)."""
    attrs = {**file_attrs(cfg, source), **hub}
    items = source.items()
    signatures = [source.signature(item) for item in items]  # once: a folder of images stats every file
    digest = source_digest(items, signatures)
    if _existing(cfg, attrs, digest):
        remove_parts(cfg.out)
        lay = read_layout(cfg.out)
        return ImportResult(cfg.out, lay.num_trajectories, lay.num_frames, 0, len(items))
    fps = attrs["fps"]
    resizer = Resizer(cfg.img_size, cfg.resize)
    finished = _matching_parts(cfg.out, prepare_parts(cfg.out, attrs), items, signatures)
    todo = [i for i in range(len(items)) if i not in finished]
    total = sum(int((items[i].length or 0) * _kept(fps, items[i].fps or source.fps)) for i in todo)
    bar = tqdm(total=total or None, unit="frame", desc="import", disable=not cfg.progress, dynamic_ncols=True)
    try:
        for i in todo:
            bar.set_postfix_str(items[i].name, refresh=False)
            import_item(cfg, source, items[i], i, fps, resizer, signatures[i], bar.update)
    finally:
        bar.close()
    tasks = sorted({str(g.get("task", "")) for g in _group_attrs(cfg.out, range(len(items)))} - {""})
    need = sum(part_path(cfg.out, i).stat().st_size for i in range(len(items)))
    check_free_space(cfg.out, need, f"assembling {cfg.out}")  # before the copy, not half-way through it
    n = merge_parts(cfg.out, {**attrs, "tasks": tasks, "source_digest": digest}, range(len(items)))
    remove_parts(cfg.out)
    lay = read_layout(cfg.out)
    return ImportResult(cfg.out, n, lay.num_frames, len(todo), len(items) - len(todo))


def _matching_parts(out: Path, finished: set[int], items: list[Item], signatures: list[str]) -> set[int]:
    """The finished parts that hold an item of the source as it is now, each moved to that item's index (an item
    added or removed before it shifts it); the others (an item removed, renamed or edited since the interrupted
    import) are deleted, with a notice, and imported again."""
    from masklam.data.hdf5 import open_file, read_attrs, trajectory_names

    def first_group(i: int) -> tuple[dict[str, Any], bool]:
        """The part's first trajectory's attrs, and whether this masklam made it (source_rows; rewards summed)."""
        with open_file(part_path(out, i)) as f:
            group = f[trajectory_names(f)[0]]
            return read_attrs(group), "source_rows" in group

    now = {(item.name, str(item.path.absolute()), sig): j for j, (item, sig) in enumerate(zip(items, signatures))}
    moves: dict[int, int] = {}  # part index -> the index of the item it holds now
    stale, older = [], []
    for i in sorted(finished):  # each part opened once
        first, ours = first_group(i)
        stored = first.get("source_file")  # relative to where the import ran, in parts from before 2026-12-07
        file = str(Path(stored).absolute()) if stored else None
        key = (first.get("source_item"), file, first.get("source_signature"))
        if key[2] is None and i < len(items):  # parts from before signatures: their item at their index
            key = (key[0], key[1], signatures[i])
        if key not in now:
            stale.append(i)
        elif not ours:
            older.append(i)
        else:
            moves[i] = now[key]
    for i in stale + older:
        part_path(out, i).unlink()
    for i in moves:  # in two steps: a part may move to where another is leaving
        if moves[i] != i:
            part_path(out, i).rename(part_path(out, i).with_suffix(".move"))
    for i, j in moves.items():
        if j != i:
            moving = part_path(out, i).with_suffix(".move")
            with h5py.File(moving, "r+") as f:  # its trajectories' seed is the item's index
                for name in trajectory_names(f):
                    f[name].attrs["seed"] = j
            moving.rename(part_path(out, j))
    if stale:
        note_once(("import-stale", str(out)), f"{len(stale)} of the {len(finished)} items an interrupted import of "
                  f"{out} finished no longer match the source (it changed since): those still in it are imported "
                  "again")
    if older:
        note_once(("import-older", str(out)), f"{len(older)} of the {len(finished)} items an interrupted import of "
                  f"{out} finished were made by an older masklam (no source_rows): imported again")
    return set(moves.values())


def _group_attrs(out: Path, indices: Any) -> Iterator[dict[str, Any]]:
    from masklam.data.hdf5 import open_file, read_attrs, trajectory_names

    for i in indices:
        with open_file(part_path(out, i)) as f:
            for name in trajectory_names(f):
                yield read_attrs(f[name])


def main(argv: list[str]) -> int:
    cfg = parse(ImportConfig, argv)
    result = run_import(cfg)
    lay = read_layout(result.path)
    labels = ", ".join(k for k in ("actions", "states", "rewards") if lay.has(k)) or "no actions or states"
    n = result.trajectories
    print(f"{result.path}: {n} trajector{'y' if n == 1 else 'ies'}, {result.frames} frames of "
          f"{cfg.img_size}x{cfg.img_size} "
          f"({cfg.resize}), {lay.attrs.get('fps', 0):g} fps; {labels} ({result.imported} source items read now, "
          f"{result.reused} kept from an earlier run)")
    return 0
