"""A render-free Gymnasium view of a dm_control task on its proprioceptive state, for training experts.

Experts are trained without distractors on the state (as both papers do); the state is
`masklam.envs.state.flatten_state`, the same vector the distracted environment reports in
`info["state"]`, so an expert runs unchanged inside it.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from masklam.envs.state import flatten_state, state_dim
from masklam.envs.suite import ActionScaler, load_dm
from masklam.errors import MasklamError


class StateEnv(gym.Env):
    """dm_control task -> Gymnasium, observation = flattened state, actions in [-1, 1], action repeat."""

    metadata = {"render_modes": []}

    def __init__(self, task: str, action_repeat: int = 1):
        if action_repeat < 1:
            raise MasklamError(f"action_repeat must be >= 1, got {action_repeat}")
        self.task, self.action_repeat = task, action_repeat
        self._env = load_dm(task, seed=None)
        spec = self._env.action_spec()
        self._to_task_action = ActionScaler(spec)
        dim = state_dim(self._env.observation_spec())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, np.float32)

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None:  # re-seed the task's own random state: initial poses follow the seed
            self._env.task._random = np.random.RandomState(seed)
        return flatten_state(self._env.reset().observation), {}

    def step(self, action):
        a = self._to_task_action(action)
        reward = 0.0
        for _ in range(self.action_repeat):
            ts = self._env.step(a)
            reward += ts.reward or 0.0
            if ts.last():
                break
        terminated = bool(ts.last() and ts.discount == 0)  # a terminal state; dm_control's time limit: truncated
        return flatten_state(ts.observation), float(reward), terminated, bool(ts.last()) and not terminated, {}
