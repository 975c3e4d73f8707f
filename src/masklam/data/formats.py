"""What kind of data a path holds (`detect`, one of FORMATS), from its content, and which files of a folder are data:
the one place that tells formats apart. Reading them is `masklam.data.sources`.

A folder is listed in name order (numbers as numbers: `name_order`), without hidden entries and without an import's
own output written into it (`own_outputs`); `--recursive` walks its subfolders depth first, a linked folder once.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator

from masklam.data.peers import is_parquet
from masklam.data.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from masklam.errors import MasklamError

FORMATS = ("hdf5", "masklam-parquet", "lerobot", "videos", "frames")
DESCRIPTIONS = {"hdf5": "HDF5 data", "masklam-parquet": "MaskLAM's parquet data", "lerobot": "a LeRobot dataset",
                "videos": "video", "frames": "a folder of image folders"}
HDF5_SUFFIXES = (".h5", ".hdf5")
"""our HDF5 shards (.h5) and LAOM's files (.hdf5): what a directory of HDF5 data stands for"""
Skip = frozenset
"""resolved paths a folder's listing leaves out"""


def name_order(path: Path) -> list[Any]:
    """Sort key of file names in the order people number them: frame_2 before frame_10 (digits as numbers)."""
    return [(0, int(part), part) if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.name)]


def _listing(directory: Path, skip: Skip = frozenset()) -> list[Path]:
    """The entries of `directory` in name order, without hidden ones (.DS_Store, macOS's ._name sidecars) and those
    in `skip` (an import's own output and what it writes beside it: `own_outputs`)."""
    names = {p.name for p in skip}
    return sorted((p for p in directory.iterdir() if not p.name.startswith(".")
                   and not (p.name in names and p.resolve() in skip)), key=name_order)


def own_outputs(out: str | os.PathLike | None) -> Skip:
    """An output written into the folder being read, and its parts folder and lock file beside it: not data."""
    from masklam.data.parts import parts_dir
    from masklam.locks import lock_path

    if out is None:
        return frozenset()
    out = Path(out).resolve()
    return frozenset({out, parts_dir(out), lock_path(out)})


def _walk(directory: Path, skip: Skip = frozenset(), depth: int | None = None,
          seen: set[Path] | None = None) -> Iterator[Path]:
    """Every entry under `directory` (not hidden ones), depth first, each folder's in name order, `depth` levels
    down at most; a linked folder is entered once (a link back up does not loop)."""
    seen = {directory.resolve()} if seen is None else seen
    for p in _listing(directory, skip):
        yield p
        if p.is_dir() and (depth is None or depth > 1) and (real := p.resolve()) not in seen:
            seen.add(real)
            yield from _walk(p, skip, None if depth is None else depth - 1, seen)


def entries(directory: Path, recursive: bool, skip: Skip = frozenset()) -> Iterator[Path]:
    """A folder's entries in name order, and with ``recursive`` everything under it (depth first)."""
    return _walk(directory, skip) if recursive else iter(_listing(directory, skip))


def is_video(p: Path) -> bool:
    """A file with a video suffix (VIDEO_SUFFIXES)."""
    return p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()


def image_files(directory: Path) -> list[Path]:
    """A folder's image files (IMAGE_SUFFIXES), in name order: an episode's frames."""
    return [p for p in _listing(directory) if _is_image(p)]


def _has_images(directory: Path) -> bool:
    return directory.is_dir() and any(_is_image(p) for p in _listing(directory))


def image_dirs(directory: Path, recursive: bool = False, skip: Skip = frozenset()) -> list[Path]:
    """The folders of images in a folder (with ``recursive``: under it), one episode each."""
    return [p for p in entries(directory, recursive, skip) if _has_images(p)]


def video_subdirs(directory: Path, skip: Skip = frozenset()) -> list[str]:
    """Subfolders (DEEP levels down at most) holding video files, by their path under `directory`: a folder of videos
    is read flat, so these are not (unless --recursive)."""
    return [p.relative_to(directory).as_posix() for p in _walk(directory, skip, DEEP)
            if p.is_dir() and any(is_video(v) for v in _listing(p))]


def item_name(path: Path, root: Path) -> str:
    """An item's name: its path under the folder read, a file's without its suffix ('clip3', 'kitchen/clip3')."""
    if path == root:
        return path.stem
    rel = path.relative_to(root)
    return rel.with_suffix("").as_posix() if path.is_file() else rel.as_posix()


