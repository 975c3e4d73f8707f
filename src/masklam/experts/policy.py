"""Shipped experts: a small deterministic actor (state -> action) stored as safetensors + JSON.

Only the actor of the SAC agent is kept (a few hundred KB): `load(task)` needs neither
stable-baselines3 nor the critic, and runs batched on numpy states.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from masklam.errors import MasklamError, one_line

SHIPPED_DIR = Path(__file__).resolve().parent


class ExpertPolicy:
    """Deterministic actor: (S,) or (B, S) float32 state -> action in [-1, 1] of the same batch shape."""

    def __init__(self, weights: dict[str, torch.Tensor], meta: dict):
        self.meta = meta
        self.task: str = meta["task"]
        self.action_repeat: int = int(meta["action_repeat"])
        n = len([k for k in weights if k.startswith("hidden.") and k.endswith(".weight")])
        self._layers = [(weights[f"hidden.{i}.weight"], weights[f"hidden.{i}.bias"]) for i in range(n)]
        self._mu = (weights["mu.weight"], weights["mu.bias"])
        self.state_dim = int(self._layers[0][0].shape[1])
        self.action_dim = int(self._mu[0].shape[0])

    @torch.no_grad()
    def __call__(self, state: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(state, np.float32))
        single = x.ndim == 1
        if x.shape[-1] != self.state_dim:
            raise MasklamError(f"expert for {self.task} expects states of size {self.state_dim}, got {tuple(x.shape)}")
        x = x[None] if single else x
        for w, b in self._layers:
            x = torch.relu(x @ w.T + b)
        a = torch.tanh(x @ self._mu[0].T + self._mu[1]).numpy()  # (B, A)
        return a[0] if single else a


def save_expert(path_stem: Path, weights: dict[str, torch.Tensor], meta: dict) -> None:
    """Write `<stem>.safetensors` and `<stem>.json`."""
    from masklam.files import atomic_path, write_text

    with atomic_path(path_stem.with_suffix(".safetensors")) as tmp:  # its folder made, a crash leaves no half file
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp))
    write_text(path_stem.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")


def available() -> list[str]:
    """Tasks with a shipped expert."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.safetensors"))


def load(task: str, path: str | Path | None = None) -> ExpertPolicy:
    """The expert for `task` (shipped with the package), or the one at `path` (a .safetensors file).

    Meta-World tasks ('mw-*') have Meta-World's scripted policy (`ScriptedExpert`), no file.
    """
    from masklam.envs.metaworld import ScriptedExpert, is_metaworld_task

    if is_metaworld_task(task) and path is None:
        return ScriptedExpert(task)
    if path is not None and Path(path).suffix not in ("", ".safetensors", ".json"):
        raise MasklamError(f"an expert is a .safetensors file (with its .json beside it), not {path}")
    stem = Path(path).with_suffix("") if path else SHIPPED_DIR / task
    if not stem.with_suffix(".safetensors").is_file():
        where = (f"at {stem.with_suffix('.safetensors')}" if path
                 else f"shipped (shipped: {', '.join(available()) or 'none'})")
        raise MasklamError(f"no expert for {task!r} {where}; train one with `masklam expert train --task {task}`")
    try:
        meta = json.loads(stem.with_suffix(".json").read_text())
        return ExpertPolicy(load_file(str(stem.with_suffix(".safetensors"))), meta)
    except (OSError, ValueError, KeyError, IndexError, TypeError, SafetensorError) as e:  # missing .json, bad JSON,
        raise MasklamError(f"cannot read the expert {stem} (.safetensors and .json): "  # a corrupt or foreign file
                           f"{one_line(e)}") from None
