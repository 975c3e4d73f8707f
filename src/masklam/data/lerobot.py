"""LeRobotDataset directories, read natively (pyarrow + PyAV; the `lerobot` package needs Python
>= 3.12 and pins an older torch).

Reading (`LeRobotDir`): format v3.0 (``meta/info.json``, ``meta/episodes/chunk-*/file-*.parquet``,
``data/chunk-*/file-*.parquet`` holding many episodes' rows, ``videos/<key>/chunk-*/file-*.mp4`` holding many
episodes' frames, located by ``from_timestamp``) and v2.0/v2.1 (``meta/episodes.jsonl``, one parquet and one mp4
per episode). A camera is a ``video`` feature (any codec FFmpeg decodes, AV1 included) or an ``image`` feature
(PNG/JPEG bytes in the parquet rows). ``action`` -> actions, ``observation.state`` -> states, ``next.reward``
-> rewards, ``observation.masks`` / ``observation.<mask key>`` (bool (H, W)) -> agent masks; task strings kept.

Writing (`LeRobotWriter`, `add_feature`) is :mod:`masklam.data.lerobot_writer`.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from masklam.data.hdf5 import MASK_KEYS
from masklam.data.video import Resizer, VideoReader, decode_image, read_image
from masklam.errors import MasklamError
from masklam.files import read_json

VERSIONS = ("v2.0", "v2.1", "v3.0")
ACTION, STATE, REWARD = "action", "observation.state", "next.reward"
DEFAULT_CAMERA = "observation.image"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"


def mask_feature(key: str) -> str:
    """The LeRobot feature name of one of our mask keys."""
    return "observation.masks" if key == "masks" else f"observation.{key}"


MASK_FEATURES = {mask_feature(k): k for k in MASK_KEYS}
SOURCE_ROWS = "source_rows"
"""a masklam export's per-frame provenance, the feature: each frame's index within its source item (int64; an
import of the export keeps it as ``origin_rows``)"""
SOURCE_COLUMNS = ("source_item", "source_file")
"""a masklam export's per-episode provenance, columns of meta/episodes (kept as ``origin_item``, ``origin_file``)"""


def is_lerobot(path: str | os.PathLike) -> bool:
    """True for a directory with meta/info.json."""
    return (Path(path) / "meta" / "info.json").is_file()


def parquet_module() -> Any:
    """pyarrow.parquet, imported on first use (only LeRobot and the papers' data need it)."""
    import pyarrow.parquet as pq

    return pq


def read_table(path: Path, columns: list[str] | None = None) -> Any:
    """One parquet file as a pyarrow Table (MasklamError for a missing or unreadable file)."""
    import pyarrow as pa

    if not path.is_file():
        raise MasklamError(f"no such file: {path}")
    try:
        return parquet_module().read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise MasklamError(f"{path} is not a readable parquet file ({str(e).splitlines()[0]})") from None


def column_array(table: Any, name: str, dtype: Any = np.float32) -> np.ndarray:
    """A scalar or fixed-length list column -> (N,) or (N, D) array."""
    import pyarrow as pa

    arr = table.column(name).combine_chunks()
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        n = len(arr)
        values = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype)
        return values.reshape(n, -1) if n else values.reshape(0, 0)
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype)


@dataclass
class Episode:
    """One LeRobot episode: where its rows and its camera's frames lie."""

    index: int
    length: int
    tasks: list[str]
    data_file: Path
    video_file: Path | None  # None for an image camera (frames in the parquet rows)
    start: float  # seconds into video_file of its first frame
    origin: dict[str, str] = field(default_factory=dict)  # a masklam export's source_item, source_file


