"""Training latent action models: config, loop, probes, checkpoints, logging, augmentations."""
from masklam.train.config import PRESETS, PretrainConfig

__all__ = ["PRESETS", "PretrainConfig", "pretrain"]


def pretrain(cfg: PretrainConfig, until: int | None = None) -> dict:
    """Train a latent action model (see masklam.train.pretrain.pretrain)."""
    from masklam.train.pretrain import pretrain as _pretrain

    return _pretrain(cfg, until)
