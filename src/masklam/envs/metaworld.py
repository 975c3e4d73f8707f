"""Distracting Meta-World: the MT10 tasks with the distractors and agent masks of the control suite.

`DistractingMetaWorldEnv("mw-push", ...)` has the interface of `DistractingControlEnv` (Gymnasium API,
(H, W, 3) uint8 frames, `info["mask"]`, `info["state"]`, `info["distractor"]`) plus `info["success"]`.
It is Meta-World v3 (metaworld==3.0.0, an optional dependency imported only here) with:

- the fix for MuJoCo >= 3.17, which stores 12 numbers per equality constraint where Meta-World writes 11
  (`SawyerMocapBase.reset_mocap_welds` crashed every env at construction): only the first 11 are written;
- the skybox texture resized (through `MjSpec`, before compiling) to the background video's resolution;
- the fixed `corner` camera turned 180 degrees about its axis (Meta-World's renders upside down);
- the goal observable (the scripted experts need it) and every reset determined by `reset(seed=...)`:
  `seeded_rand_vec` on, `_freeze_rand_vec` off, and `env.seed(k)` with k derived from the seed;
- the agent = the geoms of the robot's kinematic subtree (root body `base`), or with `mask="moving"` only
  those on bodies that move (the arm and gripper, not the pedestal);
- episodes of 500 steps (Meta-World's limit), truncated; `terminate_on_success` ends them on success.
"""
from __future__ import annotations

import functools
import time
import warnings
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from masklam.envs.distractors import DistractorConfig
from masklam.envs.scene import DistractedScene, SceneOptions, set_floor_alpha
from masklam.errors import MasklamError

MT10: tuple[str, ...] = ("reach", "push", "pick-place", "door-open", "drawer-open", "drawer-close",
                         "button-press-topdown", "peg-insert-side", "window-open", "window-close")
"""The MT10 tasks (MaskLAM's Distracting Meta-World); our names are 'mw-<name>'."""
PREFIX = "mw-"
INSTALL_HINT = 'Meta-World is not installed; pip install -e ".[metaworld]" (or: bash install.sh --metaworld)'
MAX_PATH_LENGTH = 500
ROBOT_ROOT = "base"
"""Root body of the robot's kinematic subtree: its geoms are the agent."""
SCENERY_BODIES = ("world", "RetainingWall")
"""Bodies whose geoms (floor, walls) are background for the composite distractor (the table is kept)."""
UPSIDE_DOWN_CAMERAS = ("corner",)
"""Meta-World cameras whose image is upside down; they are turned 180 degrees about their axis."""
MASKS = ("robot", "moving")
_WELD_DATA = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0)  # what Meta-World writes per weld


def is_metaworld_task(task: str) -> bool:
    return isinstance(task, str) and task.startswith(PREFIX)


def mw_env_name(task: str) -> str:
    """'mw-push' -> Meta-World's env name 'push-v3'; unknown task -> one-line MasklamError.

    The MT10 names are checked without Meta-World; any other v3 task is accepted when Meta-World has it.
    """
    name = task[len(PREFIX):] if is_metaworld_task(task) else ""
    if name in MT10:
        return f"{name}-v3"
    known = ", ".join(PREFIX + t for t in MT10)
    if name:
        try:
            envs = metaworld_modules()["envs"]
        except MasklamError:
            envs = {}
        if f"{name}-v3" in envs:
            return f"{name}-v3"
    raise MasklamError(f"unknown Meta-World task {task!r}; one of: {known}")


@functools.cache
def metaworld_modules() -> dict[str, Any]:
    """Import Meta-World (once): its v3 env classes and scripted policies; MasklamError if not installed."""
    try:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        from metaworld.policies import ENV_POLICY_MAP
    except ImportError as e:
        raise MasklamError(f"{INSTALL_HINT} ({e})") from None
    return {"envs": ALL_V3_ENVIRONMENTS, "policies": ENV_POLICY_MAP}


def reset_mocap_welds(self) -> None:  # noqa: ANN001 (a Meta-World env)
    """Meta-World's `SawyerMocapBase.reset_mocap_welds`, writing only the 11 numbers it means.

    MuJoCo 3.17 stores 12 numbers per equality constraint (3.3 stored 11), so Meta-World's assignment of an
    11-vector to a row fails at every env's construction; the 12th number keeps its compiled default.
    """
    m = self.model
    if m.nmocap > 0 and m.eq_data is not None:
        for i in range(m.eq_data.shape[0]):
            if m.eq_type[i] == mujoco.mjtEq.mjEQ_WELD:
                m.eq_data[i, : len(_WELD_DATA)] = _WELD_DATA


