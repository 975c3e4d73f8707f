"""Every external data format enters through here: one reader interface, `Source`, opened by `open_source` for the
format `masklam.data.formats.detect` tells from the path's content. Nothing above `masklam.data` knows a file format.

Formats (`masklam.data.formats.FORMATS`):

- ``hdf5``: our HDF5 layout, and LAOM's published files (its subset) -- `masklam.data.hdf5`;
- ``masklam-parquet``: MaskLAM's published parquet data (a file or a directory of shards) -- `masklam.data.peers`;
- ``lerobot``: a LeRobotDataset directory, v3.0 or v2.x -- `masklam.data.lerobot`;
- ``videos``: one video file, or a folder of them (video.VIDEO_SUFFIXES), one episode per file;
- ``frames``: a folder of image folders, ``DIR/<episode>/*.jpg|png`` (frames in numbered name order:
  `masklam.data.formats.name_order`).

A `Source` lists its items up front (`items`: a file, a folder, an episode; everything checkable is checked
there, before any work: unreadable or missing files, an unknown camera, images of mixed sizes), then reads one
item at a time as `Episode`s whose frames stream (square, at the size asked for), so memory does not grow
with the input's length. Training reads HDF5 and MaskLAM's parquet directly (`load_dataset`); the other
formats enter through `masklam import`.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from masklam.data.formats import (DESCRIPTIONS, detect, entries, image_dirs, image_files, is_video, item_name,
                                  own_outputs, video_subdirs)
from masklam.data.hdf5 import MASK_KEYS, executed_actions, open_file, read_array, read_layout
from masklam.data.video import (IMAGE_SUFFIXES, VIDEO_SUFFIXES, Resizer, image_size, probe, read_image, same_rate,
                                video_frames)
from masklam.errors import MasklamError, note_once

READ_CHUNK = 256
"""frames read at a time from an HDF5 file"""


@dataclass
class Item:
    """One unit a source is read in (a video file, an image folder, a LeRobot episode, a trajectory)."""

    name: str
    path: Path
    """the file errors name"""
    length: int | None = None
    """frames, when known before reading"""
    ref: Any = None
    """what the source needs to read it"""
    fps: float | None = None
    """its own frame rate, where a source's items differ (a folder of videos); None: the source's"""


@dataclass
class Episode:
    """One episode as read: frames stream, per-frame arrays are whole (small)."""

    frames: Iterator[np.ndarray]
    """(size, size, 3) uint8 frames, in order"""
    length: int | None
    """frames expected (None: until the stream ends); fewer is an error naming the item's file"""
    actions: np.ndarray | None = None  # (T, A) float32
    states: np.ndarray | None = None  # (T, S) float32
    rewards: np.ndarray | None = None  # (T,) float32
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (T, size, size) bool
    task: str = ""
    origin: dict[str, Any] = field(default_factory=dict)
    """where an earlier import read it (a masklam export, an imported HDF5 file): origin_rows ((T,) int64),
    origin_item, origin_file"""
    times: list[float] | None = None
    """each frame's time (seconds), appended as `frames` yields it (video files, whose frame intervals may vary);
    None: frame i at i / fps"""
    stated: int | None = None
    """frames its header's duration suggests where it states no count to hold it to (mkv, webm, ...): far fewer
    decoded is a note (a cut-short file reads as a short one)"""


class Source:
    """A data path read item by item. Subclasses set `kind` and define `items` and `read`."""

    kind = "?"
    layout: Any = None
    """the checked FileLayout of the formats training reads directly (hdf5, masklam-parquet); None for others"""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def fps(self) -> float | None:
        """Frames per second of the source (None: it does not say, or its items differ: `rates`)."""
        return None

    def rates(self) -> list[float]:
        """The distinct frame rates of the items (more than one: each item's in its `Item.fps`)."""
        return [self.fps] if self.fps else []

    def attrs(self) -> dict[str, Any]:
        """File attrs of the source worth keeping in an imported file (task, domain, ...)."""
        return {}

    def items(self) -> list[Item]:
        raise NotImplementedError

    def signature(self, item: Item) -> str:
        """What changes when `item`'s content may have: its file's size and modification time."""
        st = item.path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"

    def read(self, item: Item, resizer: Resizer) -> Episode:
        raise NotImplementedError

    def close(self) -> None:
        pass


