"""What online evaluation runs: an action policy, or a frozen latent policy followed by its decoder.

`load_policy(policy_dir, decoder_dir)` is the one factory of evaluation agents (`masklam evaluate`,
the experiment's evaluation stage); each agent has `frame_stack`, `env_meta` and
`select_action((B, F, H, W, 3) uint8) -> (B, A)` in [-1, 1], and `action_dim`, `obs_shape` that a rollout checks
against the environment before any episode.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from masklam.downstream.decoder import ActionDecoder, check_decoder_input, feature_dim, policy_features
from masklam.downstream.policy import ImagePolicy
from masklam.errors import MasklamError


class LatentAgent:
    """A frozen latent policy followed by its action decoder: the thing evaluated online."""

    def __init__(self, policy: ImagePolicy, decoder: ActionDecoder) -> None:
        if decoder.dims.get("source"):  # `masklam decode --lam`: raw LAM latents, not a policy's standardised ones
            raise MasklamError(f"the decoder was trained on the latents of {decoder.dims['source']} (for `masklam "
                               "label`), not on a latent policy's: train one with `masklam decode --policy DIR`")
        self.input = decoder.dims.get("input", "latent")
        check_decoder_input(policy, self.input)
        if decoder.dims["latent_dim"] != feature_dim(policy, self.input):
            raise MasklamError(f"decoder expects {self.input} of width {decoder.dims['latent_dim']}, "
                               f"the policy gives {feature_dim(policy, self.input)}")
        if decoder.dims["action_dim"] != policy.cfg.action_dim:
            raise MasklamError(f"the decoder outputs {decoder.dims['action_dim']} actions, the policy's task takes "
                               f"{policy.cfg.action_dim}: they were trained on different tasks")
        self.policy, self.decoder = policy.eval(), decoder.eval()
        self.frame_stack, self.env_meta = policy.frame_stack, policy.env_meta
        self.action_dim, self.obs_shape = decoder.dims["action_dim"], policy.obs_shape
        self.source = getattr(policy, "source", None)

    @torch.no_grad()
    def select_action(self, obs: np.ndarray) -> np.ndarray:
        """(B, F, H, W, 3) uint8 -> (B, A) float32 in [-1, 1]."""
        z = policy_features(self.policy, obs, self.input)  # (B, in_dim)
        return self.decoder(z.to(next(self.decoder.parameters()).device)).clamp(-1, 1).float().cpu().numpy()


def load_policy(policy_dir: str | Path, decoder_dir: str | Path | None = None,
                device: str | torch.device = "cpu") -> ImagePolicy | LatentAgent:
    """A policy ready for evaluation: an action policy, or a latent policy with its action decoder."""
    policy = ImagePolicy.from_pretrained(policy_dir, device)
    policy.source = f"the policy {policy_dir}"  # names it in messages (a rollout's check_fits)
    if policy.cfg.pair_input:
        raise MasklamError(f"{policy_dir} is an inverse dynamics model, not a policy")
    if policy.cfg.target != "latent":
        return policy
    if decoder_dir is None:
        raise MasklamError(f"{policy_dir} predicts latents; give its action decoder (--decoder)")
    return LatentAgent(policy, ActionDecoder.from_pretrained(decoder_dir, device))
