"""Learning-rate schedule: linear warm-up, then constant, linear or cosine decay to zero.

A pure function of the step, so a resumed run needs no scheduler state.
"""
from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup_frac: float = 0.0, kind: str = "constant") -> float:
    """Multiplier of the base learning rate at `step` (0-based) of `total` steps."""
    warmup = int(round(warmup_frac * total))
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown schedule {kind!r}")
