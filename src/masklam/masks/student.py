"""A small 64x64 segmenter (U-Net) distilled from a few MobileSAM-labelled frames, to mask whole datasets on a CPU.

MobileSAM costs seconds per frame on a CPU (its image encoder always runs at 1024x1024); the frames of one
dataset are all rendered by the same camera around the same agent, so a U-Net of a few hundred thousand
parameters trained on a few hundred teacher labels (`masklam masks --frames-per-traj N --student`) masks
every frame in seconds. Training: BCE + soft Dice (the agent covers a few percent of the frame), Adam, random
shifts of up to ``shift`` pixels applied to frame and mask alike.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from masklam.errors import MasklamError, one_line
from masklam.files import atomic_path

DEFAULT_WIDTHS = (12, 24, 48, 96)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class StudentNet(nn.Module):
    """U-Net: (B, H, W, 3) uint8 frames -> (B, H, W) mask logits."""

    def __init__(self, widths: Sequence[int] = DEFAULT_WIDTHS):
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        chans = (3,) + self.widths
        self.down = nn.ModuleList(_block(a, b) for a, b in zip(chans[:-1], chans[1:]))
        rev = self.widths[::-1]
        self.up = nn.ModuleList(nn.ConvTranspose2d(a, b, 2, stride=2) for a, b in zip(rev[:-1], rev[1:]))
        self.merge = nn.ModuleList(_block(2 * b, b) for b in rev[1:])
        self.head = nn.Conv2d(self.widths[0], 1, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, H, W) logits; sides that do not halve evenly are padded (edge values) first."""
        h, w = frames.shape[1:3]
        m = 2 ** (len(self.widths) - 1)
        x = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if h % m or w % m:
            x = F.pad(x, (0, -w % m, 0, -h % m), mode="replicate")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, skips[-2::-1]):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)[:, 0, :h, :w]


def _shift(frames: torch.Tensor, masks: torch.Tensor, max_shift: int, gen: torch.Generator):
    """The same random integer translation (edge-replicated frames, zero masks) per sample of frames and masks."""
    if max_shift <= 0:
        return frames, masks
    n, h, w = masks.shape
    p = max_shift
    fr = F.pad(frames.permute(0, 3, 1, 2).float(), (p, p, p, p), mode="replicate")
    ms = F.pad(masks.float()[:, None], (p, p, p, p))
    dy, dx = (torch.randint(0, 2 * p + 1, (2, n), generator=gen)).tolist()
    fr = torch.stack([fr[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    ms = torch.stack([ms[i, 0, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return fr.permute(0, 2, 3, 1), ms


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel BCE plus (1 - soft Dice) over the batch."""
    prob = torch.sigmoid(logits)
    dice = (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + (1 - dice)


def train_student(frames: np.ndarray, masks: np.ndarray, steps: int = 500, batch: int = 32, lr: float = 2e-3,
                  seed: int = 0, shift: int = 4, widths: Sequence[int] = DEFAULT_WIDTHS,
                  progress: Callable[[int, float], object] | None = None) -> StudentNet:
    """Fit :class:`StudentNet` to ``frames`` (N, H, W, 3) uint8 and ``masks`` (N, H, W) bool; returns it in eval mode.

    ``progress(step, loss)`` is called every 50 steps.
    """
    if frames.ndim != 4 or frames.dtype != np.uint8 or masks.shape != frames.shape[:3]:
        raise MasklamError(f"student needs (N,H,W,3) uint8 frames and (N,H,W) masks, got {frames.shape} "
                           f"{frames.dtype} and {masks.shape}")
    if len(frames) == 0:
        raise MasklamError("no labelled frames to train the student on")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = StudentNet(widths)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    warm = 0.1 if steps != 10 else 0.2  # OneCycleLR divides by pct_start * steps - 1: 0 at 10 steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=warm)
    x_all, y_all = torch.from_numpy(np.ascontiguousarray(frames)), torch.from_numpy(np.ascontiguousarray(masks))
    net.train()
    for step in range(steps):
        idx = torch.randint(0, len(x_all), (min(batch, len(x_all)),), generator=gen)
        x, y = _shift(x_all[idx], y_all[idx], shift, gen)
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and (step + 1) % 50 == 0:
            progress(step + 1, float(loss.detach()))
    return net.eval()


@torch.inference_mode()
def predict(net: StudentNet, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H, W) bool masks."""
    out = np.zeros(frames.shape[:3], bool)
    for start in range(0, len(frames), batch):
        chunk = torch.from_numpy(np.ascontiguousarray(frames[start:start + batch]))
        out[start:start + batch] = (net(chunk) > 0).numpy()
    return out


def num_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def save_student(net: StudentNet, path: str | Path) -> None:
    """Atomically (files.atomic_path): a kill while saving leaves no half-written student."""
    with atomic_path(path) as tmp:
        torch.save({"widths": list(net.widths), "state": net.state_dict()}, tmp)


def load_student(path: str | Path) -> StudentNet:
    """A saved student; one line naming the file when it cannot be read."""
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
        net = StudentNet(blob["widths"])
        net.load_state_dict(blob["state"])
    except (RuntimeError, OSError, KeyError, EOFError, pickle.UnpicklingError) as e:
        raise MasklamError(f"{path} is not a readable student ({one_line(e)}); delete it to train it again") from None
    return net.eval()