@dataclass
class LeRobotDir:
    """A LeRobot dataset directory, checked: version, camera, every episode's data and video files."""

    root: Path
    info: dict[str, Any]
    camera: str
    episodes: list[Episode]
    _cache: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return str(self.info["codebase_version"])

    @property
    def fps(self) -> float:
        return float(self.info["fps"])

    @property
    def features(self) -> dict[str, Any]:
        return self.info["features"]

    @property
    def is_video(self) -> bool:
        return self.features[self.camera]["dtype"] == "video"

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def exported_provenance(self) -> bool:
        """Whether `masklam export` wrote this dataset with its source's per-frame rows (another tool's column of
        that name is not taken for them)."""
        return "masklam" in self.info and self.features.get(SOURCE_ROWS) == {"dtype": "int64", "shape": [1],
                                                                              "names": None}

    @property
    def mask_keys(self) -> dict[str, str]:
        """feature -> our mask key, for the mask features present."""
        return {f: k for f, k in MASK_FEATURES.items() if f in self.features}

    def rows(self, ep: Episode) -> dict[str, np.ndarray]:
        """The episode's per-frame arrays, in frame order: actions, states, rewards, masks (those present)."""
        table = self._table(ep.data_file)
        if "episode_index" not in table.column_names:
            raise MasklamError(f"{ep.data_file} lacks the column 'episode_index'")
        episode = column_array(table, "episode_index", np.int64)
        sel = np.flatnonzero(episode == ep.index)
        if len(sel) != ep.length:
            raise MasklamError(f"{ep.data_file}: episode {ep.index} has {len(sel)} rows, meta says {ep.length}")
        import pyarrow as pa

        sub = table.take(pa.array(sel))
        if "frame_index" in sub.column_names:
            sub = sub.take(pa.array(np.argsort(column_array(sub, "frame_index", np.int64), kind="stable")))
        out: dict[str, np.ndarray] = {}
        for feature, key in ((ACTION, "actions"), (STATE, "states"), (REWARD, "rewards")):
            if feature in sub.column_names:
                value = column_array(sub, feature)
                out[key] = value.reshape(len(value), -1) if key != "rewards" else value.reshape(-1)
        for feature, key in self.mask_keys.items():
            if feature in sub.column_names:
                from masklam.data.peers import _nested  # nested list columns -> arrays (shared with MaskLAM's parquet)

                out[key] = _nested(sub.column(feature).combine_chunks(), f"{ep.data_file}: {feature}", mask=True)
        ours = self.exported_provenance and SOURCE_ROWS in sub.column_names  # a masklam export's provenance
        if ours and sub.column(SOURCE_ROWS).null_count == 0:
            out[SOURCE_ROWS] = column_array(sub, SOURCE_ROWS, np.int64).reshape(-1)
        if not self.is_video:
            out["images"] = sub.column(self.camera)
        return out

    def _table(self, path: Path) -> Any:
        if self._cache.get("path") != path:
            self._cache.update(path=path, table=read_table(path))
        return self._cache["table"]

    def frames(self, ep: Episode, resizer: Resizer, rows: dict[str, Any] | None = None) -> Iterator[np.ndarray]:
        """The episode's camera frames, square through `resizer`, in order."""
        if self.is_video:
            assert ep.video_file is not None
            reader = self._cache.get("reader")
            if reader is None or reader.path != ep.video_file:
                if reader is not None:
                    reader.close()
                reader = self._cache["reader"] = VideoReader(ep.video_file)
            yield from reader.frames(ep.start, ep.length, self.fps, resizer)
            return
        images = (rows or self.rows(ep))["images"]
        for t, item in enumerate(images.to_pylist()):
            data = item.get("bytes") if isinstance(item, dict) else item
            if data is None and isinstance(item, dict) and item.get("path"):
                yield resizer.array(read_image(self.root / item["path"]))
                continue
            if not isinstance(data, (bytes, bytearray)):
                raise MasklamError(f"{ep.data_file}: {self.camera} of episode {ep.index} frame {t} holds no image")
            yield resizer.array(decode_image(io.BytesIO(data), f"{ep.data_file}: episode {ep.index} frame {t}"))

    def close(self) -> None:
        reader = self._cache.pop("reader", None)
        if reader is not None:
            reader.close()
        self._cache.clear()


def lerobot_cameras(info: dict[str, Any]) -> list[str]:
    """The camera features (video or image) of a LeRobot dataset's meta/info.json."""
    return [k for k, v in (info.get("features") or {}).items() if v.get("dtype") in ("video", "image")]