class VideoSource(Source):
    """A video file or a folder of them: one episode per file."""

    kind = "videos"

    def __init__(self, path: Path, ignore: str | os.PathLike | None = None, recursive: bool = False) -> None:
        super().__init__(path)
        skip = own_outputs(ignore)  # the import's own output, parts and lock
        found = [path] if path.is_file() else list(entries(path, recursive, skip))
        files = [p for p in found if is_video(p)]
        if not files:
            raise MasklamError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {path}")
        broken = [] if path.is_file() else [p for p in found if p.is_symlink() and not p.exists()]
        if broken:  # a link whose target is gone: not read, and said
            note_once(("broken-links", str(path)), f"{path}: {len(broken)} link(s) to files that no longer exist "
                      f"are skipped ({', '.join(p.relative_to(path).as_posix() for p in broken[:3])}"
                      f"{' ...' if len(broken) > 3 else ''})")
        listed = set(files)
        others = [] if path.is_file() else [p for p in found if p not in listed and p.suffix != ".lock"
                                            and p.is_file()]  # a masklam lock (label's, beside its --out): not data
        if others:  # not videos (an import's output, notes, a format masklam does not know): said, not silently left
            note_once(("not-videos", str(path), len(others)),
                      f"{path}: {len(others)} file(s) that are not videos are not read "
                      f"({', '.join(item_name(p, path) + p.suffix for p in others[:3])}"
                      f"{' ...' if len(others) > 3 else ''})")
        nested = [] if path.is_file() or recursive else video_subdirs(path, skip)
        if nested:  # read flat: say so, rather than leave their videos out without a word
            note_once(("nested-videos", str(path), *nested), f"{path}: the videos in its subfolders "
                      f"{', '.join(nested[:3])}{' ...' if len(nested) > 3 else ''} are not imported "
                      "(a folder of videos is read flat); pass --recursive to read them too")
        self.infos = [probe(f) for f in files]  # an unreadable file: one line naming it, before any work
        self._rates = sorted({round(i.fps, 3) for i in self.infos if i.fps})

    @property
    def fps(self) -> float | None:
        """The videos' rate: one (the first video's), or rates within SAME_RATE of each other (29.97 and 30: the
        lowest); None when they differ more, or none is known."""
        if not self._rates or not same_rate(self._rates[0], self._rates[-1]):
            return None
        rates = [i.fps for i in self.infos if i.fps]
        return rates[0] if len(self._rates) == 1 else min(rates)

    def rates(self) -> list[float]:
        return list(self._rates)

    def items(self) -> list[Item]:
        names = [item_name(i.path, self.path) for i in self.infos]
        twice = {n for n, count in Counter(names).items() if count > 1}  # a.mp4 and a.mkv: named with their suffix
        return [Item(n + i.path.suffix if n in twice else n, i.path, i.decoded_frames or None, i, i.fps or None)
                for n, i in zip(names, self.infos)]

    def read(self, item: Item, resizer: Resizer) -> Episode:
        info = item.ref
        checked = info.decoded_frames if info.path.suffix.lower() in (".mp4", ".m4v", ".mov") else None  # others: vary
        times: list[float] = []
        stated = round(info.duration * info.fps) if checked is None and info.duration and info.fps else None
        return Episode(video_frames(info.path, resizer, times), checked, times=times, stated=stated)


