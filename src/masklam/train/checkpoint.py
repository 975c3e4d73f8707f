"""Run-directory checkpoints: `model.safetensors` + `config.json` (for `from_pretrained`) and
`train_state.pt` (model, optimiser and step, for resuming). Every file is written to a temporary
name and renamed, so an interruption never leaves a half-written checkpoint. Also what a LAM's run
directory says about the data it can read (`lam_mask_key`, `check_lam_data`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from masklam.errors import MasklamError, note_once
from masklam.files import atomic_path, read_json
from masklam.models.lam import LatentActionModel
from masklam.models.pretrained import fetch_pretrained

TRAIN_STATE = "train_state.pt"


def save_checkpoint(run_dir: Path, model: LatentActionModel, optimizer: torch.optim.Optimizer, step: int,
                    config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Write model.safetensors + config.json (from_pretrained), then train_state.pt (resume), at `step`: killed
    between the two, the run resumes from the older state and writes both again, so a run whose train_state.pt says
    it is done has the model of that step."""
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(run_dir, {**config, "step": step})
    state = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "extra": extra or {}}
    with atomic_path(run_dir / TRAIN_STATE) as tmp:
        torch.save(state, tmp)


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
            if key not in old:  # a run from before the field was recorded: what it ran with is the old default
                raise MasklamError(f"{run_dir} holds a run from before {key} was recorded, which ran with "
                                   f"{key}={was!r}, not {value!r}; pass --{key.replace('_', '-')} {was} to resume it, "
                                   "or use another --out")
            raise MasklamError(f"{run_dir} holds a run with {key}={was!r}, not {value!r}; "
                               "use the same arguments to resume, or another --out")


def check_same_data(run_dir: Path, new_config: dict[str, Any]) -> None:
    """MasklamError if `run_dir` holds a run that split other trajectories (the data changed since it started: a
    resumed run would probe on trajectories it trained on)."""
    path = run_dir / "config.json"
    old = read_json(path) if path.is_file() else {}
    for key in ("train_trajectories", "heldout_trajectories", "num_train_windows"):
        if key in old and old[key] != new_config[key]:
            raise MasklamError(f"{run_dir} holds a run on other data ({key} differ: the data changed since it "
                               "started); resume it on the same data, or use another --out")


def lam_config(lam_dir: str | Path) -> dict[str, Any]:
    """The config.json of a LAM (a run directory or a Hub repo id): one fetch, one read, one-line errors."""
    path = fetch_pretrained(lam_dir, "LAM") / "config.json"
    cfg = read_json(path, "LAM config")
    if not isinstance(cfg, dict):
        raise MasklamError(f"bad LAM config {path}: expected an object")
    return cfg


def mask_key_of(cfg: dict[str, Any]) -> str | None:
    """The dataset key of the agent masks a LAM with this config reads as input (None when it takes none)."""
    return cfg.get("mask_key", "masks") if cfg.get("model", {}).get("mask_channel") else None


def lam_mask_key(lam_dir: str | Path | None) -> str | None:
    """The dataset key of the agent masks a LAM (a directory or a Hub repo id) reads as input (None when it takes
    none): labelling with a mask-channel LAM needs the same masks it was trained with."""
    return None if lam_dir is None else mask_key_of(lam_config(lam_dir))


def check_lam_data(lam_dir: str | Path, paths: Any, observations: str | None = None,
                   episode_length: int | None = None, any_fps: bool = False) -> None:
    """One line before work if the LAM of `lam_dir` (a directory or a Hub repo id) cannot label these data: frames
    of another size, data without the agent masks it reads as input, or (unless `any_fps`) video at another frame
    rate than its training video (`any_fps`: a note; from its config.json and the files' layouts; `observations`,
    `episode_length`: how MaskLAM's parquet data are read)."""
    from masklam.data.dataset import data_layouts

    cfg = lam_config(lam_dir)
    layouts = data_layouts(paths, observations, episode_length)
    check_fps(lam_dir, cfg.get("data_fps"), layouts[0].path, layouts[0].attrs.get("fps"), note=any_fps)
    hw = cfg.get("model", {}).get("img_hw")
    h, w = layouts[0].img_hw
    if hw is not None and (h, w) != (int(hw), int(hw)):
        raise MasklamError(f"the LAM {lam_dir} was trained on {hw}x{hw} frames, {layouts[0].path} has {h}x{w}: "
                           "use data of its image size, or train a LAM on these")
    key = mask_key_of(cfg)
    lacking = [lay.path for lay in layouts if key is not None and not lay.has(key)]
    if lacking:
        raise MasklamError(f"the LAM {lam_dir} reads agent masks ({key}) with its frames; {lacking[0]} has none "
                           "(add them with `masklam masks`, or use a LAM trained without a mask channel)")


def check_fps(lam: str | Path, lam_fps: float | None, data: str | Path, data_fps: float | None,
              note: bool = False) -> None:
    """One line before work when both frame rates are known and differ by more than 1%: a latent action spans
    one frame interval of the LAM's training video, so video at another rate gets latents of another motion
    (`note`: said, and the work goes on: a probe or a picture of such latents)."""
    from masklam.data.video import same_rate

    if not lam_fps or not data_fps or same_rate(float(data_fps), float(lam_fps)):
        return
    if note:
        note_once(("other-fps", str(lam), str(data)), f"the LAM {lam} was trained on {lam_fps:g} fps video, {data} is "
                  f"{float(data_fps):g} fps: its latents there span another motion")
        return
    fix = (f"resample it (masklam import {data} --fps {lam_fps:g} --out DATA.h5)" if data_fps > lam_fps else
           f"frames are never invented: import the original video at {lam_fps:g} fps if it has them, or use a LAM "
           f"trained on {float(data_fps):g} fps video")
    raise MasklamError(f"the LAM {lam} was trained on {lam_fps:g} fps video, {data} is {float(data_fps):g} fps: "
                       f"{fix}, or pass --any-fps")
