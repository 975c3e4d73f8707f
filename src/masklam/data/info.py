"""`masklam info FILE...`: what a dataset file holds, in a few lines."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tyro

from masklam.args import parse
from masklam.data.dataset import data_layout, dataset_files
from masklam.data.hdf5 import MASK_KEYS
from masklam.errors import MasklamError


@dataclass
class InfoConfig:
    """Summarise dataset files (ours, LAOM's HDF5 or MaskLAM's parquet): trajectories, steps, returns, keys, image
    size, size on disk."""

    files: tyro.conf.Positional[list[Path]]
    """One or more dataset files (HDF5, or parquet files / directories of parquet shards)."""


def summarize(path: str | Path) -> dict[str, Any]:
    """The summary of one file as a dict (the numbers `masklam info` prints)."""
    lay = data_layout(path)
    returns = lay.returns[np.isfinite(lay.returns)]
    return {
        "file": str(lay.path),
        "task": _task(lay.attrs),
        "trajectories": lay.num_trajectories,
        "steps": lay.num_frames,
        "length_min": int(lay.lengths.min()),
        "length_max": int(lay.lengths.max()),
        "return_mean": float(returns.mean()) if len(returns) else float("nan"),
        "return_std": float(returns.std()) if len(returns) else float("nan"),
        "img_hw": lay.img_hw,
        "state_dim": lay.state_dim,
        "action_dim": lay.action_dim,
        "keys": lay.keys,
        "partial_keys": lay.partial_keys,
        "masks": [key for key in MASK_KEYS if lay.has(key)],
        "bytes": sum(f.stat().st_size for f in getattr(lay, "shards", None) or [Path(path)]),
        "attrs": lay.attrs,
        "latents": _latents(lay),
    }


def _latents(lay: Any) -> str | None:
    """What a labelled file's per-frame latents are (`masklam label`): widths and who made them; None without."""
    if "latent_action" not in lay.keys or not str(lay.path).endswith((".h5", ".hdf5")):
        return None
    import h5py

    with h5py.File(lay.path, "r") as f:
        group = f[sorted((n for n in f if n.isdigit()), key=int)[0]]
        widths = {key: group[key].shape[1] for key in ("latent_action", "decoded_action") if key in group}
    text = f"latent_action ({widths['latent_action']}-dim) from the LAM {lay.attrs.get('latent_lam', '?')}"
    if "decoded_action" in widths:
        text += f"; decoded_action ({widths['decoded_action']}-dim) by {lay.attrs.get('action_decoder', '?')}"
    return text + "; row t: frame t to t+1"


def _task(attrs: dict[str, Any]) -> str:
    """A simulated task's name; imported data's source (its format, and task strings where it has them)."""
    if "domain_name" in attrs or "task_name" in attrs:
        return f"{attrs.get('domain_name', '?')}-{attrs.get('task_name', '?')}"
    if "source_format" in attrs:
        tasks = [str(t) for t in np.atleast_1d(attrs.get("tasks", [])) if str(t)]
        hub = f" {attrs['hub_repo_id']}@{str(attrs.get('hub_revision', ''))[:8]}" if "hub_repo_id" in attrs else ""
        return f"none (imported {attrs['source_format']}{hub}{': ' + '; '.join(tasks[:3]) if tasks else ''})"
    return "?"


def _short(value: Any, limit: int = 80) -> str:
    """An attr's value as text, cut at `limit` characters (a labelled file's label_config is a whole JSON record)."""
    text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable lines for one summary."""
    lengths = str(s["length_min"]) if s["length_min"] == s["length_max"] else f"{s['length_min']}..{s['length_max']}"
    attrs = ", ".join(f"{k}={_short(v)}" for k, v in sorted(s["attrs"].items()))
    lines = [
        f"{s['file']}",
        f"  task          {s['task']}",
        f"  trajectories  {s['trajectories']}  ({lengths} steps each, {s['steps']} steps in all)",
        f"  return        {s['return_mean']:.1f} +- {s['return_std']:.1f} (mean +- std over trajectories)"
        if np.isfinite(s["return_mean"]) else "  return        none (no rewards)",
        f"  image         {s['img_hw'][0]}x{s['img_hw'][1]} RGB; state dim {s['state_dim']}, "
        f"action dim {s['action_dim']}",
        f"  masks         "
        f"{', '.join(s['masks']) if s['masks'] else 'none (methods that need masks cannot use this file)'}",
        f"  keys          {', '.join(s['keys'])}",
    ]
    if s["partial_keys"]:
        lines.append(f"  in some only  {', '.join(s['partial_keys'])}")
    if s.get("latents"):
        lines.append(f"  latents       {s['latents']}")
    lines += [f"  size on disk  {_size(s['bytes'])}", f"  attrs         {attrs}"]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    cfg = parse(InfoConfig, argv)
    if not cfg.files:
        raise MasklamError("give one or more dataset files: masklam info FILE...")
    for i, path in enumerate(dataset_files(cfg.files)):  # a folder of HDF5 shards: each shard
        if i:
            print()
        print(format_summary(summarize(path)))
    return 0
