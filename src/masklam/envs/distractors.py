"""Distractors of the Distracting Control Suite (DCS), applied in-scene to a MuJoCo model.

- background: a video on the skybox texture, one frame per environment step, playing forward and
  bouncing back at its ends (or one fixed frame when not dynamic); every episode starts at frame 0;
- composite (instead of the skybox): the video frame replaces the background pixels of the rendered image;
- ground plane alpha: the floor material's alpha (see-through floor shows the video);
- camera shake: a bounded random walk of the camera's horizontal/vertical angle around the tracked
  point, its roll, and its zoom (field of view);
- colour change: a bounded random walk of an RGB offset added to every agent geom's colour.

DCS's parameters at `scale`: angle deltas pi/2*scale, camera velocity std 0.1*scale, max velocity
0.4*scale, zoom in 0.5*scale / out 1.5*scale (fractions of fovy), colour max delta 1.0*scale and step
std 0.03*scale. Every random draw comes from the generator handed to `reset`/`step`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import mujoco
import numpy as np

from masklam.errors import MasklamError


@dataclass
class DistractorConfig:
    """Distractor parameters; a preset fills them, any field can be overridden."""

    background: bool = True
    """show a background video on the skybox"""
    dynamic_background: bool = True
    """play the video (one frame per step, bouncing at its ends); False shows one random frame"""
    num_videos: int | None = None
    """use only the first n videos of the split (None: all of them)"""
    composite: bool = False
    """show the video by replacing background pixels (sky, floor, walls) in image space after rendering, not
    on the skybox (MaskLAM's Distracting Meta-World); the frames are drawn at the image size"""
    background_size: int = 128
    """resolution (pixels) of one skybox face; the video frames are drawn at this size"""
    ground_plane_alpha: float | None = None
    """floor alpha; None: DCS's default when a background is shown (1.0, 0.3 for humanoid), else the model's"""
    camera_scale: float = 0.0
    """DCS camera-shake difficulty (0 = fixed camera)"""
    color_scale: float = 0.0
    """DCS colour-change difficulty (0 = original colours)"""
    camera_angle_delta: float | None = None
    """max horizontal/vertical/roll angle offset in radians (None: pi/2 * camera_scale)"""
    camera_vel_std: float | None = None
    """std of the camera random walk's velocity kicks (None: 0.1 * camera_scale)"""
    camera_max_vel: float | None = None
    """max camera angular velocity per step (None: 0.4 * camera_scale)"""
    camera_zoom_in: float | None = None
    """max zoom-in as a fraction of the field of view (None: 0.5 * camera_scale)"""
    camera_zoom_out: float | None = None
    """max zoom-out as a fraction of the field of view (None: 1.5 * camera_scale)"""
    color_max_delta: float | None = None
    """max absolute RGB offset (None: 1.0 * color_scale)"""
    color_step_std: float | None = None
    """std of the RGB offset's per-step change (None: 0.03 * color_scale)"""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or v is None:
                continue
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise MasklamError(f"distractor parameter {f.name}={v!r} must be a finite number >= 0")
        if self.num_videos is not None and (not isinstance(self.num_videos, int) or self.num_videos < 1):
            raise MasklamError(f"distractor parameter num_videos={self.num_videos!r} must be a positive integer")
        if not isinstance(self.background_size, int) or not 8 <= self.background_size <= 2048:
            raise MasklamError(f"distractor parameter background_size={self.background_size!r} must be in 8..2048")
        if self.ground_plane_alpha is not None and self.ground_plane_alpha > 1:
            raise MasklamError(f"distractor parameter ground_plane_alpha={self.ground_plane_alpha} must be in [0, 1]")
        zoom_in = self.camera_zoom_in if self.camera_zoom_in is not None else 0.5 * self.camera_scale
        if zoom_in >= 1:
            raise MasklamError(f"camera zoom-in {zoom_in} must be < 1 (a fraction of the field of view)")

    def resolved(self) -> dict[str, float]:
        """The camera/colour walk parameters with the scale defaults filled in."""
        c, k = self.camera_scale, self.color_scale

        def pick(v: float | None, default: float) -> float:
            return float(default if v is None else v)

        return dict(
            angle=pick(self.camera_angle_delta, np.pi / 2 * c),
            vel_std=pick(self.camera_vel_std, 0.1 * c),
            max_vel=pick(self.camera_max_vel, 0.4 * c),
            zoom_in=pick(self.camera_zoom_in, 0.5 * c),
            zoom_out=pick(self.camera_zoom_out, 1.5 * c),
            color_max=pick(self.color_max_delta, 1.0 * k),
            color_std=pick(self.color_step_std, 0.03 * k),
        )


PRESETS: dict[str, DistractorConfig] = {
    "none": DistractorConfig(background=False),
    "laom": DistractorConfig(background=True, dynamic_background=True, camera_scale=0.1, color_scale=0.1),
    "masklam": DistractorConfig(background=True, dynamic_background=True),
    "composite": DistractorConfig(background=True, dynamic_background=True, composite=True),
}


def make_config(distractors: str | DistractorConfig = "laom", **overrides: object) -> DistractorConfig:
    """A preset name or a config, with any fields overridden (unknown field -> MasklamError)."""
    if isinstance(distractors, DistractorConfig):
        base = distractors
    elif isinstance(distractors, str) and distractors in PRESETS:
        base = PRESETS[distractors]
    else:
        raise MasklamError(f"unknown distractor preset {distractors!r}; one of: {', '.join(PRESETS)}")
    names = {f.name for f in dataclasses.fields(DistractorConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise MasklamError(f"unknown distractor parameter {unknown[0]!r}; known: {', '.join(sorted(names))}")
    return dataclasses.replace(base, **overrides)  # re-runs __post_init__ validation


class CameraShake:
    """Bounded random walk of (horizontal, vertical, roll) angles and zoom, applied to one camera."""

    def __init__(self, cfg: DistractorConfig):
        p = cfg.resolved()
        self.enabled = cfg.camera_scale > 0 or cfg.camera_angle_delta or cfg.camera_zoom_in or cfg.camera_zoom_out
        self.lo = np.array([-p["angle"]] * 3 + [-p["zoom_in"]])
        self.hi = np.array([p["angle"]] * 3 + [p["zoom_out"]])
        self.vel_std, self.max_vel = p["vel_std"], p["max_vel"]
        self.pos = np.zeros(4)  # (h, v, roll, zoom)
        self.vel = np.zeros(4)

    def reset(self, rng: np.random.Generator) -> None:
        self.pos = rng.uniform(self.lo, self.hi) if self.enabled else np.zeros(4)
        self.vel = np.zeros(4)

    def step(self, rng: np.random.Generator) -> None:
        if not self.enabled:
            return
        self.vel = np.clip(self.vel + rng.normal(0.0, self.vel_std, size=4), -self.max_vel, self.max_vel)
        new = self.pos + self.vel
        out = (new < self.lo) | (new > self.hi)
        self.vel[out] = -self.vel[out]  # bounce off the bounds
        self.pos = np.clip(new, self.lo, self.hi)

    def apply(self, model: mujoco.MjModel, data: mujoco.MjData, cam: int, base_fovy: float) -> None:
        """Rotate camera `cam` about the point it tracks and set its zoom (after the physics step)."""
        model.cam_fovy[cam] = base_fovy * (1.0 + self.pos[3])
        if not np.any(self.pos[:3]):
            return
        xmat = data.cam_xmat[cam].reshape(3, 3)  # columns: camera x (right), y (up), -forward
        eye = data.cam_xpos[cam].copy()
        fwd = -xmat[:, 2]
        target = data.subtree_com[model.cam_bodyid[cam]]
        dist = max(float(np.dot(target - eye, fwd)), 0.1)
        pivot = eye + dist * fwd
        h, v, roll = self.pos[:3]
        rot = _axis_angle(np.array([0.0, 0.0, 1.0]), h) @ _axis_angle(xmat[:, 0], v)
        new_x = rot @ xmat
        new_x = _axis_angle(new_x[:, 2], roll) @ new_x
        data.cam_xpos[cam] = pivot + rot @ (eye - pivot)
        data.cam_xmat[cam] = new_x.reshape(-1)

    @property
    def state(self) -> np.ndarray:
        return self.pos.astype(np.float32)


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """(3, 3) rotation matrix about a unit axis."""
    quat = np.zeros(4)
    mujoco.mju_axisAngle2Quat(quat, np.asarray(axis, np.float64), float(angle))
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, quat)
    return mat.reshape(3, 3)


class ColorShift:
    """Bounded random walk of one RGB offset added to the base colour of every agent geom."""

    def __init__(self, cfg: DistractorConfig):
        p = cfg.resolved()
        self.max_delta, self.step_std = p["color_max"], p["color_std"]
        self.offset = np.zeros(3)

    def reset(self, rng: np.random.Generator) -> None:
        self.offset = rng.uniform(-self.max_delta, self.max_delta, size=3) if self.max_delta > 0 else np.zeros(3)

    def step(self, rng: np.random.Generator) -> None:
        if self.max_delta > 0:
            self.offset = np.clip(self.offset + rng.normal(0.0, self.step_std, 3), -self.max_delta, self.max_delta)

    def apply(self, model: mujoco.MjModel, geoms: np.ndarray, base_rgba: np.ndarray) -> None:
        """geoms (G,) int, base_rgba (G, 4): set geom_rgba (it takes precedence over the material)."""
        rgba = base_rgba.copy()
        rgba[:, :3] = np.clip(rgba[:, :3] + self.offset, 0.0, 1.0)
        model.geom_rgba[geoms] = rgba

    @property
    def state(self) -> np.ndarray:
        return self.offset.astype(np.float32)


class BackgroundPlayer:
    """Which video and frame the skybox shows: frame 0 at reset, +1 per step, bouncing at the ends."""

    def __init__(self, ids: list[int], dynamic: bool):
        self.ids, self.dynamic = ids, dynamic
        self.video_id, self.frame, self.direction, self.length = -1, 0, 1, 1

    def reset(self, rng: np.random.Generator, num_frames: "callable") -> None:
        self.video_id = int(self.ids[int(rng.integers(len(self.ids)))])
        self.length = int(num_frames(self.video_id))
        self.frame = 0 if self.dynamic else int(rng.integers(self.length))
        self.direction = 1

    def step(self) -> None:
        if not self.dynamic or self.length < 2:
            return
        nxt = self.frame + self.direction
        if not 0 <= nxt < self.length:
            self.direction = -self.direction
            nxt = self.frame + self.direction
        self.frame = nxt


def write_skybox(model: mujoco.MjModel, tex: int, image: np.ndarray) -> None:
    """Tile one (R, R, 3) uint8 frame on all six faces of skybox texture `tex` (R x 6R)."""
    h, w = int(model.tex_height[tex]), int(model.tex_width[tex])
    adr, nch = int(model.tex_adr[tex]), int(model.tex_nchannel[tex])
    if image.shape != (w, w, 3) or h != 6 * w:
        raise MasklamError(f"background frame {image.shape} does not fit the skybox texture {w}x{h}")
    faces = model.tex_data[adr : adr + h * w * nch].reshape(6, w, w, nch)
    faces[..., :3] = image
