"""Latent action models (LAPO, MaskLAM, LAOM, LAOM+supervision) and their building blocks."""
from masklam.models.encoder import ConvDecoder, ImpalaEncoder, frames_to_tensor
from masklam.models.lam import (
    LAMConfig,
    LatentActionModel,
    LatentSpaceLAM,
    PixelLAM,
    build_lam,
    load_lam,
    weighted_mse,
)

__all__ = [
    "ConvDecoder", "ImpalaEncoder", "LAMConfig", "LatentActionModel", "LatentSpaceLAM",
    "PixelLAM", "build_lam", "frames_to_tensor", "load_lam", "weighted_mse",
]
