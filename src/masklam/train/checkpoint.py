"""Run-directory checkpoints: `model.safetensors` + `config.json` (for `from_pretrained`) and
`train_state.pt` (model, optimiser and step, for resuming). Every file is written to a temporary
name and renamed, so an interruption never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from masklam.errors import MasklamError
from masklam.files import atomic_path, read_json
from masklam.models.lam import LatentActionModel

TRAIN_STATE = "train_state.pt"


def save_checkpoint(run_dir: Path, model: LatentActionModel, optimizer: torch.optim.Optimizer, step: int,
                    config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Write train_state.pt (resume) and model.safetensors + config.json (from_pretrained) at `step`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "extra": extra or {}}
    with atomic_path(run_dir / TRAIN_STATE) as tmp:
        torch.save(state, tmp)
    model.save_pretrained(run_dir, {**config, "step": step})


def load_train_state(run_dir: Path, device: torch.device) -> dict[str, Any] | None:
    """The saved training state, or None when the run directory has none."""
    path = run_dir / TRAIN_STATE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # truncated or foreign file
        raise MasklamError(f"cannot read {path} ({str(e).splitlines()[0]}); delete it to start over") from None


def check_resumable(run_dir: Path, new_config: dict[str, Any], allowed_changes: frozenset[str],
                    defaults: dict[str, Any] | None = None) -> None:
    """MasklamError if `run_dir` holds a run whose config differs from `new_config` (other than allowed fields).

    A field the old config.json lacks is compared with its value in `defaults` (fields a config records only when
    they differ from their default), else not at all (a field newer than the run)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return
    old = read_json(path)
    defaults = defaults or {}
    for key in [*new_config, *(k for k in defaults if k in old and k not in new_config)]:
        if key in allowed_changes or (key not in old and key not in defaults):
            continue
        value = new_config[key] if key in new_config else defaults[key]
        was = old[key] if key in old else defaults[key]
        if json.loads(json.dumps(value, default=str)) != json.loads(json.dumps(was, default=str)):
            raise MasklamError(f"{run_dir} holds a run with {key}={was!r}, not {value!r}; "
                               "use the same arguments to resume, or another --out")
