"""What behaviour cloning regresses: target factories batch -> (B, D) tensor, computed on the fly.

- `latent_target`: the frozen LAM's k = 1 latent for (o_t, o_{t+1}) (latent BC; standardised per
  dimension with `latent_stats` + `standardized`);
- `action_target`: the true action a_t (BC on labels, full-data BC, IDM training);
- `idm_target`: the action an IDM (an `ImagePolicy` with pair_input) infers for (o_t, o_{t+1}).
Targets come from the batch, so no relabelled copy of the data exists. Also here: the env kwargs a
policy records for evaluation (`env_meta_of`), the frame stack a LAM reads (`lam_frame_stack`) and whether a
policy fits the data it is used with (`check_policy_data`; a LAM's: `masklam.train.checkpoint.check_lam_data`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from masklam.downstream.policy import ImagePolicy
from masklam.errors import MasklamError

Batch = dict[str, np.ndarray]
TargetFn = Callable[[Batch], torch.Tensor]
"""batch of windows (obs_t, obs_t1, action_t, [mask_t, mask_t1]) -> (B, D) float32 target"""


def env_meta_of(meta: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Env kwargs that reproduce a dataset's environment (from its HDF5 attrs) for evaluation. Data that record
    no task (MaskLAM's parquet data) record none: evaluation then asks for --task."""
    env: dict[str, Any] = {}
    if meta.get("domain_name") is not None and meta.get("task_name") is not None:
        env["task"] = f"{meta['domain_name']}-{meta['task_name']}"
    for key in ("distractors", "action_repeat", "shadows", "reflections", "multisample", "background_path"):
        if key in meta:
            env[key] = meta[key]
    if "img_hw" in meta:
        hw = meta["img_hw"]
        env["img_size"] = int(hw[0] if isinstance(hw, (list, tuple, np.ndarray)) else hw)
    if meta.get("split") == "eval":  # collected on the held-out videos: evaluation must know (env_spec)
        env["data_video_split"] = "eval"
    env.update(overrides)
    return env


def check_policy_data(policy: ImagePolicy, source: str | Path, paths: Any) -> None:
    """One line before work if a policy (or IDM) of `source` does not fit these data: frames of another size or
    another action size (data of another task)."""
    from masklam.data.dataset import data_layouts

    lay = data_layouts(paths)[0]
    hw = policy.cfg.img_hw
    if tuple(lay.img_hw) != (hw, hw):
        raise MasklamError(f"the policy {source} reads {hw}x{hw} frames, {lay.path} has "
                           f"{lay.img_hw[0]}x{lay.img_hw[1]}")
    if lay.action_dim != policy.cfg.action_dim:
        raise MasklamError(f"the policy {source} was trained with {policy.cfg.action_dim} actions, {lay.path} has "
                           f"{lay.action_dim}: data of another task?")


def lam_frame_stack(lam: nn.Module) -> int:
    """The frame stack a LAM was trained with (its attribute or its cfg's; 1 if it records none)."""
    for obj in (lam, getattr(lam, "cfg", None)):
        fs = getattr(obj, "frame_stack", None) if obj is not None else None
        if isinstance(fs, int):
            return fs
    return 1


def latent_target(lam_dir: str | Path, device: torch.device | str) -> tuple[TargetFn, int, int]:
    """(the frozen LAM's k = 1 latent for a batch, latent dim, frames the LAM reads)."""
    from masklam.models import load_lam

    lam = load_lam(lam_dir).to(device).eval()
    for p in lam.parameters():
        p.requires_grad_(False)
    f = lam_frame_stack(lam)

    @torch.no_grad()
    def latent(b: Batch) -> torch.Tensor:  # with the masks if the LAM takes them
        return lam.label({k: b[k][:, -f:] for k in ("obs_t", "obs_t1", "mask_t", "mask_t1") if k in b}).float()

    return latent, lam.latent_dim, f


def idm_target(idm_dir: str | Path, device: torch.device | str, data: Any = None) -> tuple[TargetFn, int, int]:
    """(an IDM's relabel clipped to [-1, 1] for a batch, action dim, frames the IDM reads); checked against the
    `data` it will relabel, where given (check_policy_data)."""
    idm = ImagePolicy.from_pretrained(idm_dir, device)
    if not idm.cfg.pair_input:
        raise MasklamError(f"{idm_dir} is not an inverse dynamics model (trained without --pair-input)")
    if data is not None:
        check_policy_data(idm, idm_dir, data)
    f = idm.frame_stack

    @torch.no_grad()
    def relabel(b: Batch) -> torch.Tensor:
        return idm.predict(b["obs_t"][:, -f:], b["obs_t1"][:, -f:]).clamp(-1, 1).float()  # (B, A)

    return relabel, idm.cfg.out_dim, f


def action_target(device: torch.device | str) -> tuple[TargetFn, int, int]:
    """(the true action a_t of a batch, -1: the dataset's action dim, 1 frame)."""
    def action(b: Batch) -> torch.Tensor:
        return torch.from_numpy(np.asarray(b["action_t"], np.float32)).to(device)  # (B, A)

    return action, -1, 1


def make_target_fn(target: str, device: torch.device | str, lam: str | Path | None = None,
                   idm: str | Path | None = None, data: Any = None) -> tuple[TargetFn, int, int]:
    """(batch -> (B, D) target on `device`, D (-1: the action dim), frames the target needs) for `target`; an IDM
    is checked against the `data` it will relabel."""
    if target == "latent":
        if lam is None:
            raise MasklamError("target latent needs --lam DIR")
        return latent_target(lam, device)
    if target == "idm":
        if idm is None:
            raise MasklamError("target idm needs --idm DIR")
        return idm_target(idm, device, data)
    if target == "action":
        return action_target(device)
    raise MasklamError(f"unknown target {target!r}; one of latent, action, idm")


@torch.no_grad()
def latent_stats(target_fn: TargetFn, sampler: Any, rng: np.random.Generator,
                 windows: int = 2048, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (floored at 1e-6) of the target over `windows` random training windows."""
    z = torch.cat([target_fn(sampler.sample(batch_size, rng)) for _ in range(max(1, windows // batch_size))])  # (N, D)
    return z.mean(0), z.std(0).clamp_min(1e-6)


def standardized(target_fn: TargetFn, mean: torch.Tensor, std: torch.Tensor) -> TargetFn:
    """The target in standard units: (target - mean) / std per dimension."""
    return lambda b: (target_fn(b) - mean) / std
