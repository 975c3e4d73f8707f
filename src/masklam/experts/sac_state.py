"""What a stable-baselines3 SAC checkpoint leaves out and an exact resume needs.

`SAC.load` re-seeds every random stream from the run's seed and resets the environment to the seed's first
episode, so a resumed run would replay the streams of step 0 and its result would depend on where it stopped.
`capture` takes, beside the checkpoint, the streams it draws from (torch's and numpy's global generators, which
sample the policy's noise and the replay batches; Python's; the action space's, which samples the random actions
before learning starts), the episode in progress (MuJoCo's integration state; the model's arrays, which some
tasks change when an episode starts, e.g. reacher's target; dm_control's step counter; the task's random state;
the last observation) and the Monitor's running episode; `restore` puts them back after
`SAC.load`, so an interrupted run continues as an uninterrupted one would. `grow_buffer` gives a run resumed
with more steps the replay buffer it would have had from the start.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import torch

from masklam.errors import MasklamError
from masklam.files import atomic_path

_INTEGRATION = mujoco.mjtState.mjSTATE_INTEGRATION  # everything mj_step reads: time, qpos, qvel, act, warmstart...


def _parts(model: Any) -> tuple[Any, Any, Any]:
    """(the VecEnv's Monitor, the dm_control environment, its physics) of a SAC trained on one StateEnv."""
    monitor = model.get_env().envs[0]
    dm_env = monitor.unwrapped._env
    return monitor, dm_env, dm_env.physics


def _model_arrays(m: Any) -> dict[str, np.ndarray]:
    """Every array of an MjModel, by attribute name (views: assigning into them changes the model)."""
    out = {}
    for name in dir(m):
        value = None if name.startswith("_") else getattr(m, name, None)
        if isinstance(value, np.ndarray):
            out[name] = value
    return out


def capture(model: Any) -> dict[str, Any]:
    """The random streams and the episode in progress of `model` (a SAC on one StateEnv), at its step."""
    monitor, dm_env, physics = _parts(model)
    m, d = physics.model.ptr, physics.data.ptr
    sim = np.empty(mujoco.mj_stateSize(m, _INTEGRATION), np.float64)
    mujoco.mj_getState(m, d, sim, _INTEGRATION)
    return {
        "step": int(model.num_timesteps),
        "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
        "action_space": model.action_space.np_random.bit_generator.state,
        "physics": sim, "model": {k: v.copy() for k, v in _model_arrays(m).items()},
        "step_count": dm_env._step_count, "reset_next_step": dm_env._reset_next_step,
        "task_random": dm_env.task.random.get_state(),
        "last_obs": model._last_obs, "last_original_obs": model._last_original_obs,
        "last_episode_starts": model._last_episode_starts,
        "monitor": {"rewards": list(monitor.rewards), "needs_reset": monitor.needs_reset},
    }


def save(path: Path, model: Any) -> None:
    """`capture(model)` to `path`, atomically."""
    with atomic_path(path) as tmp:
        torch.save(capture(model), tmp)


def restore(model: Any, state: dict[str, Any]) -> None:
    """Put `state` (from `capture` at this model's step) back into `model` loaded by `SAC.load`."""
    monitor, dm_env, physics = _parts(model)
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    model.action_space.np_random.bit_generator.state = state["action_space"]
    for name, array in _model_arrays(physics.model.ptr).items():
        array[...] = state["model"][name]
    mujoco.mj_setState(physics.model.ptr, physics.data.ptr, state["physics"], _INTEGRATION)
    mujoco.mj_step1(physics.model.ptr, physics.data.ptr)  # dm_control steps by step2 then step1: step1 is due
    dm_env._step_count, dm_env._reset_next_step = state["step_count"], state["reset_next_step"]
    dm_env.task.random.set_state(state["task_random"])
    model._last_obs, model._last_original_obs = state["last_obs"], state["last_original_obs"]
    model._last_episode_starts = state["last_episode_starts"]
    monitor.rewards, monitor.needs_reset = list(state["monitor"]["rewards"]), state["monitor"]["needs_reset"]
    model.get_env()._reset_seeds()  # the seed SAC.load gave the VecEnv would re-seed its next reset


def load(path: Path, model: Any) -> bool:
    """Restore `path` into `model` when it was captured at the model's step; False (nothing restored) when it is
    missing, unreadable or from another step (killed between the checkpoint and it)."""
    try:
        state = torch.load(path, weights_only=False) if path.is_file() else None
    except Exception:  # cut short: resume with SAC.load's re-seeded streams, as before this file existed
        state = None
    if state is None or state.get("step") != model.num_timesteps:
        return False
    restore(model, state)
    return True


def grow_buffer(model: Any, size: int) -> None:
    """Give `model`'s replay buffer room for `size` transitions, keeping those it holds in place (a run started
    with fewer steps has a buffer of that many: SAC samples from what is filled, as a run started this long
    would)."""
    buf = model.replay_buffer
    if buf.buffer_size >= size:
        return
    if buf.full and buf.pos != 0:  # overwritten in a ring: the order of the first steps is lost
        raise MasklamError(f"the replay buffer of {buf.buffer_size} transitions has wrapped; cannot grow it")
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        old = getattr(buf, name)  # (buffer_size, n_envs, ...); next_observations is None with optimize_memory_usage
        if old is None:
            continue
        new = np.zeros((size, *old.shape[1:]), old.dtype)
        new[:len(old)] = old
        setattr(buf, name, new)
    if buf.full:
        buf.pos, buf.full = buf.buffer_size, False
    buf.buffer_size = model.buffer_size = size