def _compile_with_skybox(self, size: int | None) -> tuple[mujoco.MjModel, mujoco.MjData]:  # noqa: ANN001
    """Compile the env's XML with a size x 6*size skybox (as gymnasium's MujocoEnv would, otherwise)."""
    spec = mujoco.MjSpec.from_file(self.fullpath)
    if size is not None:
        for tex in spec.textures:
            if tex.type == mujoco.mjtTexture.mjTEXTURE_SKYBOX:
                tex.width, tex.height = size, size
    model = spec.compile()
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
    model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
    return model, mujoco.MjData(model)


@functools.cache
def _env_class(env_name: str, skybox: int | None) -> type:
    """Meta-World's class for `env_name` with our MuJoCo-3.17 fix and skybox size."""
    base = metaworld_modules()["envs"][env_name]
    return type(base.__name__ + "Masklam", (base,), {
        "reset_mocap_welds": reset_mocap_welds,
        "_initialize_simulation": lambda self: _compile_with_skybox(self, skybox),
    })


def load_metaworld(task: str, skybox: int | None = None):  # noqa: ANN201 (a Meta-World SawyerXYZEnv)
    """Meta-World's env for 'mw-<name>': fixed for MuJoCo 3.17, goal observable, seeded by `env.seed(k)`."""
    metaworld_modules()  # not installed: the one-line error, whatever is cached
    env = _env_class(mw_env_name(task), skybox)()
    env._partially_observable = False  # the goal is in the state (the scripted experts need it)
    env._freeze_rand_vec = False  # a new layout every reset ...
    env.seeded_rand_vec = True  # ... drawn from env.np_random (set by env.seed)
    env.__dict__.pop("sawyer_observation_space", None)  # cached with the goal hidden: recompute
    env._set_task_called = True
    env.max_path_length = np.iinfo(np.int64).max  # we truncate ourselves
    return env


def subtree_bodies(model: mujoco.MjModel, root: int) -> np.ndarray:
    """(nbody,) bool: the bodies in the kinematic subtree rooted at body `root`."""
    inside = np.zeros(model.nbody, bool)
    inside[root] = True
    for b in range(root + 1, model.nbody):  # parents come before their children
        inside[b] = inside[model.body_parentid[b]]
    return inside


def robot_geoms(model: mujoco.MjModel, mask: str = "robot") -> np.ndarray:
    """Geom ids of the robot (kinematic subtree of body `base`); mask="moving": only those that move."""
    if mask not in MASKS:
        raise MasklamError(f"unknown mask {mask!r}; one of: {', '.join(MASKS)}")
    root = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, ROBOT_ROOT)
    if root < 0:
        raise MasklamError(f"the Meta-World model has no body {ROBOT_ROOT!r} to root the robot at")
    keep = subtree_bodies(model, root)[model.geom_bodyid]
    if mask == "moving":
        keep &= model.body_weldid[model.geom_bodyid] != 0
    return np.flatnonzero(keep)


def scenery_geoms(model: mujoco.MjModel) -> np.ndarray:
    """Geom ids of the floor and walls (the composite distractor's background, with the sky)."""
    ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, b) for b in SCENERY_BODIES]
    return np.flatnonzero(np.isin(model.geom_bodyid, [i for i in ids if i >= 0]))


def camera_index(model: mujoco.MjModel, camera: int | str | None) -> int:
    """A camera given by id or name (default `corner`); MasklamError naming the cameras otherwise."""
    names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
    camera = "corner" if camera is None else camera
    if isinstance(camera, str) and camera in names:
        return names.index(camera)
    if isinstance(camera, int) and not isinstance(camera, bool) and 0 <= camera < model.ncam:
        return camera
    raise MasklamError(f"camera_id={camera!r} is not a camera of this Meta-World model: {', '.join(names)} "
                       f"(or 0..{model.ncam - 1})")


def turn_camera(model: mujoco.MjModel, cam: int) -> None:
    """Turn camera `cam` 180 degrees about its viewing axis (rotates its image by 180 degrees)."""
    quat = np.zeros(4)
    mujoco.mju_mulQuat(quat, model.cam_quat[cam].copy(), np.array([0.0, 0.0, 0.0, 1.0]))
    model.cam_quat[cam] = quat


