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
from masklam.envs.scene import SCENE_FIELDS, DistractedScene, SceneOptions
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


def make(task: str, distractors: str | DistractorConfig = "laom", options: SceneOptions | None = None,
         **kwargs: object) -> DistractedScene:
    """A distracted dm_control or Meta-World ('mw-*') task.

    `options` (or its fields as keyword arguments: video_split, img_size, action_repeat, background_path, shadows,
    reflections, camera_id, max_episode_steps, render_mode, multisample, agent_masks; `SceneOptions`) say how it
    is rendered and stepped (shadows, reflections and multisampling off render ~3-5x faster in the control suite
    and ~10x in Meta-World's scene, but look different); the other keyword arguments set `DistractorConfig` fields
    of the preset, and on Meta-World `mask="moving"` masks only the robot's moving parts and `terminate_on_success=True`
    ends an episode on success (camera_id may be a camera name there, default "corner").
    """
    scene = {k: kwargs.pop(k) for k in list(kwargs) if k in SCENE_FIELDS}
    options = SceneOptions.of(options, **scene)
    extra = {}
    if suite_of(task) == "metaworld":
        _mw.mw_env_name(task)  # a bad name fails before Meta-World is imported
        extra = {k: kwargs.pop(k) for k in ("mask", "terminate_on_success") if k in kwargs}
        cls = _mw.DistractingMetaWorldEnv
    else:
        cls = DistractingControlEnv
    return cls(task, make_config(distractors, **kwargs), options, **extra)


def _register_all() -> None:
    from dm_control import suite

    for domain, name in suite.ALL_TASKS:
        env_id = f"masklam/{domain}-{name}-v0"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="masklam.envs:make", kwargs={"task": f"{domain}-{name}"})
    for task in MW_TASKS:
        if f"masklam/{task}-v0" not in gym.registry:
            gym.register(id=f"masklam/{task}-v0", entry_point="masklam.envs:make", kwargs={"task": task})


_register_all()
