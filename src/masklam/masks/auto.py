"""`masklam masks --auto`: find the agent on the first frame of a video with no prompt, from its motion.

What it does, per trajectory (the result is a box prompt for frame 0, then tracked like a given box):

1. **Motion energy.** ``E(p)`` = the mean over the first ``frames`` (16) frame pairs of ``|o_{t+1} - o_t|`` at
   pixel ``p`` (mean over colour channels). The agent articulates, so its pixels change from frame to frame,
   while most of the scene changes slowly. Camera motion is not compensated: on the quickstart data (a
   camera that follows the agent, camera shake, moving background videos) aligning consecutive frames by
   their phase-correlation shift picked the agent no better (frame-0 IoU 0.68 vs 0.74 with the first
   scoring rule on 10 trajectories), since the background videos move on their own.
2. **Proposals.** MobileSAM is prompted on frame 0 with one foreground point at each of the ``points`` (16)
   strongest local maxima of ``E`` (3x3 mean, 7x7 non-maximum suppression); each point gives SAM's three
   multimask outputs, so 48 object-shaped candidates.
3. **Choice.** Each candidate ``M`` scores ``sum_{p in M} (E(p) - tau) * predicted IoU`` with ``tau`` the
   75th percentile of ``E``: pixels moving more than most of the frame count for it, the rest against it,
   so a candidate that leaks into the background or covers only one limb scores below the whole agent.
   Candidates smaller than ``min_area`` (10) pixels, larger than half the frame, or spanning the frame from
   one edge to the opposite one (the floor, the horizon) are refused.
4. The chosen candidate's bounding box, enlarged by 10% per side, is the trajectory's box prompt
   (stored as the group attribute ``<key>_prompt``); `masklam.masks.mobilesam.track` follows it as usual.
   Where nothing moves, or no candidate fits, the trajectory's masks are left empty (prompt NaNs) with a note
   naming it, so one motionless clip does not stop the masks of a whole folder (`find_agent_or_none`); with
   `--student` its frames teach the student nothing, and the student masks it as it masks the rest.

Measured on the quickstart data (cheetah-run, ``laom`` distractors; docs/results.md): tuned on 10 trajectories
(groups 0, 4, ..., 36: tau percentile 75/80/85/90/95, 16 or 32 frames, point vs energy-blob box proposals;
percentile 75 and 80 tied best there, frame-0 IoU 0.75), the frame-0 mask's IoU against the simulator's is 0.72
on 10 other trajectories (groups 1, 9, ..., 73), 8 of them 0.86-0.94 and 2 at 0 (a background region at the
frame's edge, and the floor, outscored the agent). Box proposals from blobs of high energy did worse (0.23-0.33
there). Through the command (`masklam masks --segmenter mobilesam --auto --frames-per-traj 4 --student` on those
10 held-out trajectories, MobileSAM tracking the found box over frames 0, 31, 62, 93): mean IoU of the
MobileSAM labels 0.647 (8 trajectories 0.81, the 2 misses 0), against 0.807 with the task's box. Known
failures: a candidate that joins the agent with a moving background region can outscore the agent alone, and
a torso that moves little can lose to one limb.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from masklam.errors import MasklamError, note_once

FRAMES = 16
POINTS = 16
PERCENTILE = 75.0
MIN_AREA = 10
MARGIN = 0.1


def motion_energy(video: np.ndarray, frames: int = FRAMES) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (H, W) float32: the mean absolute change between consecutive frames of the first
    ``frames`` (all zeros for a single frame)."""
    clip = torch.from_numpy(np.ascontiguousarray(video[:frames + 1])).float()  # (K+1, H, W, 3)
    if len(clip) < 2:
        return np.zeros(video.shape[1:3], np.float32)
    return (clip[1:] - clip[:-1]).abs().mean(dim=(0, 3)).numpy()