class FrameFolderSource(Source):
    """A folder of image folders: one episode per folder, frames in numbered name order, each folder's of one size
    (folders of different sizes are each resized, as videos of different sizes are)."""

    kind = "frames"

    def __init__(self, path: Path, recursive: bool = False) -> None:
        super().__init__(path)
        if not path.is_dir():
            raise MasklamError(f"no such directory: {path}")
        self.folders = image_dirs(path, recursive)
        if not self.folders:
            raise MasklamError(f"no folders of images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
        self.files = {d: image_files(d) for d in self.folders}
        for d in self.folders:  # headers only: cheap, and a size changing within an episode is an error before work
            first = self.files[d][0]
            size = image_size(first)
            for f in self.files[d]:
                hw = image_size(f)
                if hw != size:
                    raise MasklamError(f"{f} is {hw[1]}x{hw[0]}, {first} is {size[1]}x{size[0]}; the frames of one "
                                       "episode folder must have one size")

    def items(self) -> list[Item]:
        return [Item(item_name(d, self.path), d, len(self.files[d]), d) for d in self.folders]

    def signature(self, item: Item) -> str:
        """Its images' count, total size and latest modification (the folder's own times miss an edited file)."""
        stats = [f.stat() for f in self.files[item.ref]]
        return f"{len(stats)}:{sum(st.st_size for st in stats)}:{max(st.st_mtime_ns for st in stats)}"

    def read(self, item: Item, resizer: Resizer) -> Episode:
        return Episode((resizer.array(read_image(f)) for f in self.files[item.ref]), item.length)


class LeRobotSource(Source):
    """A LeRobot dataset: one episode per LeRobot episode, the camera chosen by `camera`."""

    kind = "lerobot"

    def __init__(self, path: Path, camera: str | None = None) -> None:
        from masklam.data.lerobot import open_lerobot

        super().__init__(path)
        self.dir = open_lerobot(path, camera)

    @property
    def fps(self) -> float | None:
        return self.dir.fps

    def attrs(self) -> dict[str, Any]:
        """Its camera and version; a dataset `masklam export` wrote also gives back its file's attrs (task, env
        settings), which evaluation needs."""
        ours = (self.dir.info.get("masklam") or {}).get("attrs") or {}
        # not what the import makes anew (its digest, tasks, fps), nor how the earlier import read its own source
        # (a Hub id, --recursive), nor the labelling of latent actions, which are not imported
        dropped = ("img_hw", "version", "fps", "latent_lam", "label_config", "source_digest", "tasks", "hub_repo_id",
                   "hub_revision", "recursive")
        kept = {k: v for k, v in ours.items() if k not in dropped and v is not None}
        return {**kept, "camera": self.dir.camera, "lerobot_version": self.dir.version,
                "robot_type": str(self.dir.info.get("robot_type") or "")}

    def items(self) -> list[Item]:
        return [Item(f"episode_{ep.index:06d}", ep.video_file or ep.data_file, ep.length, ep)
                for ep in self.dir.episodes]

    def signature(self, item: Item) -> str:
        """Its rows' file and its video's (actions, states and masks live in the one, frames in the other)."""
        files = [item.ref.data_file] + ([item.ref.video_file] if item.ref.video_file else [])
        return ";".join(f"{st.st_size}:{st.st_mtime_ns}" for st in (f.stat() for f in files))

    def read(self, item: Item, resizer: Resizer) -> Episode:
        ep = item.ref
        rows = self.dir.rows(ep)
        masks = {k: np.stack([resizer.mask(m) for m in v]) for k, v in rows.items() if k in MASK_KEYS}
        if len(ep.tasks) > 1:  # said, not silently merged: a trajectory holds one task string
            note_once(("lerobot-tasks", str(self.path)), f"{self.path}: {item.name} has {len(ep.tasks)} tasks "
                      f"({'; '.join(map(repr, ep.tasks[:3]))}); a masklam trajectory keeps one task: stored as "
                      "their '; '-joined string, which frame had which task is not kept (this note once per dataset)")
        from masklam.data.lerobot import SOURCE_ROWS

        origin = {f"origin_{k.removeprefix('source_')}": v for k, v in ep.origin.items()}  # item, file
        if SOURCE_ROWS in rows:
            origin["origin_rows"] = rows[SOURCE_ROWS]
        return Episode(self.dir.frames(ep, resizer, rows), ep.length, rows.get("actions"), rows.get("states"),
                       rows.get("rewards"), masks, "; ".join(ep.tasks), origin)

    def close(self) -> None:
        self.dir.close()


class HDF5Source(Source):
    """Our HDF5 file or LAOM's: one episode per trajectory, read a chunk of frames at a time."""

    kind = "hdf5"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.layout = read_layout(path)
        self.file: Any = None

    @property
    def fps(self) -> float | None:
        fps = self.layout.attrs.get("fps")
        return float(fps) if fps else None

    def attrs(self) -> dict[str, Any]:
        return {k: self.layout.attrs[k] for k in ("domain_name", "task_name") if k in self.layout.attrs}

    def items(self) -> list[Item]:
        return [Item(name, self.path, int(n), name) for name, n in zip(self.layout.names, self.layout.lengths)]

    def read(self, item: Item, resizer: Resizer) -> Episode:
        if self.file is None:
            self.file = open_file(self.path)
        group = self.file[item.ref]
        arrays = {k: read_array(self.path, group, k) for k in ("actions", "states", "rewards") if k in group}
        if "actions" in arrays:
            arrays["actions"] = executed_actions(self.path, item.ref, arrays["actions"], self.layout.action_bounds)
        masks = {k: np.stack([resizer.mask(m) for m in read_array(self.path, group, k)])
                 for k in MASK_KEYS if k in group}

        def frames() -> Iterator[np.ndarray]:
            for lo in range(0, group["obs"].shape[0], READ_CHUNK):
                for img in read_array(self.path, group, "obs", slice(lo, lo + READ_CHUNK)):
                    yield resizer.array(img)

        return Episode(frames(), item.length, arrays.get("actions"), arrays.get("states"), arrays.get("rewards"), masks,
                       str(group.attrs.get("task", "")), self._origin(group))

    def _origin(self, group: Any) -> dict[str, Any]:
        """An imported trajectory's first source (its origin_* where they are named, else its source_*), which a new
        import keeps and an export writes."""
        prefix = "origin_" if "origin_rows" in group and "origin_item" in group.attrs else "source_"
        if prefix + "rows" not in group:
            return {}
        return {"origin_rows": np.asarray(read_array(self.path, group, prefix + "rows"), np.int64),
                **{f"origin_{k}": str(group.attrs.get(prefix + k, "")) for k in ("item", "file")}}

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class ParquetSource(Source):
    """MaskLAM's parquet data: one episode per trajectory (its distracted frames)."""

    kind = "masklam-parquet"

    def __init__(self, path: Path) -> None:
        from masklam.data.peers import parquet_layout

        super().__init__(path)
        self.layout = parquet_layout(path)

    def items(self) -> list[Item]:
        return [Item(name, self.path, int(n), name) for name, n in zip(self.layout.names, self.layout.lengths)]

    def read(self, item: Item, resizer: Resizer) -> Episode:
        from masklam.data.peers import ParquetReader

        keys = sorted(self.layout.columns)
        with ParquetReader(self.layout, keys) as reader:
            traj = reader[item.ref]
            obs = traj["obs"]
            arrays = {k: traj[k] for k in ("actions", "states", "rewards") if k in self.layout.columns}
            masks = {k: np.stack([resizer.mask(m) for m in traj[k]]) for k in MASK_KEYS if k in self.layout.columns}
        return Episode((resizer.array(img) for img in obs), item.length, arrays.get("actions"), arrays.get("states"),
                       arrays.get("rewards"), masks)


def open_source(path: str | os.PathLike, camera: str | None = None, ignore: str | os.PathLike | None = None,
                recursive: bool = False) -> Source:
    """The `Source` of a data path, its items checked (MasklamError naming the first bad file); ``recursive``: a
    folder's videos or image folders in its subfolders too."""
    path = Path(path)
    kind = detect(path, ignore, recursive)
    if camera is not None and kind != "lerobot":
        raise MasklamError(f"--camera picks a LeRobot dataset's camera; {path} is {DESCRIPTIONS[kind]}")
    if recursive and (kind not in ("videos", "frames") or path.is_file()):
        raise MasklamError(f"--recursive reads the subfolders of a folder of videos or image folders; {path} is "
                           f"{DESCRIPTIONS[kind] if path.is_dir() else 'a file'}")
    if kind == "lerobot":
        return LeRobotSource(path, camera)
    if kind == "videos":
        return VideoSource(path, ignore, recursive)
    if kind == "frames":
        return FrameFolderSource(path, recursive)
    if kind == "masklam-parquet":
        return ParquetSource(path)
    if path.is_dir():
        raise MasklamError(f"{path} is a directory of HDF5 files; import them one at a time")
    return HDF5Source(path)
