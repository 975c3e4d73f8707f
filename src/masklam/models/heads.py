"""LAOM's residual MLP heads: post-LayerNorm blocks, 4x expansion, ReLU6, conditioning re-injected.

Two layouts. `ResidualMLP` (ours, from the paper's text): every block sees the running hidden state *and* the
conditioning vector again, `h <- LayerNorm(h + W2 relu6(W1 [h, cond]))`. `ProjectedMLP` (LAOM's code, which
reproduces the paper's Table 4 parameter counts; docs/laom-vs-code.md): before each block a Linear maps
[h, re-read part of the conditioning] back to the hidden width, and the block, `x <- LayerNorm(x + W2 relu6(W1 x))`,
reads only that; its IDM re-reads both embeddings, its FDM the latent only. LAOM found re-injecting the
conditioning markedly better than conditioning only the first layer, and ReLU6 bounds activations for stability.
"""
from __future__ import annotations

import torch
from torch import nn


class ConditionedBlock(nn.Module):
    """One residual block: (B, hidden), (B, cond_dim) -> (B, hidden); with cond_dim 0 (LAOM's code's block) it reads
    h alone: LayerNorm(h + W2 relu6(W1 h))."""

    def __init__(self, hidden: int, cond_dim: int = 0, expansion: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden + cond_dim, expansion * hidden)
        self.fc2 = nn.Linear(expansion * hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        u = self.fc2(nn.functional.relu6(self.fc1(h if cond is None else torch.cat([h, cond], dim=-1))))
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


class ProjectedMLP(nn.Module):
    """(B, cond_dim) -> (B, out_dim), LAOM's code's layout: a Linear from the whole conditioning to `hidden`, a
    block, then per further block a Linear from [h, cond[:, reread_from:]] to `hidden` and the block; a Linear out.
    `reread_from`: where the part of the conditioning the later projections re-read starts (0: all of it)."""

    def __init__(self, cond_dim: int, out_dim: int, hidden: int = 1024, num_blocks: int = 3,
                 reread_from: int = 0) -> None:
        super().__init__()
        self.reread_from = reread_from
        reread = cond_dim - reread_from
        self.projs = nn.ModuleList([nn.Linear(cond_dim, hidden)] +
                                   [nn.Linear(hidden + reread, hidden) for _ in range(num_blocks - 1)])
        self.blocks = nn.ModuleList([ConditionedBlock(hidden) for _ in range(num_blocks)])  # blocks reading h alone
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        again = cond[:, self.reread_from:]
        h = self.blocks[0](self.projs[0](cond))
        for proj, block in zip(self.projs[1:], self.blocks[1:]):
            h = block(proj(torch.cat([h, again], dim=-1)))
        return self.out(h)
