"""`masklam export DATA --format lerobot --out DIR`: a masklam dataset as a LeRobotDataset v3.0 directory.

Frames go to one mp4 per file of episodes (h264, yuv444p, crf 10 by default: PSNR >= 35 dB on 64x64 frames;
``--codec av1`` writes AV1, yuv420p), actions to ``action``, states to ``observation.state``, rewards to
``next.reward``, agent masks exactly as bool (H, W) columns (``observation.masks``, ``observation.<key>`` for
the other mask keys), a labelled file's ``latent_action`` and ``decoded_action`` (`masklam label`) as features of
those names, an imported file's provenance (per frame ``source_rows``, the frame's index within its source item:
a video's frame, a LeRobot episode's frame; per episode ``source_item`` and ``source_file`` columns in
meta/episodes), the task string (``domain-task`` of a collected file) per episode. The directory is written as
``DIR.tmp`` and renamed into place when complete. `masklam import DIR` reads it back (its provenance is then the
exported directory; LeRobot's delete_episodes and split_dataset keep ``source_rows`` but drop the episode columns).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import numpy as np
import tyro
from tqdm.auto import tqdm

from masklam.args import parse
from masklam.data.formats import DESCRIPTIONS
from masklam.data.lerobot import DEFAULT_CAMERA, SOURCE_COLUMNS, SOURCE_ROWS
from masklam.data.lerobot_writer import LeRobotWriter
from masklam.data.sources import Episode, Source, open_source
from masklam.data.video import CODECS, Resizer, fullest_pix_fmt
from masklam.errors import MasklamError, note_once
from masklam.files import config_record

BATCH = 256


@dataclass
class ExportConfig:
    """Write a masklam dataset (HDF5, or MaskLAM's parquet data) as a LeRobotDataset v3.0 directory."""

    data: tyro.conf.Positional[Path]
    """The dataset file (HDF5) or MaskLAM parquet data."""
    out: Path
    """Output directory (must not exist)."""
    format: Literal["lerobot"] = "lerobot"
    """Output format: lerobot (LeRobotDataset v3.0)."""
    codec: Literal["h264", "av1"] = "h264"
    """Video codec: h264 (libx264, yuv444p; mpeg4, yuv420p where PyAV lacks libx264) or av1 (LeRobot's default;
    yuv420p)."""
    crf: int = 10
    """Video quality: constant rate factor (lower is better and larger)."""
    camera: str | None = None
    """The LeRobot feature name of the frames (default: the camera a LeRobot import read them from, else
    observation.image)."""
    fps: float | None = None
    """Frame rate to record (default: the file's `fps` attr, else 30)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise MasklamError(f"--codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        if not 0 <= self.crf <= 63:
            raise MasklamError(f"--crf must be in 0..63, got {self.crf}")
        if self.fps is not None and not self.fps > 0:
            raise MasklamError(f"--fps must be > 0, got {self.fps}")
        if self.out.suffix.lower() in (".h5", ".hdf5"):  # a directory named like a file: a slip, said
            raise MasklamError(f"--out is the LeRobot dataset's directory; {self.out} is named like an HDF5 file")


PER_FRAME_FEATURES = ("latent_action", "decoded_action")
"""per-frame columns of a labelled HDF5 file (`masklam label`) an export carries as LeRobot features"""


class _Column(Mapping[int, np.ndarray]):
    """One per-frame column of an HDF5 file, episode index -> (T, D) float32, read when asked (not all at once)."""

    def __init__(self, path: Path, items: list[Any], name: str) -> None:
        self.path, self.groups, self.name = path, [item.ref for item in items], name

    def __getitem__(self, index: int) -> np.ndarray:
        from masklam.data.hdf5 import open_file, read_array

        with open_file(self.path) as f:
            return np.asarray(read_array(self.path, f[self.groups[index]], self.name), np.float32)

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and 0 <= index < len(self.groups)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.groups)))

    def __len__(self) -> int:
        return len(self.groups)


def _batches(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    buf: list[np.ndarray] = []
    for frame in frames:
        buf.append(frame)
        if len(buf) == BATCH:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


def export(cfg: ExportConfig) -> Path:
    """Write ``cfg.data`` as a LeRobot v3.0 dataset in ``cfg.out``; returns the directory."""
    if cfg.out.exists():
        raise MasklamError(f"{cfg.out} already exists; remove it or choose another --out")
    source = open_source(cfg.data)
    try:
        return _export(cfg, source)
    finally:
        source.close()


def _export(cfg: ExportConfig, source: Source) -> Path:
    """`export` of an open source: every check first, then the writer."""
    from masklam.data.hdf5 import MASK_KEYS

    if source.kind not in ("hdf5", "masklam-parquet"):
        raise MasklamError(f"{cfg.data} is {DESCRIPTIONS[source.kind]}; export writes masklam datasets (HDF5): "
                           f"masklam import {cfg.data} --out DATA.h5 first")
    lay = source.layout
    h, w = lay.img_hw
    if h != w or h < 8:
        raise MasklamError(f"{cfg.data}: frames are {w}x{h}; export writes square frames of at least 8x8")
    resizer = Resizer(h, "crop")
    fps = cfg.fps or float(lay.attrs.get("fps") or 0)
    if not fps:  # image folders, simulated data: no rate recorded
        fps = 30.0
        note_once(("export-fps", str(cfg.data)), f"{cfg.data} records no frame rate: exported at 30 fps (give --fps)")
    task = (f"{lay.attrs['domain_name']}-{lay.attrs['task_name']}"
            if "domain_name" in lay.attrs and "task_name" in lay.attrs else "")
    masks = [k for k in MASK_KEYS if lay.has(k)]
    lerobot = lay.attrs.get("source_format") == "lerobot"  # a LeRobot import: its camera's own name
    camera = cfg.camera or (str(lay.attrs.get("camera") or DEFAULT_CAMERA) if lerobot else DEFAULT_CAMERA)
    robot = lay.attrs.get("robot_type") or lay.attrs.get("domain_name") or "unknown"
    provenance = source.kind == "hdf5" and lay.has(SOURCE_ROWS)  # an imported file's: kept
    if source.kind == "hdf5" and SOURCE_ROWS in lay.partial_keys:
        note_once(("export-provenance", str(cfg.data)), f"{cfg.data}: only some trajectories record {SOURCE_ROWS} "
                  "(imported ones, merged with others): the export carries no provenance")
    writer = LeRobotWriter(cfg.out, fps, (h, w), lay.action_dim, lay.state_dim, masks, lay.has("rewards"),
                           camera, cfg.codec, cfg.crf, fullest_pix_fmt(cfg.codec), robot_type=str(robot),
                           int_features=[SOURCE_ROWS] if provenance else [])
    bar = tqdm(total=lay.num_frames, unit="frame", desc="export", disable=not cfg.progress, dynamic_ncols=True)
    try:
        for item in source.items():
            ep: Episode = source.read(item, resizer)

            def counted(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
                for chunk in _batches(frames):
                    bar.update(len(chunk))
                    yield chunk

            origin = ep.origin if provenance else {}  # the first source (`HDF5Source`): rows, item, file
            rows = {SOURCE_ROWS: origin["origin_rows"]} if origin else {}
            where = {key: origin[key.replace("source_", "origin_")] for key in SOURCE_COLUMNS} if origin else {}
            writer.add_episode(counted(ep.frames), int(item.length or 0), ep.actions, ep.states, ep.rewards,
                               ep.masks, ep.task or task, rows, where)
        from masklam.data.hdf5 import plain

        attrs = {k: plain(v) for k, v in lay.attrs.items()}  # `masklam import` restores them (task, env settings)
        per_frame = {name: _Column(cfg.data, source.items(), name) for name in PER_FRAME_FEATURES if lay.has(name)}
        return writer.finish({"masklam": {"source": str(cfg.data.expanduser().resolve()), "attrs": attrs,
                                          "export_config": config_record(cfg)}}, per_frame)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()


def main(argv: list[str]) -> int:
    cfg = parse(ExportConfig, argv)
    out = export(cfg)
    print(f"{out}: LeRobot v3.0 dataset ({cfg.codec}, crf {cfg.crf})")
    return 0
