"""`DistractedScene`: the distractors and the two-pass rendering both suites share.

A subclass (one per suite) owns the simulator; after building its MuJoCo model it calls `_init_scene`
with the model, the camera and the agent's geoms, and then, per episode and step, `_reset_distractors`,
`_step_distractors` and `_draw`. The background video is shown one of two ways:

- in-scene (the DCS way): the video frame is the skybox texture, re-uploaded when it changes;
- composite (`DistractorConfig.composite`, the MaskLAM Meta-World way): after rendering, every pixel
  the segmentation pass finds on the skybox or on a background geom is replaced by the video frame.

Both passes draw one `MjvScene`, so the agent mask (and the composite's background mask) is aligned
with the RGB frame pixel for pixel.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from masklam.envs.distractors import BackgroundPlayer, CameraShake, ColorShift, DistractorConfig, write_skybox
from masklam.envs.render import SceneRenderer
from masklam.envs.videos import load_videos
from masklam.errors import MasklamError


@dataclass(frozen=True)
class SceneOptions:
    """How a distracted task is rendered and stepped: what every task's constructor and `masklam.envs.make` share.

    video_split: "train" (60 procedural / DAVIS train videos) or "eval" (30 held-out videos); background_path: a
    DAVIS-2017 root or any folder of <video>/*.jpg folders instead of the procedural videos; shadows, reflections,
    multisample: renderer flags; camera_id: the camera (an index, or a name in Meta-World); agent_masks: render the
    segmentation pass for info["mask"] (off: info["mask"] is None where no pass is needed anyway, ~12% of a DCS
    step; evaluation turns it off)."""

    video_split: str = "train"
    img_size: int = 64
    action_repeat: int = 1
    background_path: str | None = None
    shadows: bool = True
    reflections: bool = True
    camera_id: int | str | None = None
    max_episode_steps: int | None = None
    render_mode: str | None = "rgb_array"
    multisample: bool = True
    agent_masks: bool = True

    @classmethod
    def of(cls, options: "SceneOptions | None" = None, **fields: Any) -> "SceneOptions":
        """`options` (default: the defaults) with `fields` replaced; a field it does not have is a TypeError, as an
        unknown keyword argument is; the values are checked (one-line MasklamError)."""
        o = dataclasses.replace(options or cls(), **fields)
        if o.video_split not in ("train", "eval"):
            raise MasklamError(f"unknown video_split {o.video_split!r}; one of: train, eval")
        check_common(o.img_size, o.action_repeat, o.max_episode_steps)
        return o


SCENE_FIELDS = frozenset(f.name for f in dataclasses.fields(SceneOptions))
"""the keyword arguments that are SceneOptions fields"""


def check_common(img_size: object, action_repeat: object, max_episode_steps: object) -> None:
    """One-line MasklamError for an out-of-range image size, action repeat or episode length."""
    if not isinstance(img_size, int) or not 8 <= img_size <= 480:
        raise MasklamError(f"img_size={img_size!r} must be an integer in 8..480")
    if not isinstance(action_repeat, int) or action_repeat < 1:
        raise MasklamError(f"action_repeat={action_repeat!r} must be a positive integer")
    if max_episode_steps is not None and (not isinstance(max_episode_steps, int) or max_episode_steps < 1):
        raise MasklamError(f"max_episode_steps={max_episode_steps!r} must be a positive integer")


def agent_base_rgba(model: mujoco.MjModel, geoms: np.ndarray) -> np.ndarray:
    """(G, 4) colour each geom is drawn with: its material's where the geom keeps MuJoCo's default rgba."""
    rgba = model.geom_rgba[geoms].copy()
    mat = model.geom_matid[geoms]
    use_mat = (mat >= 0) & np.all(np.isclose(rgba, [0.5, 0.5, 0.5, 1.0]), axis=1)
    rgba[use_mat] = model.mat_rgba[mat[use_mat]]
    return rgba


def set_floor_alpha(model: mujoco.MjModel, alpha: float) -> None:
    """Alpha of every plane geom on the world body (through its material when it has one)."""
    floors = np.flatnonzero((model.geom_bodyid == 0) & (model.geom_type == mujoco.mjtGeom.mjGEOM_PLANE))
    for g in floors:
        if model.geom_matid[g] >= 0:
            model.mat_rgba[model.geom_matid[g], 3] = alpha
        else:
            model.geom_rgba[g, 3] = alpha


class DistractedScene(gym.Env):
    """Distractors (video, camera shake, colour change) and RGB + mask rendering of one MuJoCo model."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def _init_scene(
        self,
        model: mujoco.MjModel,
        data: mujoco.MjData,
        cfg: DistractorConfig,
        video_split: str,
        background_path: str | None,
        img_size: int,
        camera_id: int,
        agent_geoms: np.ndarray,
        shadows: bool,
        reflections: bool,
        background_geoms: np.ndarray | None = None,
        agent_masks: bool = True,
    ) -> None:
        """Set up the distractors and the renderer (the model's skybox must already have its final size)."""
        self._model, self._data, self.config = model, data, cfg
        self._agent_masks = agent_masks
        self.camera_id, self.img_size = camera_id, img_size
        self._base_fovy = float(model.cam_fovy[camera_id])
        self.agent_geoms = np.asarray(agent_geoms, np.int64)
        self._agent_rgba = agent_base_rgba(model, self.agent_geoms)  # (G, 4)
        self._sky = -1
        self._videos = None
        self._composite = bool(cfg.background and cfg.composite)
        if cfg.background:
            if self._composite:
                size = img_size
            else:
                skies = np.flatnonzero(model.tex_type == mujoco.mjtTexture.mjTEXTURE_SKYBOX)
                if skies.size == 0:
                    raise MasklamError(f"task {self.task} has no skybox texture to show a background video on")
                self._sky = int(skies[0])
                size = int(model.tex_width[self._sky])
            self._videos = load_videos(video_split, size, background_path)
            ids = self._videos.ids[: cfg.num_videos] if cfg.num_videos else self._videos.ids
            self._player = BackgroundPlayer(list(ids), cfg.dynamic_background)
        self._is_background = np.zeros(model.ngeom + 1, bool)  # indexed by geom id + 1; 0 = no geom (sky)
        self._is_background[0] = True
        if background_geoms is not None:
            self._is_background[np.asarray(background_geoms, np.int64) + 1] = True
        self._shake = CameraShake(cfg)
        self._color = ColorShift(cfg)
        self._renderer = SceneRenderer(model, img_size, img_size, self.agent_geoms, shadows, reflections)
        self.profile = dict(physics=0.0, texture=0.0, scene=0.0, rgb=0.0, segmentation=0.0)
        self._shown: tuple[int, int] | None = None
        self._last_obs: np.ndarray | None = None

    def _seed_episode(self, seed: int | None) -> np.random.SeedSequence:
        """Seed the episode from `seed`: the distractors' generator (`self._rng`), and the task's seed (returned)."""
        gym.Env.reset(self, seed=seed)
        episode = np.random.SeedSequence(int(self.np_random.integers(2**63)))
        task_seed, distractor_seed = episode.spawn(2)
        self._rng = np.random.default_rng(distractor_seed)
        return task_seed

    def _reset_distractors(self, rng: np.random.Generator) -> None:
        if self._videos is not None:
            self._player.reset(rng, self._videos.num_frames)
        self._shake.reset(rng)
        self._color.reset(rng)

    def _step_distractors(self, rng: np.random.Generator) -> None:
        if self._videos is not None:
            self._player.step()
        self._shake.step(rng)
        self._color.step(rng)

    def _draw(self) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
        """Render the current state: obs (H, W, 3) uint8, agent mask (H, W) bool (None with agent_masks off and
        in-scene backgrounds), (video id, frame)."""
        m, d = self._model, self._data
        t0 = time.perf_counter()
        video = (-1, -1)
        if self._videos is not None:
            video = (self._player.video_id, self._player.frame)
            if not self._composite and video != self._shown:
                write_skybox(m, self._sky, self._videos.frame(*video))
                self._renderer.upload_texture(self._sky)
                self._shown = video
        if self._color.max_delta > 0:
            self._color.apply(m, self.agent_geoms, self._agent_rgba)
        self._shake.apply(m, d, self.camera_id, self._base_fovy)
        t1 = time.perf_counter()
        self._renderer.update(d, self.camera_id)
        t2 = time.perf_counter()
        obs = self._renderer.rgb()  # (H, W, 3) uint8
        t3 = time.perf_counter()
        if self._composite:
            geom = self._renderer.geom_ids()  # (H, W) geom id, -1 where no geom
            mask = self._renderer.is_agent(geom)
            background = self._is_background[geom + 1]
            obs[background] = self._videos.frame(*video)[background]
        elif self._agent_masks:
            mask = self._renderer.agent_mask()  # (H, W) bool
        else:
            mask = None
        t4 = time.perf_counter()
        p = self.profile
        p["texture"] += t1 - t0
        p["scene"] += t2 - t1
        p["rgb"] += t3 - t2
        p["segmentation"] += t4 - t3
        self._last_obs = obs
        return obs, mask, video

    def _distractor_info(self, video: tuple[int, int]) -> dict:
        return {
            "video_id": int(video[0]),
            "video_frame": int(video[1]),
            "camera": self._shake.state[:3].copy(),
            "zoom": float(self._shake.state[3]),
            "color": self._color.state.copy(),
        }

    def render(self) -> np.ndarray | None:
        """The last observation (H, W, 3) uint8."""
        return self._last_obs

    def close(self) -> None:
        self._renderer.close()
