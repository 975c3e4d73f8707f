"""`DistractingControlEnv`: a dm_control suite task with DCS distractors, as a Gymnasium environment.

Per step: the action (clipped to [-1, 1]) is applied for `action_repeat` physics-control steps
(rewards summed); the distractors advance one step (video frame, camera walk, colour walk); then one
scene is built from the (shaken) camera and drawn twice: an RGB pass (the observation) and a
segmentation pass whose agent geoms form `info["mask"]`. The skybox texture is shrunk to
`background_size` x 6*`background_size` before the model is compiled, so that uploading a new video
frame each step is cheap. Everything random derives from `reset(seed=...)`.
"""
from __future__ import annotations

import contextlib
import re
import threading
import time
from typing import Any
from collections.abc import Iterator

import gymnasium as gym
import numpy as np

from masklam.envs.distractors import DistractorConfig
from masklam.envs.scene import DistractedScene, SceneOptions, set_floor_alpha
from masklam.envs.state import flatten_state
from masklam.errors import MasklamError

_ASSET_LOCK = threading.Lock()
_SKYBOX_KEY = "./common/skybox.xml"


def dmc_domain_task(task: str) -> tuple[str, str]:
    """'cheetah-run' -> ('cheetah', 'run'); unknown task -> MasklamError."""
    from dm_control import suite

    domain, _, name = task.partition("-")
    if (domain, name) not in suite.ALL_TASKS:
        known = ", ".join(f"{d}-{t}" for d, t in suite.ALL_TASKS[:6])
        raise MasklamError(f"unknown task {task!r}; expected a dm_control suite 'domain-task' such as {known}, ...")
    return domain, name


def load_dm(task: str, seed: int | None = 0):
    """The dm_control suite environment of 'domain-task', its task random state seeded with `seed`.

    dm_control's own XML uses an attribute MuJoCo deprecates (`settotalmass`): that absl warning,
    which says nothing a user can act on, is silenced while loading.
    """
    from absl import logging as absl_logging
    from dm_control import suite

    domain, name = dmc_domain_task(task)
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        return suite.load(domain, name, task_kwargs={"random": seed})
    finally:
        absl_logging.set_verbosity(level)


class ActionScaler:
    """Agent actions in [-1, 1] -> the task's action bounds (clipped first; identity for [-1, 1] or unbounded).

    The one mapping used by the distracted environment and by the experts' state environment, so an
    expert acts identically in both.
    """

    def __init__(self, spec) -> None:
        self.shape = spec.shape
        self.lo = np.broadcast_to(np.asarray(spec.minimum, np.float64), spec.shape).copy()
        self.hi = np.broadcast_to(np.asarray(spec.maximum, np.float64), spec.shape).copy()
        finite = np.all(np.isfinite(self.lo)) and np.all(np.isfinite(self.hi))
        self.rescale = bool(finite and not (np.all(self.lo == -1) and np.all(self.hi == 1)))

    def __call__(self, action: np.ndarray) -> np.ndarray:
        a = np.clip(np.asarray(action, np.float64).reshape(self.shape), -1.0, 1.0)
        return self.lo + (a + 1.0) * 0.5 * (self.hi - self.lo) if self.rescale else a


@contextlib.contextmanager
def _skybox_size(size: int | None) -> Iterator[None]:
    """Temporarily compile models with a size x 6*size skybox (dm_control's shared skybox asset)."""
    if size is None:
        yield
        return
    from dm_control.suite import common

    with _ASSET_LOCK:
        original = common.ASSETS.get(_SKYBOX_KEY)
        if original is not None:
            text = original.decode() if isinstance(original, bytes) else original
            text = re.sub(r'width="\d+"', f'width="{size}"', text)
            text = re.sub(r'height="\d+"', f'height="{size}"', text)
            common.ASSETS[_SKYBOX_KEY] = text.encode() if isinstance(original, bytes) else text
        try:
            yield
        finally:
            if original is not None:
                common.ASSETS[_SKYBOX_KEY] = original


def default_camera(domain: str) -> int:
    """The camera dm_control pixel benchmarks use: 2 for quadruped, 0 (the tracking camera) otherwise."""
    return 2 if domain == "quadruped" else 0


def moving_geoms(m) -> np.ndarray:
    """The agent's geoms: every geom on a body that moves (welded to something other than the world)."""
    return np.flatnonzero(m.body_weldid[m.geom_bodyid] != 0)


