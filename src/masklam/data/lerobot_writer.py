"""LeRobotDataset directories, written natively (format v3.0; pyarrow + PyAV).

`LeRobotWriter`: frames as one mp4 per camera file (h264 yuv444p by default: PSNR >= 35 dB on 64x64 frames
where yuv420p's halved chroma stops near 30 dB; or AV1), the codec stated in info.json; rows in
``data/chunk-CCC/file-NNN.parquet``; agent masks exactly, as bool (H, W) columns ``observation.masks``
(``masks``) and ``observation.<key>`` (other mask keys); a vector of width 1 as a scalar column, as LeRobot reads
a feature of shape [1]; meta/episodes, tasks, stats (with LeRobot's quantiles; none for the masks, whose stats
LeRobot would make per pixel, (H, W) arrays for every episode, and which no policy normalises). Files past
``CHUNKS_SIZE`` in a chunk start the next chunk (``chunk-001/file-000``), as LeRobot's writer does. A new
directory is built as ``OUT.tmp`` and renamed into place when complete. `add_feature` adds a per-frame column
(latent actions) to an existing dataset of any version. Reading is :mod:`masklam.data.lerobot`.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from masklam.data.lerobot import (ACTION, DATA_PATH, DEFAULT_CAMERA, EPISODES_PATH, REWARD, STATE, VIDEO_PATH,
                                  column_array, mask_feature, parquet_module, read_table)
from masklam.data.video import VideoWriter, codec_written, stored_rate
from masklam.errors import MasklamError
from masklam.files import read_json, write_json

CHUNKS_SIZE = 1000
"""files per chunk folder (info.json's chunks_size)"""
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
"""the quantiles LeRobot's stats.json holds beside min / max / mean / std / count (policies may normalise by
them)"""


class _Stats:
    """Streaming min / max / mean / std / count of a feature, per last-axis component, and its `QUANTILES` from a
    uniform sample of at most `keep` rows (reservoir sampling, seeded: the same data give the same file)."""

    def __init__(self, keep: int = 100_000) -> None:
        self.n, self.rows, self.s, self.ss, self.lo, self.hi = 0, 0, 0.0, 0.0, None, None
        self.keep, self.sample, self.offered, self.rng = keep, None, 0, np.random.default_rng(0)

    def add(self, x: np.ndarray, count: int | None = None) -> None:
        """Rows `x` ((N, ...) values); `count`: the items they stand for when they sample them (an image's frames,
        LeRobot's count), else N."""
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        if not len(x):
            return
        self.n += len(x) if count is None else count
        self.rows += len(x)
        self.s = self.s + x.sum(0)
        self.ss = self.ss + (x * x).sum(0)
        self.lo = x.min(0) if self.lo is None else np.minimum(self.lo, x.min(0))
        self.hi = x.max(0) if self.hi is None else np.maximum(self.hi, x.max(0))
        self._reservoir(x)

    def _reservoir(self, x: np.ndarray) -> None:
        """Algorithm R, a batch at a time: the first `keep` rows fill the sample; the i-th row after them takes a
        uniform slot of i + 1, kept when that slot is in the sample."""
        if self.sample is None:
            self.sample = np.empty((0, x.shape[1]))
        room = self.keep - len(self.sample)
        if room > 0:
            self.sample = np.concatenate([self.sample, x[:room]])
            self.offered += min(room, len(x))
            x = x[room:]
        if not len(x):
            return
        slots = np.floor(self.rng.random(len(x)) * (self.offered + np.arange(len(x)) + 1)).astype(np.int64)
        take = slots < self.keep
        self.sample[slots[take]] = x[take]
        self.offered += len(x)

    def result(self, shape: tuple[int, ...] | None = None) -> dict[str, Any]:
        rows = max(self.rows, 1)
        mean = self.s / rows
        std = np.sqrt(np.maximum(self.ss / rows - mean * mean, 0.0))
        shape = shape or (len(np.atleast_1d(mean)),)
        out = {"min": np.reshape(self.lo, shape).tolist(), "max": np.reshape(self.hi, shape).tolist(),
               "mean": np.reshape(mean, shape).tolist(), "std": np.reshape(std, shape).tolist(), "count": [self.n]}
        for name, q in QUANTILES.items():
            out[name] = np.reshape(np.quantile(self.sample, q, axis=0), shape).tolist()
        return out


def _list_array(values: np.ndarray) -> Any:
    """(N, *dims) -> nested fixed-size lists (LeRobot's Sequence / Array2D columns)."""
    import pyarrow as pa

    arr = pa.array(np.ascontiguousarray(values).reshape(-1))
    for d in reversed(values.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, int(d))
    return arr


def _vector_array(values: np.ndarray) -> Any:
    """(N, D) -> a fixed-size list column, or for D = 1 a plain one: LeRobot reads a feature of shape [1] as a
    scalar (a list of one does not cast to it)."""
    import pyarrow as pa

    return pa.array(np.ascontiguousarray(values[:, 0])) if values.shape[1] == 1 else _list_array(values)


def episode_stat_columns(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """An episode's stats per feature as meta/episodes columns, ``stats/<feature>/<stat>`` (LeRobot v3.0's)."""
    return {f"stats/{name}/{stat}": value for name, feature in stats.items() for stat, value in feature.items()}


def _scalar_feature(dtype: str) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [1], "names": None}


class LeRobotWriter:
    """Write a LeRobot v3.0 dataset, episode by episode: `add_episode(...)`, then `finish()` renames it into place.

    Episodes share one mp4 and one parquet file until ``frames_per_file`` frames, then the next file starts."""

    def __init__(self, out: str | os.PathLike, fps: float, img_hw: tuple[int, int], action_dim: int = 0,
                 state_dim: int = 0, mask_keys: Iterable[str] = (), rewards: bool = False, camera: str = DEFAULT_CAMERA,
                 codec: str = "h264", crf: int = 10, pix_fmt: str = "yuv444p", robot_type: str = "unknown",
                 frames_per_file: int = 200_000, int_features: Iterable[str] = ()) -> None:
        self.out = Path(out)
        if self.out.exists():
            raise MasklamError(f"{self.out} already exists; remove it or choose another --out")
        self.tmp = self.out.with_name(self.out.name + ".tmp")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)  # left by a killed run
        self.tmp.mkdir(parents=True)
        rate = stored_rate(fps)  # the video's: timestamps i / fps name its frames within LeRobot's 1e-4 s
        self.fps, self.img_hw, self.camera = float(rate), (int(img_hw[0]), int(img_hw[1])), camera
        self.info_fps = int(rate) if rate.denominator == 1 else float(rate)  # LeRobot's info.json: an int
        self.action_dim, self.state_dim, self.mask_keys, self.rewards = action_dim, state_dim, list(mask_keys), rewards
        self.codec, self.crf, self.pix_fmt, self.frames_per_file = codec, crf, pix_fmt, frames_per_file
        self.robot_type, self.int_features = robot_type, list(int_features)  # per-frame int64 scalars
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict[str, Any]] = []
        self.stats = {name: _Stats() for name in self._numeric_features()}
        self.image_stats = _Stats()
        self.frames = 0
        self.chunk_index, self.file_index, self.file_frames = 0, 0, 0
        self._video: VideoWriter | None = None
        self._data: Any = None

    def _numeric_features(self) -> list[str]:
        names = ["timestamp", "frame_index", "episode_index", "index", "task_index"]
        if self.action_dim:
            names.append(ACTION)
        if self.state_dim:
            names.append(STATE)
        if self.rewards:
            names.append(REWARD)
        return names + self.int_features

    def features(self) -> dict[str, Any]:
        """info.json's features."""
        h, w = self.img_hw
        feats: dict[str, Any] = {self.camera: {
            "dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
            "info": {"video.height": h, "video.width": w, "video.codec": codec_written(self.codec),
                     "video.pix_fmt": self.pix_fmt, "video.is_depth_map": False, "video.fps": self.info_fps,
                     "video.channels": 3, "has_audio": False}}}
        if self.action_dim:
            feats[ACTION] = {"dtype": "float32", "shape": [self.action_dim], "names": None}
        if self.state_dim:
            feats[STATE] = {"dtype": "float32", "shape": [self.state_dim], "names": None}
        if self.rewards:
            feats[REWARD] = _scalar_feature("float32")
        for key in self.mask_keys:
            feats[mask_feature(key)] = {"dtype": "bool", "shape": [h, w], "names": ["height", "width"]}
        feats.update({name: _scalar_feature("int64") for name in self.int_features})
        feats.update({"timestamp": _scalar_feature("float32"), "frame_index": _scalar_feature("int64"),
                      "episode_index": _scalar_feature("int64"), "index": _scalar_feature("int64"),
                      "task_index": _scalar_feature("int64")})
        return feats

    def _roll(self) -> None:
        """Close the current mp4 and parquet file; the next episode starts the next file (of the next chunk after
        CHUNKS_SIZE files)."""
        self._close_files()
        self.file_index += 1
        if self.file_index == CHUNKS_SIZE:
            self.chunk_index, self.file_index = self.chunk_index + 1, 0
        self.file_frames = 0

    def _close_files(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None
        if self._data is not None:
            self._data.close()
            self._data = None

    def add_episode(self, frames: Iterable[np.ndarray], length: int, actions: np.ndarray | None = None,
                    states: np.ndarray | None = None, rewards: np.ndarray | None = None,
                    masks: dict[str, np.ndarray] | None = None, task: str = "",
                    ints: Mapping[str, np.ndarray] | None = None,
                    episode_info: Mapping[str, str] | None = None) -> None:
        """One episode: ``frames`` (chunks of (n, H, W, 3) uint8, ``length`` frames in all) and its per-frame
        arrays (actions (T, A), states (T, S), rewards (T,), masks {key: (T, H, W) bool}, ``ints`` {name: (T,)}
        for the writer's ``int_features``); ``episode_info``: string columns of its row in meta/episodes."""
        import pyarrow as pa

        if self.file_frames and self.file_frames + length > self.frames_per_file:
            self._roll()
        h, w = self.img_hw
        video_path = self.tmp / VIDEO_PATH.format(video_key=self.camera, chunk_index=self.chunk_index,
                                                  file_index=self.file_index)
        if self._video is None:
            video_path.parent.mkdir(parents=True, exist_ok=True)
            self._video = VideoWriter(video_path, self.fps, h, w, self.codec, self.crf, self.pix_fmt)
        start_frame = self._video.frames
        n, episode_image = 0, _Stats()
        for chunk in frames:
            chunk = np.asarray(chunk, np.uint8)
            if chunk.shape[1:] != (h, w, 3):
                raise MasklamError(f"frames of shape {chunk.shape[1:]}, the dataset's are ({h}, {w}, 3)")
            self._video.write(chunk)
            pixels = chunk[:, ::4, ::4].reshape(-1, 3) / 255.0  # (n * h/4 * w/4, 3) in [0, 1]
            self.image_stats.add(pixels, count=len(chunk))  # count: frames
            episode_image.add(pixels, count=len(chunk))
            n += len(chunk)
        if n != length:
            raise MasklamError(f"episode {len(self.episodes)}: {n} frames, expected {length}")
        ep = len(self.episodes)
        task_index = self.tasks.setdefault(task, len(self.tasks))
        columns: dict[str, Any] = {
            "timestamp": pa.array((np.arange(length) / self.fps).astype(np.float32)),
            "frame_index": pa.array(np.arange(length, dtype=np.int64)),
            "episode_index": pa.array(np.full(length, ep, np.int64)),
            "index": pa.array(np.arange(self.frames, self.frames + length, dtype=np.int64)),
            "task_index": pa.array(np.full(length, task_index, np.int64)),
        }
        for name, value, dim in ((ACTION, actions, self.action_dim), (STATE, states, self.state_dim)):
            if dim:
                if value is None or value.shape != (length, dim):
                    raise MasklamError(f"episode {ep}: {name} must be ({length}, {dim}), got "
                                       f"{None if value is None else value.shape}")
                columns[name] = _vector_array(np.asarray(value, np.float32))
        if self.rewards:
            columns[REWARD] = pa.array(np.asarray(rewards, np.float32).reshape(length))
        for key in self.mask_keys:
            columns[mask_feature(key)] = _list_array(np.asarray((masks or {})[key], bool))
        for name in self.int_features:
            value = np.asarray((ints or {}).get(name, ()), np.int64)
            if value.shape != (length,):
                raise MasklamError(f"episode {ep}: {name} must be ({length},), got {value.shape}")
            columns[name] = pa.array(value)
        numeric = {ACTION: actions, STATE: states, REWARD: rewards}
        episode_stats = {self.camera: episode_image.result((3, 1, 1))}
        for name, stat in self.stats.items():
            value = np.asarray(numeric[name] if name in numeric else columns[name].to_numpy(), np.float64)
            stat.add(value.reshape(length, -1))
            episode_stats[name] = _episode_stats(value.reshape(length, -1))
        table = pa.table(columns)
        if self._data is None:
            path = self.tmp / DATA_PATH.format(chunk_index=self.chunk_index, file_index=self.file_index)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data = parquet_module().ParquetWriter(path, table.schema)
        self._data.write_table(table)
        row = {"episode_index": ep, "tasks": [task], "length": length, "data/chunk_index": self.chunk_index,
               "data/file_index": self.file_index, "dataset_from_index": self.frames,
               "dataset_to_index": self.frames + length, f"videos/{self.camera}/chunk_index": self.chunk_index,
               f"videos/{self.camera}/file_index": self.file_index,
               f"videos/{self.camera}/from_timestamp": start_frame / self.fps,
               f"videos/{self.camera}/to_timestamp": (start_frame + length) / self.fps,
               "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0, **(episode_info or {}),
               **episode_stat_columns(episode_stats)}  # LeRobot's edit tools rebuild stats.json from these
        self.episodes.append(row)
        self.frames += length
        self.file_frames += length

    def finish(self, extra_info: dict[str, Any] | None = None,
               features: dict[str, Mapping[int, np.ndarray]] | None = None) -> Path:
        """Write meta/ (info, stats, tasks, episodes), then `features` (name -> episode index -> (T, D) values:
        `add_feature`), and rename the directory into place."""
        import pyarrow as pa

        self._close_files()
        if not self.episodes:
            raise MasklamError("no episodes to write")
        meta = self.tmp / "meta"
        (meta / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        parquet_module().write_table(pa.Table.from_pylist(self.episodes), self.tmp / EPISODES_PATH)
        tasks = sorted(self.tasks, key=self.tasks.get)
        pandas_meta = {"index_columns": ["task"], "column_indexes": [], "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None}], "creator": {"library": "masklam"}, "pandas_version": "2.2.0"}
        table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
        parquet_module().write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}),
                                     meta / "tasks.parquet")
        stats = {name: s.result() for name, s in self.stats.items()}
        stats[self.camera] = self.image_stats.result((3, 1, 1))
        write_json(meta / "stats.json", stats)
        info = {
            "codebase_version": "v3.0", "robot_type": self.robot_type, "total_episodes": len(self.episodes),
            "total_frames": self.frames, "total_tasks": len(tasks), "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": self.info_fps,
            "splits": {"train": f"0:{len(self.episodes)}"}, "data_path": DATA_PATH, "video_path": VIDEO_PATH,
            "features": self.features(), **(extra_info or {}),
        }
        write_json(meta / "info.json", info)
        for name, values in (features or {}).items():
            add_feature(self.tmp, name, values)
        os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        """Remove the unfinished directory."""
        self._close_files_quietly()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _close_files_quietly(self) -> None:
        try:
            self._close_files()
        except Exception:  # closing a half-written encoder after an error: nothing to save
            pass


