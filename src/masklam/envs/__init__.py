"""The Distracting Control Suite and Distracting Meta-World on current MuJoCo, as Gymnasium environments.

`make("cheetah-run", distractors="laom")` -> a `DistractingControlEnv`; `make("mw-push", ...)` -> a
`DistractingMetaWorldEnv` (Meta-World is an optional dependency, imported only then). `SUITES` records
the suite of every task of the papers (`suite_of` tells any task's). The control-suite tasks are also
registered with Gymnasium as "masklam/<domain>-<task>-v0" (every dm_control suite task), e.g.
`gymnasium.make("masklam/cheetah-run-v0", distractors="masklam")`, and the MT10 tasks as
"masklam/mw-<task>-v0".
"""
from __future__ import annotations

import gymnasium as gym

from masklam.envs import metaworld as _mw
from masklam.envs.distractors import PRESETS, DistractorConfig, make_config
from masklam.envs.metaworld import DistractingMetaWorldEnv
from masklam.envs.scene import DistractedScene
from masklam.envs.state import flatten_state
from masklam.envs.suite import DistractingControlEnv
from masklam.envs.suite import dmc_domain_task

TASKS: tuple[str, ...] = ("cheetah-run", "walker-run", "hopper-hop", "humanoid-walk")
"""The control-suite tasks of the papers; any dm_control suite 'domain-task' works as well."""
MW_TASKS: tuple[str, ...] = tuple(_mw.PREFIX + t for t in _mw.MT10)
"""The Meta-World MT10 tasks ('mw-push', ...)."""
SUITES: dict[str, str] = {**{t: "dmc" for t in TASKS}, **{t: "metaworld" for t in MW_TASKS}}
"""The registry: each task of the papers -> its suite ("dmc" or "metaworld")."""

__all__ = ["TASKS", "MW_TASKS", "SUITES", "PRESETS", "DistractorConfig", "DistractedScene", "DistractingControlEnv",
           "DistractingMetaWorldEnv", "make", "flatten_state", "parse_task", "suite_of"]


def suite_of(task: str) -> str:
    """"metaworld" for 'mw-*' tasks, "dmc" otherwise (whether or not the task exists)."""
    return "metaworld" if _mw.is_metaworld_task(task) else "dmc"


def parse_task(task: str) -> tuple[str, str]:
    """'cheetah-run' -> ('cheetah', 'run'), 'mw-pick-place' -> ('mw', 'pick-place'); unknown -> MasklamError.

    Meta-World tasks are checked by name only (Meta-World need not be installed).
    """
    if suite_of(task) == "metaworld":
        _mw.mw_env_name(task)
        return "mw", task[len(_mw.PREFIX):]
    return dmc_domain_task(task)


def make(
    task: str,
    distractors: str | DistractorConfig = "laom",
    video_split: str = "train",
    img_size: int = 64,
    action_repeat: int = 1,
    background_path: str | None = None,
    shadows: bool = True,
    reflections: bool = True,
    max_episode_steps: int | None = None,
    camera_id: int | str | None = None,
    multisample: bool = True,
    **overrides: object,
) -> DistractedScene:
    """A distracted dm_control or Meta-World ('mw-*') task; `overrides` set `DistractorConfig` fields of the preset.

    video_split: "train" (60 procedural / DAVIS train videos) or "eval" (30 held-out videos);
    background_path: a DAVIS-2017 root (JPEGImages/480p/<video>/*.jpg) or any folder of <video>/*.jpg folders
    instead of procedural videos (train/eval split: `masklam.envs.videos.video_split_names`);
    shadows/reflections/multisample: renderer flags (all off renders ~3-5x faster in the control suite and
    ~10x faster in Meta-World's scene, but looks different);
    Meta-World only: camera_id may be a camera name (default "corner"), `mask="moving"` masks only the
    robot's moving parts, `terminate_on_success=True` ends an episode on success.
    """
    if video_split not in ("train", "eval"):
        raise MasklamError(f"unknown video_split {video_split!r}; one of: train, eval")
    render_mode = overrides.pop("render_mode", "rgb_array")
    extra = {}
    if suite_of(task) == "metaworld":
        _mw.mw_env_name(task)  # a bad name fails before Meta-World is imported
        extra = {k: overrides.pop(k) for k in ("mask", "terminate_on_success") if k in overrides}
        cls = _mw.DistractingMetaWorldEnv
    else:
        cls = DistractingControlEnv
    cfg = make_config(distractors, **overrides)
    return cls(
        task,
        cfg,
        video_split=video_split,
        img_size=img_size,
        action_repeat=action_repeat,
        background_path=background_path,
        shadows=shadows,
        reflections=reflections,
        camera_id=camera_id,
        max_episode_steps=max_episode_steps,
        render_mode=render_mode,
        multisample=multisample,
        **extra,
    )


def _register_all() -> None:
    from dm_control import suite

    for domain, name in suite.ALL_TASKS:
        env_id = f"masklam/{domain}-{name}-v0"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="masklam.envs:make", kwargs={"task": f"{domain}-{name}"})
    for task in MW_TASKS:
        if f"masklam/{task}-v0" not in gym.registry:
            gym.register(id=f"masklam/{task}-v0", entry_point="masklam.envs:make", kwargs={"task": task})


from masklam.errors import MasklamError  # noqa: E402

_register_all()