def choose_camera(root: str | os.PathLike, info: dict[str, Any], camera: str | None) -> str:
    """`camera` checked against the dataset's cameras (its meta/info.json `info`), or its only one."""
    cameras = lerobot_cameras(info)
    if camera is None:
        if len(cameras) != 1:
            raise MasklamError(f"{root} has {len(cameras)} cameras ({', '.join(cameras) or 'none'}); choose one "
                               "with --camera" if cameras else f"{root} has no video or image feature to import")
        return cameras[0]
    if camera not in cameras:
        raise MasklamError(f"{root}: unknown camera {camera!r}; its cameras: {', '.join(cameras) or 'none'}")
    return camera


def open_lerobot(root: str | os.PathLike, camera: str | None = None) -> LeRobotDir:
    """Read and check a LeRobot directory's metadata: version, the camera (`camera`, or the only one), and that
    every episode's data and video files exist (MasklamError naming the first missing one)."""
    root = Path(root)
    info = read_json(root / "meta" / "info.json", "LeRobot info file")
    version = str(info.get("codebase_version", "?"))
    if version not in VERSIONS:
        raise MasklamError(f"{root / 'meta' / 'info.json'}: codebase_version {version!r} is not one of "
                           f"{', '.join(VERSIONS)}")
    fps = info.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise MasklamError(f"{root / 'meta' / 'info.json'}: fps (frames per second) is {fps!r}, not a positive number")
    camera = choose_camera(root, info, camera)
    episodes = _episodes_v3(root, info, camera) if version == "v3.0" else _episodes_v2(root, info, camera)
    if not episodes:
        raise MasklamError(f"{root} holds no episodes")
    for ep in episodes:
        for path in (ep.data_file, ep.video_file):
            if path is not None and not path.is_file():
                raise MasklamError(f"{root}: episode {ep.index}'s file {path} is missing")
    return LeRobotDir(root, info, camera, episodes)


def _episodes_v3(root: Path, info: dict[str, Any], camera: str) -> list[Episode]:
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise MasklamError(f"{root}: no meta/episodes/chunk-*/file-*.parquet (a v3.0 dataset lists its episodes there)")
    video = info["features"][camera]["dtype"] == "video"
    ours = "masklam" in info  # `masklam export` wrote it: its provenance columns are read
    data_path, video_path = info.get("data_path", DATA_PATH), info.get("video_path", VIDEO_PATH)
    out = []
    for f in files:
        t = read_table(f).to_pydict()
        try:
            for i in range(len(t["episode_index"])):
                data = root / data_path.format(chunk_index=t["data/chunk_index"][i], file_index=t["data/file_index"][i])
                vfile, start = None, 0.0
                if video:
                    vfile = root / video_path.format(video_key=camera, chunk_index=t[f"videos/{camera}/chunk_index"][i],
                                                     file_index=t[f"videos/{camera}/file_index"][i])
                    start = float(t[f"videos/{camera}/from_timestamp"][i])
                tasks = list(t["tasks"][i] or []) if "tasks" in t else []
                origin = {k: str(t[k][i]) for k in SOURCE_COLUMNS if ours and k in t and t[k][i] is not None}
                out.append(Episode(int(t["episode_index"][i]), int(t["length"][i]), tasks, data, vfile, start, origin))
        except KeyError as e:
            raise MasklamError(f"{f} lacks the column {e.args[0]!r}") from None
    return sorted(out, key=lambda e: e.index)


def _episodes_v2(root: Path, info: dict[str, Any], camera: str) -> list[Episode]:
    path = root / "meta" / "episodes.jsonl"
    if not path.is_file():
        raise MasklamError(f"no such file: {path} (a {info['codebase_version']} dataset lists its episodes there)")
    chunk = int(info.get("chunks_size", 1000))
    video = info["features"][camera]["dtype"] == "video"
    out = []
    for n, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            index = int(row["episode_index"])
            c = index // chunk
            data = root / info["data_path"].format(episode_chunk=c, episode_index=index)
            vfile = root / info["video_path"].format(episode_chunk=c, video_key=camera, episode_index=index) \
                if video else None
            out.append(Episode(index, int(row["length"]), list(row.get("tasks", [])), data, vfile, 0.0))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise MasklamError(f"{path}: line {n + 1} is not an episode record ({e})") from None
    return sorted(out, key=lambda e: e.index)
