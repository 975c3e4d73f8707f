"""`masklam masks --segmenter mobilesam --frames-per-traj N --student`: MobileSAM labels a subset, a U-Net the rest.

1. MobileSAM labels N evenly spaced frames of each chosen trajectory (all, or ``label_trajs`` spread over the
   file), prompted with the task's box (or ``--box``, ``--point``, or the box ``--auto`` finds in that
   trajectory, `masklam.masks.auto`) on the first and the previous label's box after (:func:`track`). Each
   trajectory's labels are a part file in ``<file>.<key>.labels/`` (kept: it is the student's training set
   and makes the step resumable).
2. A small U-Net (:mod:`masklam.masks.student`) is trained on them and saved as ``labels/student.pt`` (its steps
   and seed in ``student.json``: other ones train it again on the same labels).
3. It masks every frame of every trajectory; the trajectories are written like any other masks
   (part files, then one merge into the dataset, see :mod:`masklam.masks.store`).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from masklam.data.hdf5 import open_file
from masklam.devices import resolve_device
from masklam.errors import MasklamError
from masklam.files import read_record, write_json
from masklam.masks.iou import frame_ious, mask_iou
from masklam.masks.store import (AUTO, Prompt, keep_folder, merge_parts, plan, resume_folder, stored_ious,
                                  write_part)

STUDENT_MASKS_IT = "its frames teach the student nothing, and the student masks it as it masks the rest"
"""What happens to a trajectory where --auto found no agent, with --student."""


def labels_dir(path: Path, key: str) -> Path:
    return path.with_name(f"{path.name}.{key}.labels")


def label_frames(length: int, n: int) -> np.ndarray:
    """N evenly spaced frame indices of a trajectory of ``length`` frames (every (length/N)-th, from frame 0)."""
    return np.unique(np.floor(np.arange(min(n, length)) * length / max(min(n, length), 1)).astype(np.int64))


def spread(names: list[str], k: int | None) -> list[str]:
    """``k`` of ``names`` evenly spread over the list (all when k is None or >= len)."""
    if k is None or k >= len(names):
        return list(names)
    return [names[i] for i in np.unique(np.floor(np.arange(k) * len(names) / k).astype(int))]


def _label(path: Path, labels: Path, names: list[str], n: int, weights: Path | None, prompt: Prompt,
           device: str, batch: int) -> None:
    """MobileSAM labels for the trajectories in ``names`` lacking a label file."""
    from masklam.masks.auto import NOT_FOUND, find_agent_or_none
    from masklam.masks.mobilesam import load_mobilesam, track
    from masklam.masks.weights import ensure

    todo = [name for name in names if not (labels / f"{name}.h5").is_file()]
    if not todo:
        return
    model = load_mobilesam(weights or ensure("mobilesam"), resolve_device(device))
    with open_file(path) as f:
        total = sum(len(label_frames(f[name]["obs"].shape[0], n)) for name in todo)
        print(f"{path}: MobileSAM labels {n} frames of {len(todo)} trajectories ({total} frames)")
        with tqdm(total=total, unit="frame", desc="mobilesam labels", dynamic_ncols=True) as bar:
            for name in todo:
                group = f[name]
                idx = label_frames(group["obs"].shape[0], n)
                obs = group["obs"]  # (T, H, W, 3) read where used: the labelled frames, --auto's first ones
                used = (find_agent_or_none(model, obs, f"trajectory {name} of {path}", STUDENT_MASKS_IT)
                        if prompt == AUTO else prompt)
                if used is None:  # no agent found: no labels from it, so the student is not taught "no agent"
                    bar.update(len(idx))
                    idx, used = idx[:0], NOT_FOUND
                    masks = np.zeros((0, *obs.shape[1:3]), bool)
                else:
                    masks = track(model, obs, used, frames=idx, batch=batch, progress=bar.update)
                iou = mask_iou(masks, group["masks"][list(idx)]) if "masks" in group and len(idx) else None
                write_part(labels, name, masks, iou, extra={"frames": idx, "prompt": np.asarray(used, np.float64)})


def _training_set(path: Path, labels: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Labelled frames, their MobileSAM masks, and the per-frame IoU of those masks vs simulator masks (or None)."""
    frames, masks, ious = [], [], []
    taught = 0  # trajectories with labels (--auto may find no agent in some)
    with open_file(path) as f:
        for name in names:
            with h5py.File(labels / f"{name}.h5", "r") as src:
                idx, m = src["frames"][()], src["masks"][()]
            if not len(idx):  # --auto found no agent in it
                continue
            taught += 1
            group = f[name]
            obs = group["obs"]
            frames.append(np.stack([obs[int(i)] for i in idx]))
            masks.append(m)
            if "masks" in group:
                ious.append(frame_ious(m, np.stack([group["masks"][int(i)] for i in idx])))
    if not taught:  # its labels hold nothing: gone, so that another prompt can start over
        shutil.rmtree(labels)
        raise MasklamError(f"{path}: --auto found no agent in any of the {len(names)} labelled trajectories; give "
                           "--box or --point")
    iou = np.concatenate(ious) if ious and len(ious) == taught else None
    return np.concatenate(frames), np.concatenate(masks), iou