class DistractingControlEnv(DistractedScene):
    """A dm_control task rendered at (img_size, img_size) with distractors and exact agent masks."""

    suite = "dmc"

    def __init__(self, task: str, distractors: DistractorConfig, options: SceneOptions | None = None,
                 **fields: Any):
        """`options` (or its fields as keyword arguments: img_size, video_split, ...; `SceneOptions`)."""
        o = SceneOptions.of(options, **fields)
        domain, _ = dmc_domain_task(task)
        self.task, self.video_split = task, o.video_split
        self.action_repeat, self.render_mode = o.action_repeat, o.render_mode
        self._load_task(distractors, o.max_episode_steps)
        m = self._dm.physics.model.ptr
        camera = self._prepare_model(m, domain, distractors, o.camera_id, o.multisample)
        self._init_scene(m, self._dm.physics.data.ptr, distractors, o.video_split, o.background_path, o.img_size,
                         camera, moving_geoms(m), o.shadows, o.reflections, agent_masks=o.agent_masks)
        self._init_spaces(o.img_size)
        self._rng: np.random.Generator | None = None
        self._t = 0

    def _load_task(self, cfg: DistractorConfig, max_episode_steps: int | None) -> None:
        """Load the dm_control task (with a skybox sized for the background) and set the episode length."""
        with _skybox_size(cfg.background_size if cfg.background and not cfg.composite else None):
            self._dm = load_dm(self.task, seed=0)
        step_limit = getattr(self._dm, "_step_limit", 1000)
        self._dm._step_limit = float("inf")  # we truncate ourselves (dm_control would auto-reset)
        base_len = int(step_limit // self.action_repeat) if np.isfinite(step_limit) else 1000 // self.action_repeat
        self.max_episode_steps = max_episode_steps or max(base_len, 1)

    def _prepare_model(self, m, domain: str, cfg: DistractorConfig, camera_id: int | None, multisample: bool) -> int:
        """Check the camera, set multisampling and the floor's transparency on the MuJoCo model; the camera id."""
        camera = default_camera(domain) if camera_id is None else camera_id
        if not isinstance(camera, int) or not 0 <= camera < m.ncam:
            raise MasklamError(f"camera_id={camera_id!r} out of range: task {self.task} has cameras 0..{m.ncam - 1}")
        if not multisample:
            m.vis.quality.offsamples = 0
        alpha = cfg.ground_plane_alpha
        if alpha is None and cfg.background:
            alpha = 0.3 if domain.startswith("humanoid") else 1.0
        if alpha is not None:
            set_floor_alpha(m, alpha)
        return camera

    def _init_spaces(self, img_size: int) -> None:
        """Action space [-1, 1]^A (scaled to the task's bounds), image observations, the state size."""
        spec = self._dm.action_spec()
        self._to_task_action = ActionScaler(spec)
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, np.float32)
        self.observation_space = gym.spaces.Box(0, 255, (img_size, img_size, 3), np.uint8)
        self.state_dim = int(sum(int(np.prod(s.shape)) for s in self._dm.observation_spec().values()))

    # -- gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode; every random choice (initial state, video, walks) derives from `seed`."""
        task_seed = self._seed_episode(seed)
        self._dm.task._random = np.random.RandomState(task_seed.generate_state(4))
        t0 = time.perf_counter()
        time_step = self._dm.reset()
        self.profile["physics"] += time.perf_counter() - t0
        self._reset_distractors(self._rng)
        self._t = 0
        return self._observe(time_step.observation)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Apply `action` for action_repeat physics steps (fewer when the task ends); reward is their sum. The task
        ending (dm_control's last step: no time limit here, so a terminal state, e.g. lqr's) is `terminated`; the
        episode length, `truncated`."""
        if self._rng is None:
            raise MasklamError("step() called before reset()")
        a = self._to_task_action(action)
        reward = 0.0
        t0 = time.perf_counter()
        for _ in range(self.action_repeat):
            time_step = self._dm.step(a)
            reward += float(time_step.reward or 0.0)
            if time_step.last():  # stepping on would silently start a new episode
                break
        self.profile["physics"] += time.perf_counter() - t0
        self._step_distractors(self._rng)
        self._t += 1
        obs, info = self._observe(time_step.observation)
        terminated = bool(time_step.last())
        return obs, reward, terminated, not terminated and self._t >= self.max_episode_steps, info

    # -- internals -----------------------------------------------------------------------------
    def _observe(self, observation: dict) -> tuple[np.ndarray, dict]:
        obs, mask, video = self._draw()
        info = {"mask": mask, "state": flatten_state(observation), "distractor": self._distractor_info(video)}
        return obs, info
