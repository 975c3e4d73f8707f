"""The image policy network of every regression target: `PolicyConfig` and `ImagePolicy`.

`ImagePolicy` = IMPALA encoder + a 2-layer MLP head (one Linear with `hidden` 0: MaskLAM's authors'), or with
`arch="laom"` LAOM's code's Actor (its strided ReLU6 encoder, global average pooling, ReLU6 and one Linear,
orthogonal init, pixels 2 x/255 - 1; docs/laom-vs-code.md), regressing a target vector from a frame stack (a LAM
latent, a true action, an IDM relabel; see `masklam.downstream.targets`). With `pair_input` it sees (o_t, o_{t+1})
and is an inverse dynamics model. Saved with the `Pretrained` contract:
config.json is `asdict(PolicyConfig)`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from masklam.errors import MasklamError
from masklam.models.encoder import ImpalaEncoder, frames_to_tensor, init_orthogonal
from masklam.models.pretrained import Pretrained


@dataclass
class PolicyConfig:
    """Architecture of an `ImagePolicy` (stored as config.json next to the weights)."""

    out_dim: int
    """size of the regressed vector (latent dim or action dim)"""
    action_dim: int
    """action dimension of the environment the policy acts in"""
    frame_stack: int = 3
    """frames of the input stack (o_{t-F+1..t})"""
    img_hw: int = 64
    """frame height = width in pixels"""
    encoder_scale: int = 1
    """IMPALA channel multiplier"""
    num_res_blocks: int = 2
    """residual blocks per IMPALA stage"""
    hidden: int = 256
    """width of the MLP head's hidden layer (0: no hidden layer, one Linear from the encoder's map: the authors'
    latent policy, their ImpalaCNNBackbone)"""
    pair_input: bool = False
    """input (o_t, o_{t+1}): an inverse dynamics model"""
    target: str = "action"
    """what the output is: 'latent' (needs an action decoder) or 'action'"""
    env_meta: dict[str, Any] = field(default_factory=dict)
    """task and env kwargs of the training data, for evaluation"""
    arch: str = "ours"
    """ours (IMPALA encoder, flattened map, MLP head) or laom (LAOM's code's Actor: strided ReLU6 encoder, global
    average pooling, ReLU6, one Linear; orthogonal init; pixels 2 x/255 - 1; hidden must be 0)"""

    def __post_init__(self) -> None:
        if self.hidden < 0:
            raise MasklamError(f"policy hidden width must be >= 0 (0: a linear head), got {self.hidden}")
        if self.arch not in ("ours", "laom"):
            raise MasklamError(f"policy arch must be ours or laom, got {self.arch!r}")
        if self.arch == "laom" and self.hidden:
            raise MasklamError(f"LAOM's policy (arch laom) has no hidden layer: hidden must be 0, got {self.hidden}")


class ImagePolicy(Pretrained, nn.Module):
    """(B, F, H, W, 3) uint8 frame stack (twice for an IDM) -> (B, out_dim)."""

    kind = "policy"
    config_key = None

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        frames = cfg.frame_stack * (2 if cfg.pair_input else 1)
        self.laom = cfg.arch == "laom"
        self.encoder = ImpalaEncoder(3 * frames, cfg.img_hw, cfg.encoder_scale, cfg.num_res_blocks,
                                     style="laom" if self.laom else "impala")
        if self.laom:  # LAOM's Actor: pooled map -> ReLU6 -> Linear
            self.head = nn.Sequential(nn.ReLU6(), nn.Linear(self.encoder.out_channels, cfg.out_dim))
            init_orthogonal(self)
        else:
            hidden: list[nn.Module] = [nn.Linear(self.encoder.flat_dim, cfg.hidden), nn.ReLU()] if cfg.hidden else []
            self.head = nn.Sequential(*hidden, nn.Linear(cfg.hidden or self.encoder.flat_dim, cfg.out_dim))

    def pretrained_config(self) -> dict[str, Any]:
        """config.json: the PolicyConfig as a dict."""
        return dataclasses.asdict(self.cfg)

    def pretrained_format(self) -> int:
        """3 for LAOM's Actor (an older masklam would build ours), else 1."""
        return 3 if self.laom else 1

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ImagePolicy":
        """A fresh policy; keys PolicyConfig no longer has (e.g. the old target_mean/target_std) are dropped."""
        names = {f.name for f in dataclasses.fields(PolicyConfig)}
        return cls(PolicyConfig(**{k: v for k, v in config.items() if k in names}))

    @property
    def frame_stack(self) -> int:
        """Frames per input stack."""
        return self.cfg.frame_stack

    @property
    def action_dim(self) -> int:
        """Action size of the environment the policy acts in (rollouts check it against the env's)."""
        return self.cfg.action_dim

    @property
    def obs_shape(self) -> tuple[int, int, int]:
        """(H, W, 3): the frames it reads (rollouts check it against the env's)."""
        return (self.cfg.img_hw, self.cfg.img_hw, 3)

    @property
    def env_meta(self) -> dict[str, Any]:
        """Env kwargs of the training data (task, distractors, ...)."""
        return self.cfg.env_meta

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.parameters()).device

    def predict(self, obs: np.ndarray | torch.Tensor,
                obs_next: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
        """(B, F, H, W, 3) uint8 [, (B, F, H, W, 3) for an IDM] -> (B, out_dim) float."""
        if self.cfg.pair_input:
            if obs_next is None:
                raise MasklamError("an inverse dynamics model needs (obs, obs_next)")
            obs = torch.cat([torch.as_tensor(obs), torch.as_tensor(obs_next)], dim=1)
        return self.head[-1](self.features(self.frames(obs)))

    def frames(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, F, H, W, 3) uint8 -> (B, 3F, H, W) float as the encoder reads it ([0, 1]; LAOM's [-1, 1])."""
        return frames_to_tensor(obs, self.device, signed=self.laom)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3F, H, W) float -> what the head's last Linear reads: the hidden layer after its ReLU (B, hidden), the
        flattened map (hidden 0), or LAOM's pooled map after ReLU6 (B, C)."""
        if self.laom:
            return self.head[0](self.encoder(x).mean(dim=(2, 3)))
        return self.head[:-1](self.encoder.flat(x))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """batch: obs (B,F,H,W,3) uint8, [obs_next], target (B, out_dim) -> (MSE loss, info)."""
        pred = self.predict(batch["obs"], batch.get("obs_next"))
        loss = nn.functional.mse_loss(pred, batch["target"].to(pred.device))
        return loss, {"bc/train_mse": loss.detach()}

    @torch.no_grad()
    def select_action(self, obs: np.ndarray) -> np.ndarray:
        """(B, F, H, W, 3) uint8 -> (B, A) actions in [-1, 1] (action-regressing policies only)."""
        if self.cfg.target == "latent" or self.cfg.pair_input:
            raise MasklamError("this network does not output actions; evaluate it with its action decoder")
        return self.predict(obs).clamp(-1, 1).float().cpu().numpy()
