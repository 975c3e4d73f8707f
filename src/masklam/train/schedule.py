"""Learning-rate schedule (linear warm-up, then constant, linear or cosine decay to zero) and the optimisers.

The schedule is a pure function of the step, so a resumed run needs no scheduler state.
"""
from __future__ import annotations

import math

import torch

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def make_optimizer(model: torch.nn.Module, name: str, lr: float,
                   weight_decay: float | None = None) -> torch.optim.Optimizer:
    """Adam or AdamW over the model's parameters (weight decay: torch's default for the optimiser when None)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; one of {', '.join(OPTIMIZERS)}")
    kwargs = {} if weight_decay is None else {"weight_decay": weight_decay}
    return OPTIMIZERS[name](model.parameters(), lr=lr, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


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