def add_feature(root: str | os.PathLike, name: str, values: dict[int, np.ndarray]) -> None:
    """Add the per-frame feature ``name`` ((T, D) float32 per episode index, frame order) to every data file of
    the LeRobot directory ``root`` (any version), and to meta/info.json and meta/stats.json; each episode's stats
    to meta/episodes (v3.0) or meta/episodes_stats.jsonl (v2.1, whose loader builds its stats from them)."""
    root = Path(root)
    files = sorted((root / "data").rglob("*.parquet"))
    stats = _Stats()
    per_episode: dict[int, dict[str, Any]] = {}  # each episode's stats, from the values read for its rows
    dim = None
    for path in files:
        table = read_table(path)
        if name in table.column_names:
            table = table.drop_columns([name])
        episode = column_array(table, "episode_index", np.int64)
        frame = column_array(table, "frame_index", np.int64)
        out = None
        for ep in np.unique(episode):
            if int(ep) not in values:
                raise MasklamError(f"{path}: no {name} for episode {int(ep)}")
            v = np.asarray(values[int(ep)], np.float32)
            if int(ep) not in per_episode:
                per_episode[int(ep)] = _episode_stats(v)
            dim = v.shape[1] if dim is None else dim
            out = np.zeros((len(table), dim), np.float32) if out is None else out
            sel = episode == ep
            if frame[sel].max() >= len(v):
                raise MasklamError(f"{path}: episode {int(ep)} has frame {int(frame[sel].max())}, {name} {len(v)} rows")
            out[sel] = v[frame[sel]]
        if out is None:
            continue
        stats.add(out)
        table = table.append_column(name, _vector_array(out))
        tmp = path.with_name(path.name + ".tmp")
        parquet_module().write_table(table, tmp)
        os.replace(tmp, path)
    info_path = root / "meta" / "info.json"
    info = read_json(info_path)
    info["features"][name] = {"dtype": "float32", "shape": [int(dim or 0)], "names": None}
    write_json(info_path, info, indent=4)
    stats_path = root / "meta" / "stats.json"
    if stats_path.is_file() or info.get("codebase_version") == "v3.0":
        all_stats = read_json(stats_path) if stats_path.is_file() else {}
        all_stats[name] = stats.result()
        write_json(stats_path, all_stats, indent=4)
    if info.get("codebase_version") == "v3.0":
        _add_episode_stats(root, name, values, per_episode)
    _edit_episode_stats_v21(root, name, per_episode)


