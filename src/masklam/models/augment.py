"""Random shift, rotation and perspective, drawn independently per observation, as one homography (ours), and
LAOM's code's augmentations (`laom_augment`: one of 8 choices per observation, much stronger).

LAOM stabilises latent-space prediction with a subset of Almuzairee et al.'s augmentations. Each
observation stack (o_t, o_{t+1}, o_{t+k}) of each sample gets its own random transform; the frames
inside one stack share it, so the motion within a stack stays intact. Shift, rotation and a
perspective jitter of the four corners compose into a single homography, applied with
`grid_sample` (border padding), so the three augmentations cost one resampling pass.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

_CORNERS = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])  # (4, 2) normalised x, y


def homography_from_corners(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """(B, 4, 2) point pairs -> (B, 3, 3) homographies H with H @ [src, 1] ~ [dst, 1]."""
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], dim=-1)  # (B, 4, 8)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], dim=-1)
    a = torch.cat([rows_u, rows_v], dim=1)  # (B, 8, 8)
    b = torch.cat([u, v], dim=1)  # (B, 8)
    h = torch.linalg.solve(a, b)
    return torch.cat([h, torch.ones_like(h[:, :1])], dim=1).view(-1, 3, 3)


def rotations(angle: torch.Tensor) -> torch.Tensor:
    """(n,) angles in radians -> (n, 2, 2) rotation matrices."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def random_homographies(
    n: int,
    img_hw: int,
    generator: torch.Generator | None,
    shift_px: float = 4.0,
    rotate_deg: float = 5.0,
    perspective: float = 0.1,
) -> torch.Tensor:
    """(n, 3, 3) random homographies on normalised coordinates (drawn on the CPU generator)."""
    u = torch.rand(n, 11, generator=generator) * 2 - 1  # (n, 11) uniform in [-1, 1]
    angle = u[:, 0] * math.radians(rotate_deg)
    shift = u[:, 1:3] * (2 * shift_px / img_hw)  # pixels -> normalised units
    jitter = u[:, 3:11].view(n, 4, 2) * perspective
    rot = rotations(angle)  # (n, 2, 2)
    corners = _CORNERS.expand(n, 4, 2)
    moved = corners @ rot.transpose(1, 2) + shift[:, None, :] + jitter
    return homography_from_corners(corners, moved)


def augment(x: torch.Tensor, generator: torch.Generator | None = None, shift_px: float = 4.0,
            rotate_deg: float = 5.0, perspective: float = 0.1) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, H, W): one random shift+rotation+perspective per sample."""
    return warp(x, random_homographies(x.shape[0], x.shape[2], generator, shift_px, rotate_deg, perspective))


LAOM_CHOICES = ("none", "shift", "rotate", "perspective", "shift-rotate", "rotate-shift", "rotate-perspective",
                "perspective-rotate")
"""LAOM's code's augmentations, one drawn uniformly per sample (its Augmenter; A-B: A, then B)"""


def laom_homographies(n: int, img_hw: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 3) sampling homographies of LAOM's code's augmentations and (n,) the choice of each
    (LAOM_CHOICES). Per sample an integer shift of up to 14 px per axis at 64 px (28 at 128 and up: its pads); per
    choice one rotation angle, uniform in +-90 degrees, and one perspective (torchvision's distortion scale 0.5 on
    the frame padded by 30 px: each corner moved inwards by up to a quarter of that size), shared by the samples
    of that choice, as its transforms draw once per call on the group of samples."""
    choice = torch.randint(len(LAOM_CHOICES), (n,), generator=generator)
    pad = 14 if img_hw <= 64 else 28
    t = torch.randint(-pad, pad + 1, (n, 2), generator=generator).float() * (2 / img_hw)  # px -> normalised
    eye = torch.eye(3).expand(n, 3, 3)
    shift = eye.clone()
    shift[:, :2, 2] = t
    angle = ((torch.rand(len(LAOM_CHOICES), generator=generator) * 2 - 1) * math.pi / 2)[choice]
    rot = eye.clone()
    rot[:, :2, :2] = rotations(angle)
    padded = img_hw + 60
    reach = int(0.5 * (padded // 2))  # torchvision: randint(0, int(distortion_scale * half) + 1) px inwards
    inward = torch.randint(0, reach + 1, (len(LAOM_CHOICES), 4, 2), generator=generator).float() * (2 / img_hw)
    start = _CORNERS * (padded / img_hw)  # the padded frame's corners, in the crop's normalised units
    persp = homography_from_corners(start - torch.sign(start) * inward, start.expand(len(LAOM_CHOICES), 4, 2))
    persp = persp[choice]  # sampling map: the moved corners read the frame's corners (content shrinks inwards)
    candidates = torch.stack([eye, shift, rot, persp, shift @ rot, rot @ shift, rot @ persp, persp @ rot], dim=1)
    return candidates[torch.arange(n), choice], choice


def laom_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, H, W): LAOM's code's augmentations (`laom_homographies`), each sample's in one
    resampling pass with border padding, where its code resamples once per transform with edge padding of 14-30 px
    and zeros beyond it (docs/laom-vs-code.md)."""
    return warp(x, laom_homographies(x.shape[0], x.shape[2], generator)[0])


def warp(x: torch.Tensor, hom: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float, (B, 3, 3) sampling homographies on normalised coordinates (output point -> where it
    reads the input) -> (B, C, H, W), bilinear, border padding."""
    b, _, h, w = x.shape
    hom = hom.to(x.device, x.dtype)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=x.device, dtype=x.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).view(1, h * w, 3)  # (1, HW, 3)
    mapped = pts @ hom.transpose(1, 2)  # (B, HW, 3)
    grid = (mapped[..., :2] / mapped[..., 2:].clamp_min(1e-6)).view(b, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
