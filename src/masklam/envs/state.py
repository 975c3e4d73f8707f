"""The proprioceptive state vector of a dm_control observation (the experts' input)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def flatten_state(observation: Mapping[str, np.ndarray]) -> np.ndarray:
    """Concatenate a dm_control observation dict, in its own key order, into one (S,) float32 vector."""
    parts = [np.asarray(v, dtype=np.float32).reshape(-1) for v in observation.values()]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def state_dim(observation_spec: Mapping[str, object]) -> int:
    """S, the length of `flatten_state` for an environment's observation spec."""
    return int(sum(int(np.prod(spec.shape)) for spec in observation_spec.values()))
