"""The Distracting Control Suite on current MuJoCo, as Gymnasium environments.

`make("cheetah-run", distractors="laom")` -> a `DistractingControlEnv`; the tasks are also registered
with Gymnasium as "masklam/<domain>-<task>-v0" (every dm_control suite task), e.g.
`gymnasium.make("masklam/cheetah-run-v0", distractors="masklam")`.
"""
from __future__ import annotations

import gymnasium as gym

from masklam.envs.distractors import PRESETS, DistractorConfig, make_config
from masklam.envs.state import flatten_state
from masklam.envs.suite import DistractingControlEnv, parse_task

TASKS: tuple[str, ...] = ("cheetah-run", "walker-run", "hopper-hop", "humanoid-walk")
"""The tasks of the papers; any dm_control suite 'domain-task' works as well."""

__all__ = ["TASKS", "PRESETS", "DistractorConfig", "DistractingControlEnv", "make", "flatten_state", "parse_task"]


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
    camera_id: int | None = None,
    **overrides: object,
) -> DistractingControlEnv:
    """A distracted dm_control task; `overrides` set `DistractorConfig` fields of the preset.

    video_split: "train" (60 procedural / DAVIS train videos) or "eval" (30 held-out videos);
    background_path: a DAVIS-2017 root (JPEGImages/480p/<video>/*.jpg) instead of procedural videos;
    shadows/reflections: renderer flags (both off is ~5x faster to render but looks different).
    """
    if video_split not in ("train", "eval"):
        raise MasklamError(f"unknown video_split {video_split!r}; one of: train, eval")
    render_mode = overrides.pop("render_mode", "rgb_array")
    cfg = make_config(distractors, **overrides)
    return DistractingControlEnv(
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
    )


def _register_all() -> None:
    from dm_control import suite

    for domain, name in suite.ALL_TASKS:
        env_id = f"masklam/{domain}-{name}-v0"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="masklam.envs:make", kwargs={"task": f"{domain}-{name}"})


from masklam.errors import MasklamError  # noqa: E402

_register_all()
