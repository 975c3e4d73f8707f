"""One device resolver: `--device` strings (auto, cpu, cuda, cuda:N) -> torch.device, checked up front.

Every command takes `--device auto` by default and resolves it here; the data-parallel context
(`masklam.train.distributed.DistContext.device`) builds on it for per-rank devices.
"""
from __future__ import annotations

import torch

from masklam.errors import MasklamError

DEVICE_HELP = "auto (cuda if available, else cpu), cpu, cuda, cuda:N"


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as given, checked (one-line MasklamError)."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MasklamError(f"unknown device {name!r}; use {DEVICE_HELP}") from None
    if device.type not in ("cpu", "cuda"):
        raise MasklamError(f"unsupported device {name!r}; use {DEVICE_HELP}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MasklamError(f"device {name!r} asked for, but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MasklamError(f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    return device


def place(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`module` on `device` with its conv weights in channels_last memory, as the frames reach it
    (`frames_to_tensor`): on CUDA the layout its convolutions want; on CPU in fp32 (no native bf16), one thread
    on an otherwise idle machine, a 128-px LAM update ran 1.2-1.4x faster than with contiguous weights and a
    64-px one within noise (0.94-1.08x) (benchmarks/pretrain_throughput.py --contiguous, 2026-12-06).
    Numerics differ from contiguous weights at rounding level only; saved weights are made contiguous."""
    return module.to(device=device, memory_format=torch.channels_last)