class DistractingMetaWorldEnv(DistractedScene):
    """A Meta-World v3 task rendered at (img_size, img_size) with distractors, exact robot masks, success."""

    suite = "metaworld"

    def __init__(self, task: str, distractors: DistractorConfig, options: SceneOptions | None = None,
                 mask: str = "robot", terminate_on_success: bool = False, **fields: Any):
        """`options` (or its fields as keyword arguments: img_size, camera_id, ...; `SceneOptions`); `mask`:
        "robot" or "moving" (its moving parts only); `terminate_on_success`: end an episode on success."""
        o = SceneOptions.of(options, **fields)
        mw_env_name(task)
        if mask not in MASKS:
            raise MasklamError(f"unknown mask {mask!r}; one of: {', '.join(MASKS)}")
        self.task, self.video_split = task, o.video_split
        self.action_repeat, self.render_mode = o.action_repeat, o.render_mode
        self.terminate_on_success = bool(terminate_on_success)
        cfg = distractors
        in_scene = cfg.background and not cfg.composite
        self._mw = load_metaworld(task, cfg.background_size if in_scene else None)
        self.max_episode_steps = o.max_episode_steps or max(MAX_PATH_LENGTH // o.action_repeat, 1)

        m = self._mw.model
        camera = camera_index(m, o.camera_id)
        if mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_CAMERA, camera) in UPSIDE_DOWN_CAMERAS:
            turn_camera(m, camera)
            mujoco.mj_forward(m, self._mw.data)
        if not o.multisample:
            m.vis.quality.offsamples = 0
        if cfg.ground_plane_alpha is not None:
            set_floor_alpha(m, cfg.ground_plane_alpha)
        self._init_scene(m, self._mw.data, cfg, o.video_split, o.background_path, o.img_size, camera,
                         robot_geoms(m, mask), o.shadows, o.reflections, background_geoms=scenery_geoms(m),
                         agent_masks=o.agent_masks)

        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.observation_space = gym.spaces.Box(0, 255, (o.img_size, o.img_size, 3), np.uint8)
        self.state_dim = int(self._mw.sawyer_observation_space.shape[0])  # 39
        self._rng: np.random.Generator | None = None
        self._t = 0

    # -- gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode; the task layout (object and goal positions) and the distractors derive from `seed`."""
        task_seed = self._seed_episode(seed)
        t0 = time.perf_counter()
        self._mw.seed(int(task_seed.generate_state(1)[0]))
        state, _ = self._mw.reset()
        self.profile["physics"] += time.perf_counter() - t0
        self._reset_distractors(self._rng)
        self._t = 0
        return self._observe(state, False)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Apply `action` (clipped to [-1, 1]) for action_repeat Meta-World steps; reward is their sum.

        info["success"] is Meta-World's success flag after the last of them.
        """
        if self._rng is None:
            raise MasklamError("step() called before reset()")
        a = np.clip(np.asarray(action, np.float64).reshape(4), -1.0, 1.0)
        reward = 0.0
        t0 = time.perf_counter()
        for _ in range(self.action_repeat):
            state, r, _, _, mw_info = self._mw.step(a)
            reward += float(r)
        self.profile["physics"] += time.perf_counter() - t0
        self._step_distractors(self._rng)
        self._t += 1
        success = bool(mw_info.get("success", False))
        obs, info = self._observe(state, success)
        terminated = self.terminate_on_success and success
        return obs, reward, terminated, self._t >= self.max_episode_steps, info

    def close(self) -> None:
        super().close()
        self._mw.close()

    # -- internals -----------------------------------------------------------------------------
    def _observe(self, state: np.ndarray, success: bool) -> tuple[np.ndarray, dict]:
        obs, mask, video = self._draw()
        info = {"mask": mask, "state": np.asarray(state, np.float32), "success": success,
                "distractor": self._distractor_info(video)}
        return obs, info


class ScriptedExpert:
    """Meta-World's scripted policy for a task as one of our experts: (39,) state -> (4,) action in [-1, 1].

    The policies read the hand, object and goal positions from the (goal-observable) state; they are
    deterministic, so noise (`masklam collect --action-noise`) is added by the caller, seeded.
    """

    action_repeat = 1

    def __init__(self, task: str):
        self.task = task
        self._policy = metaworld_modules()["policies"][mw_env_name(task)]()

    def __call__(self, state: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # "Constant(s) may be too high": the clip below is what is meant
            warnings.simplefilter("ignore", UserWarning)
            a = self._policy.get_action(np.asarray(state, np.float64))
        return np.clip(np.asarray(a, np.float32), -1.0, 1.0)