DEEP = 4
"""levels of subfolders looked into for the hint that --recursive would find data (not a whole home folder)"""


def detect(path: str | os.PathLike, ignore: str | os.PathLike | None = None, recursive: bool = False) -> str:
    """The format (one of FORMATS) of a data path, from its content; MasklamError when it is none of them.
    ``ignore``: a file in it that is not data (an import's own output, written into the folder it reads);
    ``recursive``: a folder's videos or image folders are looked for in its subfolders too."""
    path = Path(path)
    skip = own_outputs(ignore)
    if path.is_dir() and (path / "meta" / "info.json").is_file():
        return "lerobot"
    if is_parquet(path):
        return "masklam-parquet"
    if path.is_file():
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return "videos"
        if path.suffix.lower() not in HDF5_SUFFIXES and _readable(path) and not _is_hdf5(path):
            raise MasklamError(f"{path}: not a kind of file masklam reads (video: {', '.join(VIDEO_SUFFIXES)}; HDF5; "
                               "parquet; a LeRobot dataset folder)")
        return "hdf5"  # ours or LAOM's (any name); read_layout says when it is not HDF5
    if path.is_dir():
        video = next((p for p in entries(path, recursive, skip) if is_video(p)), None)
        if video is not None:  # first: an import's output beside its videos leaves the folder one of videos
            images = next((p for p in _walk(path, skip) if _has_images(p)), None) if recursive else None
            if images is not None:  # one kind per dataset: a stray preview.mp4 must not hide the image folders
                raise MasklamError(f"{path} holds videos ({video.relative_to(path).as_posix()}) and folders of "
                                   f"images ({images.relative_to(path).as_posix()}) under it: --recursive reads one "
                                   "kind; move the other out, or import each kind from a folder of its own")
            return "videos"
        if any(_has_images(p) for p in entries(path, recursive, skip)):
            return "frames"
        if any(p.suffix in HDF5_SUFFIXES and p.is_file() for p in _listing(path, skip)):
            return "hdf5"
        if image_files(path):  # frames straight in it: one episode, which the folder-of-folders layout asks to nest
            raise MasklamError(f"{path} holds images directly; an image dataset is a folder of episode folders "
                               f"(DIR/<episode>/*.png): move them into {path}/<episode>/ and import {path}")
        nested = [] if recursive else video_subdirs(path, skip)
        if nested:
            raise MasklamError(f"{path}: no data found in it; its subfolders {', '.join(nested[:3])}"
                               f"{' ...' if len(nested) > 3 else ''} hold video files: pass --recursive to masklam "
                               "import or label (every video under it, one episode each), or import each of them (a "
                               "folder of videos is read flat)")
        if not recursive and any(is_video(p) or _has_images(p) for p in _walk(path, skip, DEEP)):
            raise MasklamError(f"{path}: no data found in it, only deeper in its subfolders: pass --recursive to "
                               "masklam import or label (every video or folder of images under it, one episode each)")
        raise MasklamError(f"{path}: no data found (video files, folders of images, HDF5 or parquet files, or a "
                           "LeRobot dataset with meta/info.json)")
    raise MasklamError(f"no such file: {path}")


def _readable(path: Path) -> bool:
    return os.access(path, os.R_OK)


def _is_hdf5(path: Path) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def offers_observations(path: str | os.PathLike) -> bool:
    """Whether a data path holds two kinds of frame to choose from (distracted and clean: MaskLAM's parquet
    data); an HDF5 file holds one."""
    return is_parquet(path)


def data_exists(path: str | os.PathLike) -> bool:
    """Whether a data path names existing data (a file, a directory, or a split of a directory of shards)."""
    return Path(path).exists() or is_parquet(path)


def trainable(path: str | os.PathLike) -> None:
    """MasklamError for data training cannot read directly (video, image folders, LeRobot), saying how to import
    them; paths of no known format pass (their reader names the problem)."""
    try:
        kind = detect(path)
    except MasklamError:
        return
    if kind not in ("hdf5", "masklam-parquet"):
        raise MasklamError(f"{path} is {DESCRIPTIONS[kind]}; import it first: masklam import {path} --out DATA.h5")
