"""`masklam masks`: add agent masks to every trajectory of a dataset file, in place and resumable; `--evaluate`.

MaskLAM's masks are zero-shot: a segmenter prompted with one fixed box on the first frame of each trajectory
(the agent starts at a known place in the frame) and followed through the video. The prompt is the task's box
(files from `masklam collect`), ``--box X0 Y0 X1 Y1`` or ``--point X Y`` (pixels of the file's frames; also
written ``--box x0,y0,x1,y1``), or ``--auto``: a box per trajectory found from the video's motion
(`masklam.masks.auto`; SAM 2 takes a box, so a point or --auto reaches it as MobileSAM's frame-0 box).
A file naming no task (an imported video) needs one of them. Two segmenters:
``--segmenter sam2`` (SAM 2.1 hiera-tiny video model, local weights, a GPU job) and ``--segmenter mobilesam``
(MobileSAM, weights from `masklam weights fetch mobilesam`; an image model, so each next frame is prompted
with the box of the previous frame's mask). On a CPU, ``--frames-per-traj N --student`` labels only N frames
per trajectory with MobileSAM and masks every frame with a small U-Net trained on them (`distill`).
Each trajectory group gets a ``(T, H, W) bool`` dataset (``sam2_masks`` / ``masks_mobilesam`` by default;
the simulator's ``masks`` are never overwritten), written resumably through part files (`masklam.masks.store`).
Where the file has the simulator's ``masks``, the mean per-frame IoU against them is stored as the group
attribute ``<key>_iou`` and printed; ``--evaluate`` prints the IoU of any mask key per task and trajectory
(`masklam.masks.iou`); ``--preview`` writes a PNG grid of frames with the masks drawn on them
(`masklam.masks.preview`). The SAM 2 model itself is `masklam.masks.sam2`, MobileSAM `masklam.masks.mobilesam`.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from masklam.args import parse
from masklam.data.hdf5 import MASK_KEYS, open_file
from masklam.devices import resolve_device
from masklam.errors import MasklamError, MasklamRuntimeError, one_line
from masklam.locks import output_lock
from masklam.masks.iou import evaluate, mask_iou
from masklam.masks.store import AUTO, Prompt, describe, merge_parts, plan, stored_ious, write_part

WRITABLE_KEYS = tuple(k for k in MASK_KEYS if k != "masks")
"""the mask keys a segmenter may write (MASK_KEYS: what pretrain, export and info read; 'masks': the simulator's)"""
DEFAULT_KEYS = {"sam2": "sam2_masks", "mobilesam": "masks_mobilesam"}


@dataclass
class MasksConfig:
    """Add agent masks to a dataset file (in place; rerun to resume), or --evaluate masks it has."""

    data: Path
    """HDF5 dataset file (from `masklam collect`); a dataset is added to each trajectory group."""
    segmenter: Literal["sam2", "mobilesam"] = "sam2"
    """sam2 (video model, local --weights, GPU job) or mobilesam (image model tracked by boxes; CPU-able)."""
    weights: Path | None = None
    """sam2: a HF-format directory or .safetensors file (required); mobilesam: the checkpoint (default: the one
    `masklam weights fetch mobilesam` cached)."""
    box: tuple[float, float, float, float] | None = None
    """Box prompt on frame 0, x0 y0 x1 y1 (or x0,y0,x1,y1) in pixels of the file's frames (imported video: of the
    --img-size squares, not of the original video) (default: sized for the file's domain; a file naming no task
    needs --box, --point or --auto)."""
    point: tuple[float, float] | None = None
    """A point on the agent in frame 0, x y (or x,y) in pixels of the file's frames, instead of a box (sam2:
    MobileSAM's mask of it gives SAM 2's box)."""
    auto: bool = False
    """Find the agent on frame 0 of each trajectory from the video's motion (masklam.masks.auto; with MobileSAM,
    whose box then prompts sam2)."""
    preview: bool = False
    """Also write <data>.<key>.preview.png: frames of a few trajectories with their masks drawn on them."""
    device: str = "auto"
    """Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:N."""
    batch: int = 8
    """Frames per image-encoder batch."""
    key: str | None = None
    """Name of the (T,H,W) bool dataset to write (or to --evaluate): sam2_masks, masks_mobilesam or masks_student,
    the names training (--mask-key), export and info read; default sam2_masks / masks_mobilesam."""
    frames_per_traj: int | None = None
    """mobilesam --student: label only N evenly spaced frames per trajectory with MobileSAM."""
    label_trajs: int | None = None
    """mobilesam --student: label only this many trajectories (evenly spread over the file; default all)."""
    replace: bool = False
    """Make the masks again in every trajectory, replacing what the file holds under --key (needed when they were
    made with other options; without it such a file is refused)."""
    student: bool = False
    """Train a small 64x64 U-Net on the MobileSAM labels and mask every frame with it (needs --frames-per-traj)."""
    student_steps: int = 500
    """Training steps of the student (batch 32; 500 reached mean IoU 0.84 on cheetah-run, docs/results.md)."""
    evaluate: bool = False
    """Only print the IoU of --key (default: the --segmenter's key) vs the simulator masks, per task and trajectory."""

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = DEFAULT_KEYS[self.segmenter]
        if self.batch < 1:
            raise MasklamError(f"--batch must be >= 1, got {self.batch}")
        if self.evaluate:
            return
        if self.key not in WRITABLE_KEYS:  # another name would be masks nothing downstream reads
            raise MasklamError(f"--key {self.key!r} is not allowed: masks are written as one of "
                               f"{', '.join(WRITABLE_KEYS)} (the names pretrain --mask-key, export and info read; "
                               "'masks' holds the simulator's exact masks)")
        if sum((self.box is not None, self.point is not None, self.auto)) > 1:
            raise MasklamError("give one prompt: --box, --point or --auto")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (0 <= x0 < x1 and 0 <= y0 < y1):
                raise MasklamError(f"--box must be x0 y0 x1 y1 with 0 <= x0 < x1 and 0 <= y0 < y1, got {self.box}")
        if self.segmenter == "sam2" and self.weights is None:
            raise MasklamError("--segmenter sam2 needs --weights (a local SAM 2 directory or .safetensors file)")
        if self.segmenter == "sam2" and (self.student or self.frames_per_traj is not None):
            raise MasklamError("--student and --frames-per-traj go with --segmenter mobilesam")
        if self.frames_per_traj is not None and (self.frames_per_traj < 1 or not self.student):
            raise MasklamError(f"--frames-per-traj must be >= 1 and comes with --student (got {self.frames_per_traj})")
        if self.student and self.frames_per_traj is None:
            raise MasklamError("--student needs --frames-per-traj N (MobileSAM frames per trajectory to learn from)")
        if self.label_trajs is not None and (self.label_trajs < 1 or not self.student):
            raise MasklamError(f"--label-trajs must be >= 1 and comes with --student (got {self.label_trajs})")
        if self.student_steps < 1:
            raise MasklamError(f"--student-steps must be >= 1, got {self.student_steps}")
        resolve_device(self.device)

    @property
    def prompt(self) -> Prompt | None:
        """The frame-0 prompt asked for: a box, a point, AUTO, or None (the file's task box)."""
        return AUTO if self.auto else self.point if self.point is not None else self.box


def add_masks(path: Path, weights: Path | None, box: Prompt | None = None,
              device: str = "auto", batch: int = 8, key: str = "sam2_masks",
              segmenter: str = "sam2", replace: bool = False) -> dict[str, float]:
    """Add ``key`` masks to every trajectory of ``path`` lacking them; returns {group: IoU vs simulator masks}
    for every group that has both (including groups done by an earlier run).

    Each finished trajectory is first stored in ``<path>.<key>.parts/`` (so a killed run loses at most the
    trajectory in progress); at the end a copy of ``path`` receives all of them and replaces ``path``.
    ``segmenter``: "sam2" (``weights`` required) or "mobilesam" (``weights`` default: the fetched checkpoint).
    ``box``: the frame-0 prompt, a box (x0, y0, x1, y1), a point (x, y) or "auto"; None: the task's box.
    ``replace``: make them again in every trajectory, where the file has them too (made otherwise).
    """
    path = Path(path)
    p = plan(path, key, box, made_by={"segmenter": segmenter, "weights": str(weights or "the fetched checkpoint")},
             replace=replace)
    if p.missing:
        if segmenter == "mobilesam" and weights is None:
            from masklam.masks.weights import ensure

            weights = ensure("mobilesam")
        todo = p.todo()
        if todo:
            _segment_all(path, p.parts, todo, p.lengths, weights, p.prompt, device, batch, len(p.names), segmenter)
        if p.prompt == AUTO and len(p.missing) == len(p.names) and not _any_agent(p.parts, p.missing):
            shutil.rmtree(p.parts)  # empty masks only: gone, so that another prompt starts over
            raise MasklamError(f"--auto found no agent in any trajectory of {path} (see the notes); give --box or "
                               "--point")
        merge_parts(path, p.parts, key, p.prompt, weights)
    return stored_ious(path, key)


def video_segmenter(segmenter: str, weights: Path, device: str, batch: int):
    """A function (video (T,H,W,3) uint8: an array or an HDF5 dataset, read a batch of frames at a time, prompt,
    progress, name) -> ((T,H,W) bool masks, the frame-0 prompt used), with its model loaded; an AUTO
    prompt is resolved per video (`masklam.masks.auto`)."""
    dev = resolve_device(device)
    if segmenter == "mobilesam":
        from masklam.masks.auto import find_agent_or_none
        from masklam.masks.mobilesam import load_mobilesam, track

        model = load_mobilesam(weights, dev)

        def segment(video, prompt, progress, name="the video"):
            if prompt == AUTO:
                prompt = find_agent_or_none(model, video, name)
                if prompt is None:
                    return _no_agent(video, progress)
            return track(model, video, prompt, batch=batch, progress=progress), prompt

        return segment, dev
    import masklam.masks.sam2 as sam2_model

    model = sam2_model.load_model(weights, dev)
    box_of = frame0_box(dev)

    def segment_sam2(video, prompt, progress, name="the video"):
        box = box_of(video, prompt, name)
        if box is None:
            return _no_agent(video, progress)
        return sam2_model.segment_video(model, video, box, batch=batch, progress=progress, masks_only=True), box

    return segment_sam2, dev


def _any_agent(parts: Path, names: list[str]) -> bool:
    """Whether --auto found an agent in any of these trajectories' part files (their stored prompt not NaNs)."""
    import h5py

    for name in names:
        with h5py.File(parts / f"{name}.h5", "r") as f:
            if "prompt" in f and not np.isnan(f["prompt"][()]).all():
                return True
    return False


def _no_agent(video: np.ndarray, progress) -> tuple[np.ndarray, tuple[float, ...]]:
    """Empty masks (T, H, W) for a video where --auto found no agent, and the prompt stored for it (NaNs)."""
    from masklam.masks.auto import NOT_FOUND

    if progress is not None:
        progress(len(video))
    return np.zeros(video.shape[:3], bool), NOT_FOUND


def frame0_box(device):
    """A function (video, prompt, name) -> the frame-0 box SAM 2 is prompted with: a box as it is; a point or AUTO
    through MobileSAM (loaded on first use, weights from the package registry): the box of its frame-0 mask of the
    point, or `find_agent`'s box."""
    helper: dict = {}

    def box_of(video, prompt, name):
        if prompt != AUTO and len(prompt) == 4:
            return tuple(prompt)
        if "model" not in helper:
            from masklam.masks.mobilesam import load_mobilesam
            from masklam.masks.weights import ensure

            helper["model"] = load_mobilesam(ensure("mobilesam"), device)
        from masklam.masks.auto import find_agent_or_none
        from masklam.masks.mobilesam import mask_box, track

        if prompt == AUTO:  # None: no agent found (the masks are left empty)
            return find_agent_or_none(helper["model"], video, name)
        box = mask_box(track(helper["model"], video[:1], prompt)[0], 0.1)
        if box is None:
            raise MasklamError(f"MobileSAM found no agent at the point {tuple(prompt)} on frame 0 of {name}; "
                               "pass --box")
        return box

    return box_of


def _segment_all(path: Path, parts: Path, todo: list[str], lengths: dict[str, int], weights: Path,
                 prompt: Prompt, device: str, batch: int, num_trajectories: int,
                 segmenter: str = "sam2") -> None:
    """The segmenter's pass: one part file per trajectory in ``todo``, with a frames/s progress bar."""
    segment, dev = video_segmenter(segmenter, weights, device, batch)
    total = sum(lengths[name] for name in todo)
    print(f"{path}: {len(todo)} of {num_trajectories} trajectories to mask ({total} frames) with {segmenter} on "
          f"{dev}, prompt {describe(prompt)}")
    with open_file(path) as f, tqdm(total=total, unit="frame", desc=f"{segmenter} masks", dynamic_ncols=True) as bar:
        for name in todo:
            group = f[name]
            try:
                masks, used = segment(group["obs"], prompt, bar.update,
                                      f"trajectory {name} of {path}")  # (T, H, W) bool; frames read as used
            except MasklamError:
                raise
            except Exception as e:  # noqa: BLE001 (one line naming the trajectory, never a traceback)
                raise MasklamRuntimeError(f"{segmenter} masks ({path} trajectory {name}): {one_line(e)}") from None
            iou = mask_iou(masks, group["masks"][()]) if "masks" in group else None
            found = prompt == AUTO or len(used) != len(prompt)  # a box found for this trajectory (auto, sam2's point)
            write_part(parts, name, masks, iou, extra={"prompt": np.asarray(used, np.float64)} if found else None)
            if iou is not None:
                bar.set_postfix(iou=f"{iou:.3f}")
                tqdm.write(f"trajectory {name}: IoU vs simulator masks {iou:.3f}")

def split_commas(argv: list[str]) -> list[str]:
    """``--box 1,2,3,4`` / ``--box=1,2,3,4`` / ``--point 5,6`` -> the space-separated form tyro parses."""
    out: list[str] = []
    expect = False
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if flag in ("--box", "--point") and eq:
            out += [flag] + value.split(",")
        elif expect and "," in arg:
            out += [v for v in arg.split(",") if v]
        else:
            out.append(arg)
        expect = arg in ("--box", "--point")
    return out


def main(argv: list[str]) -> int:
    """`masklam masks --data F.h5 [--segmenter sam2|mobilesam] [--weights W] [--box x0 y0 x1 y1 | --point x y |
    --auto] [--key K] [--frames-per-traj N --student] [--evaluate] [--preview]`."""
    cfg = parse(MasksConfig, split_commas(argv))
    if cfg.evaluate:
        evaluate(cfg.data, cfg.key)
        return 0
    with output_lock(cfg.data, " (one `masklam masks` per dataset file at a time)"):
        if cfg.student:
            from masklam.masks.distill import add_student_masks

            ious = add_student_masks(cfg.data, cfg.weights, cfg.frames_per_traj, cfg.label_trajs, cfg.prompt,
                                     cfg.device, cfg.batch, cfg.key, cfg.student_steps, replace=cfg.replace)
        else:
            ious = add_masks(cfg.data, cfg.weights, cfg.prompt, cfg.device, cfg.batch, cfg.key, cfg.segmenter,
                             cfg.replace)
    _print_ious(cfg, ious)
    if cfg.preview:
        from masklam.masks.preview import preview_path, write_preview

        print(f"preview: {write_preview(cfg.data, cfg.key, preview_path(cfg.data, cfg.key))}")
    return 0


def _print_ious(cfg: MasksConfig, ious: dict[str, float]) -> None:
    if ious:
        values = np.array(list(ious.values()))
        print(f"{cfg.key} IoU vs simulator masks over {len(values)} trajectories: mean {values.mean():.3f}, "
              f"min {values.min():.3f}, max {values.max():.3f}")
    else:
        print(f"{cfg.data} has no simulator masks: no IoU to report")