def energy_peaks(energy: np.ndarray, n: int = POINTS, window: int = 7) -> np.ndarray:
    """(H, W) energy -> (<= n, 2) float32 points (x, y) at pixel centres: the strongest local maxima of the
    3x3-smoothed map, at most one per ``window`` x ``window`` neighbourhood."""
    e = torch.from_numpy(np.asarray(energy, np.float32))[None, None]  # (1, 1, H, W)
    smooth = F.avg_pool2d(e, 3, 1, 1, count_include_pad=False)
    peak = smooth == F.max_pool2d(smooth, window, 1, window // 2)
    ys, xs = torch.nonzero(peak[0, 0], as_tuple=True)
    order = torch.argsort(smooth[0, 0, ys, xs], descending=True)[:n]
    return torch.stack([xs[order], ys[order]], dim=1).float().numpy()


def spans_frame(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N,) bool: the mask touches both the left and right edges, or both top and bottom."""
    return ((masks[:, :, 0].any(1) & masks[:, :, -1].any(1)) | (masks[:, 0].any(1) & masks[:, -1].any(1)))


def choose(candidates: np.ndarray, predicted_iou: np.ndarray, energy: np.ndarray,
           percentile: float = PERCENTILE, min_area: int = MIN_AREA) -> int | None:
    """The index of the candidate (N, H, W) bool that best covers the moving pixels (module docstring, step 3);
    None when every candidate is refused."""
    tau = np.percentile(energy, percentile)
    area = candidates.sum(axis=(1, 2))
    score = (candidates * (energy - tau)[None]).sum(axis=(1, 2)) * np.asarray(predicted_iou, np.float64)
    refused = (area < min_area) | (area > candidates[0].size / 2) | spans_frame(candidates)
    score = np.where(refused, -np.inf, score)
    best = int(np.argmax(score)) if len(score) else 0
    return best if len(score) and np.isfinite(score[best]) else None


class NoAgentFound(MasklamError):
    """--auto found nothing to prompt with in one video (no motion, or no agent-sized moving object)."""


NOT_FOUND = (float("nan"),) * 4
"""The stored prompt of a trajectory where --auto found no agent (its masks are empty)."""


LEFT_EMPTY = "its masks are left empty, and MaskLAM does not learn from it"


def find_agent_or_none(model, video: np.ndarray, name: str, then: str = LEFT_EMPTY
                       ) -> tuple[float, float, float, float] | None:
    """`find_agent`'s box, or None with a note naming the video and what happens to it (`then`) when it finds none
    there, so one motionless clip does not stop a whole folder's masks (empty masks: the dataset loader names such
    trajectories, and MaskLAM's loss gives an empty mask no weight)."""
    try:
        return find_agent(model, video, name=name)
    except NoAgentFound as e:
        note_once(("auto-none", name), f"{e} (for it alone: import it on its own); {then}")
        return None


def find_agent(model, video: np.ndarray, frames: int = FRAMES, points: int = POINTS,
               margin: float = MARGIN, name: str = "the video") -> tuple[float, float, float, float]:
    """The agent's box (x0, y0, x1, y1) on frame 0 of ``video`` (T, H, W, 3) uint8, found from its motion with
    ``model`` (a `MobileSAM`); a one-line MasklamError naming ``name`` when nothing moves or no candidate fits."""
    from masklam.masks.mobilesam import mask_box

    if len(video) < 2:
        raise NoAgentFound(f"--auto needs at least 2 frames to see motion; {name} has {len(video)}")
    energy = motion_energy(video, frames)
    if not energy.any():
        raise NoAgentFound(f"--auto found no motion in the first {min(frames + 1, len(video))} frames of {name}; "
                           "pass --box or --point")
    prompts = energy_peaks(energy, points)
    frame_hw = tuple(video.shape[1:3])
    logits, iou = model.candidates(model.embed(np.ascontiguousarray(video[:1])), prompts, frame_hw)
    candidates = (logits[:, 1:] > 0).cpu().numpy().reshape(-1, *frame_hw)  # (points * 3, H, W): the multimask outputs
    best = choose(candidates, iou[:, 1:].cpu().numpy().reshape(-1), energy)
    if best is None:
        raise NoAgentFound(f"--auto found no agent-sized moving object on the first frame of {name}; pass --box "
                           "or --point")
    return tuple(float(v) for v in mask_box(candidates[best], margin))
