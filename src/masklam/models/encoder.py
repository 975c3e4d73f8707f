"""IMPALA-style ResNet encoder, transposed-conv decoder, and the uint8 -> float frame conversion.

Encoder: per stage a 3x3 conv, a 3x3 max-pool with stride 2, then `num_res_blocks` residual blocks;
channels (16, 32, 32) x `scale`. A 64x64 input becomes an 8x8 map. The decoder mirrors it with
stride-2 transposed convolutions back to the input resolution.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from masklam.errors import MasklamError

BASE_CHANNELS: tuple[int, int, int] = (16, 32, 32)


def frames_to_tensor(x: torch.Tensor | np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """(B, F, H, W, C) uint8 frame stacks, C = 3 (RGB) or 4 (RGB + agent mask) -> (B, CF, H, W) float32 in
    [0, 1] (channels_last memory).

    Channel order is frame-major: channel f*C + c is channel c of frame f (the oldest frame first).
    The uint8 tensor is moved to `device` before conversion (4x less traffic than float).
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if x.dim() != 5 or x.shape[-1] not in (3, 4):
        raise MasklamError(f"frames must be (B, F, H, W, 3) (or 4 with a mask channel), got shape {tuple(x.shape)}")
    if device is not None:
        x = x.to(device, non_blocking=True)
    b, f, h, w, c = x.shape
    x = x.permute(0, 2, 3, 1, 4).reshape(b, h, w, f * c).permute(0, 3, 1, 2)  # (B, 3F, H, W), NHWC storage
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def append_mask_channel(frames: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(B, F, H, W, 3) uint8 frames and (B, F, H, W) bool agent masks -> (B, F, H, W, 4) uint8, the mask as a
    4th channel of every frame (255 on the agent, 0 elsewhere), as MaskLAM's authors feed their models."""
    frames, masks = torch.as_tensor(frames), torch.as_tensor(masks)
    if masks.shape != frames.shape[:-1]:
        raise MasklamError(f"masks {tuple(masks.shape)} do not match frames {tuple(frames.shape)}")
    m = masks.to(device=frames.device, dtype=torch.uint8).mul(255)[..., None]  # (B, F, H, W, 1), a new tensor
    return torch.cat([frames, m], dim=-1)


class ResidualBlock(nn.Module):
    """relu -> conv3x3 -> relu -> conv3x3, plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ImpalaEncoder(nn.Module):
    """(B, C_in, H, W) float -> (B, out_channels, H/8, W/8); `flat_dim` = size of the flattened map."""

    def __init__(self, in_channels: int, img_hw: int = 64, scale: int = 1, num_res_blocks: int = 2) -> None:
        super().__init__()
        if img_hw % 8 != 0:
            raise MasklamError(f"image size must be a multiple of 8, got {img_hw}")
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in BASE_CHANNELS:
            c_out = c * scale
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1)]
            layers += [ResidualBlock(c_out) for _ in range(num_res_blocks)]
            c_in = c_out
        layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.out_channels = c_in
        self.out_hw = img_hw // 8
        self.flat_dim = c_in * self.out_hw * self.out_hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, flat_dim)."""
        return self.net(x).flatten(1)


class ConvDecoder(nn.Module):
    """Feature map (B, C, h, w) -> image (B, out_channels, 8h, 8w) via three stride-2 transposed convs."""

    def __init__(self, in_channels: int, out_channels: int = 3, scale: int = 1, num_res_blocks: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in reversed(BASE_CHANNELS):
            c_out = c * scale
            layers += [ResidualBlock(c_in) for _ in range(num_res_blocks)]
            layers += [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
            c_in = c_out
        layers += [nn.ReLU(), nn.Conv2d(c_in, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
