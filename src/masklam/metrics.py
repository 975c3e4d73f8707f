"""Metrics shared by every stage: normalised MSE, the standard error, and metric namespaces.

Metric names are namespaced by stage: `train/...` (optimisation), `probe/...` (linear probe of a
LAM's latents), `bc/...` (behaviour cloning), `decode/...` (latent -> action decoder) and `eval/...`
(online evaluation). Results tables (results.csv) use flat column names defined in
`masklam.downstream.results`.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

NAMESPACES = ("train", "probe", "bc", "decode", "eval")


def normalised_mse(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> float:
    """sum (pred - y)^2 / sum (y - mean(y))^2 over all rows and dimensions; pred, target: (N, D).

    0 is perfect; 1 is as good as predicting the per-dimension mean of the targets."""
    p = torch.as_tensor(pred, dtype=torch.float64)
    t = torch.as_tensor(target, dtype=torch.float64, device=p.device)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} != target shape {tuple(t.shape)}")
    return nmse_from_sums(float((p - t).square().sum()), float((t - t.mean(0)).square().sum()))


def nmse_from_sums(sse: float | torch.Tensor, sst: float | torch.Tensor) -> float:
    """The normalised MSE from accumulated sums: residual sum of squares / total sum of squares (clamped)."""
    return float(sse) / max(float(sst), 1e-12)


def standard_error(values: list[float] | np.ndarray) -> float:
    """Standard error of the mean (sample std / sqrt n); 0 for a single value."""
    v = np.asarray(values, np.float64)
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def namespaced(namespace: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """{"loss": 1.0} -> {"<namespace>/loss": 1.0}; keys already in a namespace are kept as they are."""
    if namespace not in NAMESPACES:
        raise ValueError(f"unknown metric namespace {namespace!r}; one of {', '.join(NAMESPACES)}")
    return {k if "/" in k else f"{namespace}/{k}": v for k, v in metrics.items()}
