"""Training latent action models: config, loop, probes, checkpoints, logging, augmentations.

The loop itself is `masklam.train.pretrain.pretrain(cfg)` (the submodule of the same name as the
`masklam pretrain` command; the package does not re-export it, so the name always means the module).
"""
from masklam.train.config import PRESETS, PretrainConfig

__all__ = ["PRESETS", "PretrainConfig"]
