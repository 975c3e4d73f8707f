"""LAOM's residual MLP heads: post-LayerNorm blocks, 4x expansion, ReLU6, conditioning re-injected.

Every block sees the running hidden state *and* the conditioning vector again:
`h <- LayerNorm(h + W2 relu6(W1 [h, cond]))`. LAOM found this markedly better than conditioning
only the first layer, and ReLU6 bounds activations for stability.
"""
from __future__ import annotations

import torch
from torch import nn


class ConditionedBlock(nn.Module):
    """One residual block: (B, hidden), (B, cond_dim) -> (B, hidden)."""

    def __init__(self, hidden: int, cond_dim: int, expansion: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden + cond_dim, expansion * hidden)
        self.fc2 = nn.Linear(expansion * hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        u = self.fc2(nn.functional.relu6(self.fc1(torch.cat([h, cond], dim=-1))))
        return self.norm(h + u)


class ResidualMLP(nn.Module):
    """(B, cond_dim) -> (B, out_dim) through `num_blocks` blocks that each re-read the conditioning."""

    def __init__(self, cond_dim: int, out_dim: int, hidden: int = 1024, num_blocks: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(cond_dim, hidden)
        self.blocks = nn.ModuleList([ConditionedBlock(hidden, cond_dim) for _ in range(num_blocks)])
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        h = nn.functional.relu6(self.inp(cond))
        for block in self.blocks:
            h = block(h, cond)
        return self.out(h)