def _edit_episode_stats_v21(root: Path, name: str, per_episode: Mapping[int, dict[str, Any]] | None) -> None:
    """Set (or, with None, remove) feature ``name`` in every line of a v2.1 meta/episodes_stats.jsonl (absent in
    other versions: nothing to do)."""
    path = root / "meta" / "episodes_stats.jsonl"
    if not path.is_file():
        return
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for line in lines:
        ep = int(line["episode_index"])
        if per_episode is None:
            line.get("stats", {}).pop(name, None)
        elif ep in per_episode:
            line.setdefault("stats", {})[name] = per_episode[ep]
        else:
            raise MasklamError(f"{path}: no {name} for episode {ep}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    os.replace(tmp, path)


def drop_feature(root: str | os.PathLike, name: str) -> None:
    """Remove the per-frame feature ``name`` from every data file of the LeRobot directory ``root``, from
    meta/info.json and meta/stats.json, and its per-episode stats (meta/episodes columns, v3.0; episodes_stats.jsonl,
    v2.1)."""
    root = Path(root)
    prefix = f"stats/{name}/"
    for path in [*sorted((root / "data").rglob("*.parquet")), *sorted((root / "meta" / "episodes").rglob("*.parquet"))]:
        table = read_table(path)
        gone = [c for c in table.column_names if c == name or c.startswith(prefix)]
        if gone:
            tmp = path.with_name(path.name + ".tmp")
            parquet_module().write_table(table.drop_columns(gone), tmp)
            os.replace(tmp, path)
    for meta, key in ((root / "meta" / "info.json", "features"), (root / "meta" / "stats.json", None)):
        if meta.is_file():
            record = read_json(meta)
            (record[key] if key else record).pop(name, None)
            write_json(meta, record, indent=4)
    _edit_episode_stats_v21(root, name, None)


def _episode_stats(values: np.ndarray) -> dict[str, Any]:
    """One episode's stats of a feature ((T, D) values)."""
    one = _Stats()
    one.add(values)
    return one.result()


def _add_episode_stats(root: Path, name: str, values: Mapping[int, np.ndarray],
                       known: dict[int, dict[str, Any]]) -> None:
    """meta/episodes' ``stats/<name>/<stat>`` columns (v3.0), each episode's from its values (`known`: those
    already computed, by episode index; the others from `values`)."""
    import pyarrow as pa

    for path in sorted((root / "meta" / "episodes").rglob("*.parquet")):
        table = read_table(path)
        rows = []
        for ep in column_array(table, "episode_index", np.int64):
            if int(ep) not in known and int(ep) not in values:
                raise MasklamError(f"{path}: no {name} for episode {int(ep)}")
            one = known[int(ep)] if int(ep) in known else _episode_stats(np.asarray(values[int(ep)], np.float32))
            rows.append(episode_stat_columns({name: one}))
        for column in rows[0] if rows else ():
            if column in table.column_names:
                table = table.drop_columns([column])
            table = table.append_column(column, pa.array([row[column] for row in rows]))
        tmp = path.with_name(path.name + ".tmp")
        parquet_module().write_table(table, tmp)
        os.replace(tmp, path)
