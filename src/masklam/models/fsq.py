"""Finite scalar quantisation (Mentzer et al. 2023) as an optional latent bottleneck (ablation).

The latent is projected to len(levels) channels, each bounded with tanh to its level range, rounded
with a straight-through gradient, scaled to [-1, 1], and projected back to the latent size.
LAOM found quantisation harmful for latent action quality, so it is off by default.
"""
from __future__ import annotations

import torch
from torch import nn

from masklam.errors import MasklamError


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


class FSQ(nn.Module):
    """(B, dim) -> (B, dim) quantised through a grid of prod(levels) codes."""

    def __init__(self, dim: int, levels: tuple[int, ...]) -> None:
        super().__init__()
        if not levels or min(levels) < 2:
            raise MasklamError(f"FSQ levels must be integers >= 2, got {levels}")
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32), persistent=False)
        self.proj_in = nn.Linear(dim, len(levels))
        self.proj_out = nn.Linear(len(levels), dim)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """(B, len(levels)) real -> (B, len(levels)) on the grid, values in [-1, 1]."""
        eps = 1e-3
        half = (self.levels - 1) * (1 + eps) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        bounded = torch.tanh(z + shift) * half - offset
        return round_ste(bounded) / torch.floor(self.levels / 2)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, dim) -> (B, len(levels)) quantised codes (before the output projection)."""
        return self.quantize(self.proj_in(z))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.codes(z))
