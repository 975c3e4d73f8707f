"""The action decoder latent -> action and what it reads from a frozen latent policy.

As in both papers: the decoder is an MLP (`layers` Linear layers, ReLU between: 3 by default, two hidden of 256,
which LAOM's code builds for its "two-layer MLP with 256 hidden dimensions" and the MaskLAM paper calls a 3-layer
MLP; `layers=2`: one hidden layer) from what the frozen latent policy computes for o_t to the true a_t.
`input` names what it reads (`policy_features`): the predicted latent (the papers'), the policy's last
hidden layer (its representation of o_t), or both (a decoder that also knows the state, so a latent
that is ambiguous on its own can still decode to the right action). Saved with the `Pretrained`
contract: config.json is the dims dict (latent_dim, action_dim, hidden, layers, input).
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from masklam.downstream.policy import ImagePolicy
from masklam.errors import MasklamError
from masklam.models.pretrained import Pretrained
from masklam.train.schedule import lr_factor, make_optimizer, set_lr

DecoderInput = Literal["latent", "hidden", "latent+hidden"]
DECODER_INPUTS = ("latent", "hidden", "latent+hidden")


class ActionDecoder(Pretrained, nn.Module):
    """(B, in_dim) -> (B, action_dim): `layers` linear layers with ReLU between (3: both papers', two hidden).

    `input` names what the decoder reads from the frozen policy (see `policy_features`)."""

    kind = "decoder"
    config_key = None

    def __init__(self, latent_dim: int, action_dim: int, hidden: int = 256, layers: int = 3,
                 input: str = "latent", input_relu: bool = False, source: str | None = None,
                 head_gain: float | None = None, relu6: bool = False) -> None:
        super().__init__()
        if layers < 2:
            raise MasklamError(f"decoder layers must be >= 2, got {layers}")
        if input not in DECODER_INPUTS:
            raise MasklamError(f"decoder input must be latent, hidden or latent+hidden, got {input!r}")
        self.dims = {"latent_dim": latent_dim, "action_dim": action_dim, "hidden": hidden, "layers": layers,
                     "input": input}
        if input_relu:  # recorded only when on: configs of earlier decoders stay as they were
            self.dims["input_relu"] = True
        if head_gain is not None:  # how its output layer started (the authors': 0.01); recorded only when set
            self.dims["head_gain"] = head_gain
        if relu6:  # LAOM's decoder's activation; recorded only when on
            self.dims["relu6"] = True
        if source is not None:  # what its latents come from ("lam:<run dir>" for `masklam decode --lam`)
            self.dims["source"] = source
        sizes = [latent_dim] + [hidden] * (layers - 1)
        mods: list[nn.Module] = [nn.ReLU()] if input_relu else []
        for a, b in zip(sizes[:-1], sizes[1:]):
            mods += [nn.Linear(a, b), nn.ReLU6() if relu6 else nn.ReLU()]
        self.net = nn.Sequential(*mods, nn.Linear(sizes[-1], action_dim))
        if head_gain is not None:  # the authors' ActionHead: orthogonal with a small gain, bias 0
            nn.init.orthogonal_(self.net[-1].weight, gain=head_gain)
            nn.init.zeros_(self.net[-1].bias)

    def pretrained_config(self) -> dict[str, Any]:
        """config.json: the dims dict."""
        return dict(self.dims)

    def pretrained_format(self) -> int:
        """3 with ReLU6 (LAOM's decoder), else 1."""
        return 3 if self.dims.get("relu6") else 1

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ActionDecoder":
        """A fresh decoder for a dims dict (a bad value is a one-line MasklamError); a dict without `layers` is a
        decoder of 2 layers, the default when it was written."""
        return cls(**{"layers": 2, **config})

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, action_dim), unclipped."""
        return self.net(z)


@torch.no_grad()
def policy_features(policy: ImagePolicy, obs: np.ndarray | torch.Tensor, input: str = "latent") -> torch.Tensor:
    """What a decoder reads from the frozen policy for (B, F, H, W, 3) frames: its predicted latent (B, D), its
    last hidden layer (B, hidden), or both concatenated."""
    check_decoder_input(policy, input)
    h = policy.features(policy.frames(obs))  # (B, hidden), after ReLU (with hidden 0: the map itself, not used)
    z = policy.head[-1](h)  # (B, D)
    parts = {"latent": [z], "hidden": [h], "latent+hidden": [z, h]}[input]
    return torch.cat(parts, dim=1).float()


def check_decoder_input(policy: ImagePolicy, input: str) -> None:
    """One line when `input` reads a hidden layer the policy does not have (hidden 0: a linear head)."""
    if input != "latent" and not policy.cfg.hidden:
        raise MasklamError(f"decoder input {input!r} reads the policy's hidden layer; this policy has none "
                           "(hidden 0: a linear head): use --input latent")


def feature_dim(policy: ImagePolicy, input: str) -> int:
    """Width of `policy_features(policy, ., input)`."""
    return {"latent": policy.cfg.out_dim, "hidden": policy.cfg.hidden,
            "latent+hidden": policy.cfg.out_dim + policy.cfg.hidden}[input]


def fit_decoder(latents: torch.Tensor, actions: torch.Tensor, updates: int = 2500, batch_size: int = 512,
                lr: float = 3e-4, hidden: int = 256, seed: int = 0, progress: bool = False, layers: int = 3,
                input: str = "latent", optimizer: str = "adam", schedule: str = "constant",
                grad_clip: float | None = None, input_relu: bool = False,
                head_gain: float | None = None, relu6: bool = False) -> tuple[ActionDecoder, float]:
    """Fit an ActionDecoder on (N, D) latents -> (N, A) actions (Adam or AdamW, constant, linear or cosine learning
    rate, optional gradient clipping; `head_gain`: the output layer orthogonal with this gain and a zero bias, else
    PyTorch's default init; `relu6`: ReLU6 between the layers); returns it and its last batch MSE."""
    if latents.ndim != 2 or actions.ndim != 2 or len(latents) != len(actions) or len(latents) == 0:
        raise MasklamError(f"decoder data must be (N, D) and (N, A) with N > 0, got {tuple(latents.shape)} "
                           f"and {tuple(actions.shape)}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # initial weights from seed, global generator untouched
        torch.manual_seed(seed)
        decoder = ActionDecoder(latents.shape[1], actions.shape[1], hidden, layers, input, input_relu,
                                head_gain=head_gain, relu6=relu6).to(latents.device)
    opt = make_optimizer(decoder, optimizer, lr)
    loss = torch.zeros(())
    for step in tqdm(range(updates), desc="decoder", unit="update", disable=not progress):
        set_lr(opt, lr * lr_factor(step, updates, 0.0, schedule))
        idx = torch.randint(0, len(latents), (min(batch_size, len(latents)),), generator=gen).to(latents.device)
        loss = nn.functional.mse_loss(decoder(latents[idx]), actions[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(decoder.parameters(), grad_clip)
        opt.step()
    return decoder.eval(), float(loss.item())


@torch.no_grad()
def policy_latents(policy: ImagePolicy, data: Any, traj_ids: np.ndarray, batch_size: int = 512,
                   input: str = "latent") -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen policy's features (`policy_features`: (N, D) predicted latents by default) and the true actions
    (N, A) of every transition of traj_ids."""
    return transition_features(data, traj_ids, policy.frame_stack,
                               lambda b: policy_features(policy, b["obs_t"], input), batch_size)


@torch.no_grad()
def transition_features(data: Any, traj_ids: np.ndarray, frames: int, features: Any, batch_size: int = 512,
                        need_masks: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`features(window batch) -> (B, D)` and the true actions (N, A) of every one-step transition of traj_ids
    (frame stacks of `frames`, with the agent masks when `need_masks`): what a decoder is fitted on."""
    from masklam.data import WindowSampler

    sampler = WindowSampler(data, traj_ids, frame_stack=frames, max_offset=1, need_masks=need_masks)
    zs, acts = [], []
    for b in sampler.all_windows(batch_size, k=1):
        zs.append(features(b).float().cpu())
        acts.append(torch.from_numpy(np.asarray(b["action_t"], np.float32)))
    if not zs:
        raise MasklamError("no labeled transitions to train the decoder on")
    return torch.cat(zs), torch.cat(acts)
