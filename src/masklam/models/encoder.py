"""IMPALA-style ResNet encoder, two transposed-conv decoders, orthogonal initialisation, and the uint8 -> float
frame conversion.

Encoder: per stage a 3x3 conv, a 3x3 max-pool with stride 2, then `num_res_blocks` residual blocks (ReLU), and a
final ReLU; channels (16, 32, 32) x `scale` (a float scale rounds the channels: 1.5 gives 24, 48, 48). A 64x64
input becomes an 8x8 map. `style="laom"` is LAOM's code's encoder (docs/laom-vs-code.md): a stride-2 3x3 conv per
stage instead of conv + max-pool, ReLU6 in the residual blocks, no final activation. `ConvDecoder` (ours) mirrors
the impala encoder: residual blocks, then a stride-2 ConvT(k4) per stage, a 3x3 head.
`AuthorsDecoder` is the layout of MaskLAM's authors' world model (../shared/reference/facts.md, section 13): per
stage a stride-2 ConvT(k2), then residual blocks; GELU and a 1x1 head.
Frames are scaled to [0, 1] (`center=False`) or, as MaskLAM's authors' code does, to [-0.5, 0.5] (RGB only: a
mask channel stays {0, 1}), or as LAOM's code does to [-1, 1] (`signed`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from masklam.errors import MasklamError

BASE_CHANNELS: tuple[int, int, int] = (16, 32, 32)


def frames_to_tensor(x: torch.Tensor | np.ndarray, device: torch.device | str | None = None,
                     center: bool = False, signed: bool = False) -> torch.Tensor:
    """(B, F, H, W, C) uint8 frame stacks, C = 3 (RGB) or 4 (RGB + agent mask) -> (B, CF, H, W) float32 in
    [0, 1] (channels_last memory); with `center`, RGB is x/255 - 0.5 and a mask channel stays {0, 1}; with `signed`
    instead (LAOM's code; RGB only), 2 x/255 - 1.

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
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if center:
        rgb = torch.tensor([0.5, 0.5, 0.5, 0.0][:c], device=x.device).repeat(f)  # (CF,): 0 on mask channels
        x = x - rgb[None, :, None, None]
    if signed:
        if c != 3 or center:
            raise MasklamError("signed pixels are for RGB frames only (LAOM's), not centred ones or a mask channel")
        x = x * 2.0 - 1.0
    return x


def init_orthogonal(module: nn.Module) -> nn.Module:
    """Orthogonal weights (gain 1) and zero biases for every Conv2d, ConvTranspose2d and Linear of `module`,
    as MaskLAM's authors initialise their networks; returns the module."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.orthogonal_(m.weight, gain=1.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def stage_channels(scale: float) -> list[int]:
    """The three stages' channel counts at a width multiplier: (16, 32, 32) x scale, rounded."""
    return [int(round(c * scale)) for c in BASE_CHANNELS]


def append_mask_channel(frames: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(B, F, H, W, 3) uint8 frames and (B, F, H, W) bool agent masks -> (B, F, H, W, 4) uint8, the mask as a
    4th channel of every frame (255 on the agent, 0 elsewhere), as MaskLAM's authors feed their models."""
    frames, masks = torch.as_tensor(frames), torch.as_tensor(masks)
    if masks.shape != frames.shape[:-1]:
        raise MasklamError(f"masks {tuple(masks.shape)} do not match frames {tuple(frames.shape)}")
    m = masks.to(device=frames.device, dtype=torch.uint8).mul(255)[..., None]  # (B, F, H, W, 1), a new tensor
    return torch.cat([frames, m], dim=-1)


class ResidualBlock(nn.Module):
    """act -> conv3x3 -> act -> conv3x3, plus the input (act: ReLU, or ReLU6 in LAOM's code)."""

    def __init__(self, channels: int, relu6: bool = False) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.functional.relu6 if relu6 else torch.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(self.act(self.conv0(self.act(x))))


class ImpalaEncoder(nn.Module):
    """(B, C_in, H, W) float -> (B, out_channels, H/8, W/8); `flat_dim` = size of the flattened map."""

    def __init__(self, in_channels: int, img_hw: int = 64, scale: float = 1, num_res_blocks: int = 2,
                 final_relu: bool = True, style: str = "impala") -> None:
        super().__init__()
        if img_hw % 8 != 0:
            raise MasklamError(f"image size must be a multiple of 8, got {img_hw}")
        laom = style == "laom"
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in stage_channels(scale):
            layers += ([nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)] if laom else
                       [nn.Conv2d(c_in, c_out, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1)])
            layers += [ResidualBlock(c_out, relu6=laom) for _ in range(num_res_blocks)]
            c_in = c_out
        if final_relu and not laom:  # the authors' world model reads the map before the ReLU; LAOM's has none
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

    def __init__(self, in_channels: int, out_channels: int = 3, scale: float = 1, num_res_blocks: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in reversed(stage_channels(scale)):
            layers += [ResidualBlock(c_in) for _ in range(num_res_blocks)]
            layers += [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
            c_in = c_out
        layers += [nn.ReLU(), nn.Conv2d(c_in, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AuthorsDecoder(nn.Module):
    """The authors' world-model decoder: (B, C, h, w) -> (B, out_channels, 8h, 8w); per stage a stride-2 ConvT(k2)
    then `num_res_blocks` residual blocks, then GELU and a 1x1 conv. LAOM's code's LAPO decoder is the same layout
    with ReLU6 residual blocks (`relu6`)."""

    def __init__(self, in_channels: int, out_channels: int = 3, scale: float = 1, num_res_blocks: int = 2,
                 relu6: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in reversed(stage_channels(scale)):
            layers += [nn.ConvTranspose2d(c_in, c_out, 2, stride=2)]
            layers += [ResidualBlock(c_out, relu6=relu6) for _ in range(num_res_blocks)]
            c_in = c_out
        layers += [nn.GELU(), nn.Conv2d(c_in, out_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
