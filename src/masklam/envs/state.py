"""The proprioceptive state: dm_control's observation dict flattened into one float32 vector."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def flatten_state(observation: Mapping[str, np.ndarray]) -> np.ndarray:
    """Concatenate a dm_control observation dict, in its own key order, into a (S,) float32 vector.

    This is the expert's input and the `states` stored in datasets, so it must never change order.
    """
    parts = [np.asarray(v, dtype=np.float32).reshape(-1) for v in observation.values()]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def state_dim(observation_spec: Mapping) -> int:
    """Length of `flatten_state` for a dm_control observation spec."""
    return int(sum(int(np.prod(spec.shape)) for spec in observation_spec.values()))
