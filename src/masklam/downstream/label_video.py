"""`masklam label --data VIDEO --out OUT.h5`: video imported as the LAM's training video was made, for labelling.

Video (a file or a folder of them) or a folder of image folders is first imported (`masklam import`) at the LAM's
image size, ``--resize`` and frame rate, into ``.<OUT>.import/frames.h5`` beside OUT (hidden), then labelled as an
HDF5 dataset (`masklam.downstream.label`, which calls `imported`); the folder is removed once OUT is written. That
folder is label's own: ``label.json`` in it records the import's arguments, so an interrupted run resumes the import
and a run with other video or arguments starts it again. Each trajectory's ``source_file`` and ``source_rows`` name
the video and frame of every row.

Frame rates: a latent spans one frame interval of the LAM's training video, so video is imported at that rate
(faster video resampled down); slower video is refused (frames are never invented) unless ``--any-fps``; image
folders record no rate unless ``--fps`` gives the one they were recorded at.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from masklam.errors import MasklamError, note_once
from masklam.files import read_record, write_json

SEGMENTERS = {"sam2_masks": "--segmenter sam2", "masks_mobilesam": "--segmenter mobilesam",
              "masks_student": "--segmenter mobilesam --student --frames-per-traj 4"}
"""How `masklam masks` makes each mask key a LAM may read."""


def check_request(cfg: Any) -> None:
    """One line for options that cannot apply to video (a `LabelConfig` whose --data is video)."""
    if cfg.out.suffix != ".h5":
        raise MasklamError(f"--out must end in .h5: {cfg.data} (video) is labelled into an HDF5 dataset, got {cfg.out}")
    if cfg.camera is not None:
        raise MasklamError(f"--camera picks a LeRobot dataset's camera; {cfg.data} is video")


def imported(cfg: Any, labeller: Any) -> tuple[Path, float | None]:
    """Import ``cfg.data`` (video or image folders; `cfg` a `LabelConfig` with its resize resolved) as the training
    data of `labeller`'s LAM were made, into label's own folder beside ``cfg.out`` (`work_folder`); returns the
    imported file and the frame rate chosen (None: the video's own). Rate and masks are checked before any work;
    called holding ``cfg.out``'s lock."""
    from masklam.data.hdf5 import read_layout
    from masklam.data.importer import ImportConfig, run_import, source_digest
    from masklam.data.sources import open_source

    size, lam_fps, key = labeller.size, labeller.data_fps, labeller.mask_key
    source = open_source(cfg.data, ignore=cfg.out, recursive=cfg.recursive)
    try:
        fps = _rate(cfg, lam_fps, source)
        items = source.items()
        digest = source_digest(items, [source.signature(item) for item in items])
    finally:
        source.close()
    again = (f"masklam import {cfg.data} --out DATA.h5 --img-size {size} --resize {cfg.resize}"
             f"{f' --fps {fps:g}' if fps else ''}{' --recursive' if cfg.recursive else ''}")
    if key is not None:  # video has no masks: said before the import
        raise MasklamError(_masks_needed(cfg, key, again))
    frames = _prepared_folder(work_folder(cfg.out), {"data": str(cfg.data.expanduser().resolve()), "img_size": size,
                                                 "resize": cfg.resize, "fps": fps,
                                                 **({"recursive": True} if cfg.recursive else {})})
    if frames.is_file() and read_layout(frames).attrs.get("source_digest") != digest:  # finished, then SRC changed
        note_once(("label-reimport", str(frames)), f"{cfg.data} changed since its import into {frames} finished: "
                  "imported again")
        frames.unlink()
    note_once(("label-import", str(cfg.out)), f"importing {cfg.data} at {size}x{size} ({cfg.resize}) as the LAM's "
              f"training data, at {f'{fps:g} fps' if fps else 'its own frame rate'}, into {frames}, removed once "
              f"labelled (an interrupted run resumes it); the same as: {again}")
    run_import(ImportConfig(src=cfg.data, out=frames, img_size=size, resize=cfg.resize, fps=fps,
                            recursive=cfg.recursive, progress=cfg.progress))
    return frames, fps


def work_folder(out: Path) -> Path:
    """Label's own folder for the import of video labelled into `out`: hidden, beside it (not data when `out` is
    inside the folder read)."""
    return out.with_name(f".{out.name}.import")


def _prepared_folder(work: Path, args: dict[str, Any]) -> Path:
    """The import's file in label's own folder `work`, which records its arguments: kept when they are these (an
    interrupted run resumes), made again (said) when they differ; a folder label did not make is refused."""
    marker = work / "label.json"
    if work.exists():
        found = read_record(marker)
        if not found and any(work.iterdir()):
            raise MasklamError(f"{work} exists and is not an unfinished labelling (no label.json): remove it, or "
                               "choose another --out")
        if found and found != args:
            note_once(("label-restart", str(work)), f"{work} held an unfinished labelling of other video or "
                      f"arguments ({found.get('data')}): imported again")
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json(marker, args, indent=1)
    return work / "frames.h5"


def _rate(cfg: Any, lam_fps: float | None, source: Any) -> float | None:
    """The frame rate video is imported at (None: its own): --fps, else the LAM's training video's when every video
    is at least as fast (resampled down); with --any-fps, the slowest video's. One line for a rate that would give
    latents of another motion (without --any-fps)."""
    from masklam.data.video import same_rate

    rates, kind = source.rates(), source.kind
    if kind == "frames" and lam_fps and not cfg.fps:
        note_once(("label-frames-rate", str(cfg.data)), f"{cfg.data}: image folders record no frame rate; the LAM was "
                  f"trained on {lam_fps:g} fps video: give --fps, the rate they were recorded at, to have it checked")
    if cfg.fps is not None:
        if lam_fps and not cfg.any_fps and not same_rate(cfg.fps, float(lam_fps)):
            how = ("leave --fps out and the video is resampled to it" if kind == "videos" else
                   "image folders are not resampled: give it images at the LAM's rate (e.g. every other one of "
                   "twice its rate)")
            raise MasklamError(f"--fps {cfg.fps:g}: the LAM {cfg.lam} was trained on {lam_fps:g} fps video (a latent "
                               f"spans one of its frame intervals): {how}, or pass --any-fps")
        return float(cfg.fps)
    if not rates:
        return None
    slowest = min(rates)
    if lam_fps and (slowest > lam_fps or same_rate(slowest, float(lam_fps))):
        return float(lam_fps)
    if lam_fps and not cfg.any_fps:
        slow = [i.name for i in source.items() if i.fps and i.fps < lam_fps and not same_rate(i.fps, float(lam_fps))]
        raise MasklamError(f"the LAM {cfg.lam} was trained on {lam_fps:g} fps video; {len(slow)} of {cfg.data}'s "
                           f"{len(source.items())} are slower ({', '.join(slow[:3])}{' ...' if len(slow) > 3 else ''}"
                           f": {slowest:g} fps): frames are never invented: label them with a LAM trained at their "
                           f"rate, or pass --any-fps (every video then at {slowest:g} fps)")
    return slowest if len(rates) > 1 else None


def _masks_needed(cfg: Any, key: str, again: str) -> str:
    """The one line for a LAM that reads agent masks, which video lacks: the commands that make them."""
    if key not in SEGMENTERS:  # the simulator's exact masks
        return (f"the LAM {cfg.lam} reads the simulator's exact agent masks ({key!r}), which video does not have: "
                f"label video with a LAM trained on a segmenter's masks (pretrain --mask-key "
                f"{', '.join(SEGMENTERS)}) or on none")
    return (f"the LAM {cfg.lam} reads {key!r} agent masks, which video does not have: {again}, then masklam masks "
            f"{SEGMENTERS[key]} --key {key} --data DATA.h5 --auto (or --box/--point, as its training data's were "
            f"made), then masklam label --lam {cfg.lam} --data DATA.h5 --out {cfg.out}")