def add_student_masks(path: Path, weights: Path | None, frames_per_traj: int, label_trajs: int | None = None,
                      box: Prompt | None = None, device: str = "auto", batch: int = 8,
                      key: str = "masks_mobilesam", steps: int = 500, seed: int = 0,
                      replace: bool = False) -> dict[str, float]:
    """Label a subset with MobileSAM, train the student, mask every frame; returns {group: IoU vs simulator masks}."""
    from masklam.masks.student import load_student, num_params, predict, save_student, train_student

    path = Path(path)
    teacher = str(weights or "the fetched checkpoint")
    p = plan(path, key, box, made_by={"segmenter": "mobilesam student", "weights": teacher,
                                      "frames_per_traj": frames_per_traj, "label_trajs": label_trajs,
                                      "student_steps": steps, "seed": seed}, replace=replace)
    if not p.missing:
        return stored_ious(path, key)
    labels = labels_dir(path, key)
    resume_folder(labels, path, {"prompt": p.prompt if p.prompt == AUTO else list(p.prompt), "key": key,
                                 "frames_per_traj": frames_per_traj, "label_trajs": label_trajs,
                                 "weights": teacher}, "MobileSAM labels", replace)  # the student's own: below
    chosen = spread(p.names, label_trajs)
    _label(path, labels, chosen, frames_per_traj, weights, p.prompt, device, batch)
    student_file, student_record = labels / "student.pt", labels / "student.json"
    made = {"steps": steps, "seed": seed}
    if student_file.is_file() and read_record(student_record) != made:  # {} without one
        student_file.unlink()  # made with other settings (or by an older masklam): trained again on the same labels
    if student_file.is_file():
        net = load_student(student_file)
    else:
        frames, masks, iou = _training_set(path, labels, chosen)
        if iou is not None:
            print(f"MobileSAM labels vs simulator masks: mean IoU {iou.mean():.3f}, p10 {np.percentile(iou, 10):.3f} "
                  f"over {len(iou)} frames")
        with tqdm(total=steps, unit="step", desc="student", dynamic_ncols=True) as bar:
            def progress(step: int, loss: float) -> None:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{loss:.3f}")

            net = train_student(frames, masks, steps=steps, seed=seed, progress=progress)
        write_json(student_record, made)
        save_student(net, student_file)
        print(f"student: {num_params(net)} parameters trained on {len(frames)} frames -> {student_file}")
    todo = p.todo()
    with open_file(path) as f:
        for name in tqdm(todo, unit="traj", desc="student masks", dynamic_ncols=True):
            group = f[name]
            masks = predict(net, group["obs"])  # read a batch of frames at a time
            write_part(p.parts, name, masks, mask_iou(masks, group["masks"][()]) if "masks" in group else None)
    merge_parts(path, p.parts, key, p.prompt, student_file)
    keep_folder(labels, path)  # the merge added masks only: the labels stay the file's for another student
    return stored_ious(path, key)
