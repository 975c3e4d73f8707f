"""`masklam decode`: the action decoder latent -> action, trained on N labeled trajectories only.

As in LAOM appendix E: the latent BC policy is frozen; the decoder's input is the latent the policy
predicts from o_t, its target the true a_t of labeled transitions. The decoder is a 2-layer MLP with
256 hidden units (ReLU). The policy's predictions over the labeled frames are computed once and
cached, so the 2500 decoder updates touch only small vectors. At evaluation
action = decoder(policy(o_t)), clipped to [-1, 1] (`LatentAgent`).

Options (measured in docs/quickstart-science.md): `layers=3` is the MaskLAM paper's 3-layer head;
`input="hidden"` decodes from the frozen policy's last hidden layer (its representation of o_t, from which
it predicts the latent), `input="latent+hidden"` from both: a decoder that also knows the state, so a
latent that is ambiguous on its own (a small motion from rest) can still decode to the right action.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from masklam.downstream.bc import ImagePolicy
from masklam.errors import MasklamError
from masklam.models.encoder import frames_to_tensor


DecoderInput = Literal["latent", "hidden", "latent+hidden"]


class ActionDecoder(nn.Module):
    """(B, in_dim) -> (B, action_dim): `layers` linear layers with ReLU between (2: LAOM's, 3: MaskLAM's).

    `input` names what the decoder reads from the frozen policy (see `policy_features`)."""

    def __init__(self, latent_dim: int, action_dim: int, hidden: int = 256, layers: int = 2,
                 input: str = "latent") -> None:
        super().__init__()
        if layers < 2:
            raise MasklamError(f"decoder layers must be >= 2, got {layers}")
        if input not in ("latent", "hidden", "latent+hidden"):
            raise MasklamError(f"decoder input must be latent, hidden or latent+hidden, got {input!r}")
        self.dims = {"latent_dim": latent_dim, "action_dim": action_dim, "hidden": hidden, "layers": layers,
                     "input": input}
        sizes = [latent_dim] + [hidden] * (layers - 1)
        mods: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*mods, nn.Linear(sizes[-1], action_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write model.safetensors and config.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps(self.dims))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> "ActionDecoder":
        """Read a directory written by save_pretrained."""
        directory = Path(directory)
        if not (directory / "model.safetensors").is_file() or not (directory / "config.json").is_file():
            raise MasklamError(f"not a decoder directory (needs model.safetensors and config.json): {directory}")
        try:
            model = cls(**json.loads((directory / "config.json").read_text()))
            model.load_state_dict(load_file(str(directory / "model.safetensors")))
        except (TypeError, json.JSONDecodeError, RuntimeError, OSError) as e:
            raise MasklamError(f"cannot load the decoder in {directory}: {str(e).splitlines()[0]}") from None
        return model.to(device).eval()


@torch.no_grad()
def policy_features(policy: ImagePolicy, obs: np.ndarray | torch.Tensor, input: str = "latent") -> torch.Tensor:
    """What a decoder reads from the frozen policy for (B, F, H, W, 3) frames: its predicted latent (B, D), its
    last hidden layer (B, hidden), or both concatenated."""
    h = policy.head[:-1](policy.encoder.flat(frames_to_tensor(obs, policy.device)))  # (B, hidden), after ReLU
    z = policy.head[-1](h)  # (B, D)
    parts = {"latent": [z], "hidden": [h], "latent+hidden": [z, h]}[input]
    return torch.cat(parts, dim=1).float()


def feature_dim(policy: ImagePolicy, input: str) -> int:
    """Width of `policy_features(policy, ., input)`."""
    return {"latent": policy.cfg.out_dim, "hidden": policy.cfg.hidden,
            "latent+hidden": policy.cfg.out_dim + policy.cfg.hidden}[input]


class LatentAgent:
    """A frozen latent policy followed by its action decoder: the thing evaluated online."""

    def __init__(self, policy: ImagePolicy, decoder: ActionDecoder) -> None:
        self.input = decoder.dims.get("input", "latent")
        if decoder.dims["latent_dim"] != feature_dim(policy, self.input):
            raise MasklamError(f"decoder expects {self.input} of width {decoder.dims['latent_dim']}, "
                               f"the policy gives {feature_dim(policy, self.input)}")
        self.policy, self.decoder = policy.eval(), decoder.eval()
        self.frame_stack, self.env_meta = policy.frame_stack, policy.env_meta

    @torch.no_grad()
    def select_action(self, obs: np.ndarray) -> np.ndarray:
        """(B, F, H, W, 3) uint8 -> (B, A) float32 in [-1, 1]."""
        z = policy_features(self.policy, obs, self.input)  # (B, in_dim)
        return self.decoder(z.to(next(self.decoder.parameters()).device)).clamp(-1, 1).float().cpu().numpy()


def fit_decoder(latents: torch.Tensor, actions: torch.Tensor, steps: int = 2500, batch_size: int = 512,
                lr: float = 3e-4, hidden: int = 256, seed: int = 0, progress: bool = False, layers: int = 2,
                input: str = "latent") -> tuple[ActionDecoder, float]:
    """Fit an ActionDecoder on (N, D) latents -> (N, A) actions with Adam; returns it and its last batch MSE."""
    if latents.ndim != 2 or actions.ndim != 2 or len(latents) != len(actions) or len(latents) == 0:
        raise MasklamError(f"decoder data must be (N, D) and (N, A) with N > 0, got {tuple(latents.shape)} "
                           f"and {tuple(actions.shape)}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # initial weights from seed, global generator untouched
        torch.manual_seed(seed)
        decoder = ActionDecoder(latents.shape[1], actions.shape[1], hidden, layers, input).to(latents.device)
    opt = torch.optim.Adam(decoder.parameters(), lr=lr)
    loss = torch.zeros(())
    for _ in tqdm(range(steps), desc="decoder", unit="step", disable=not progress):
        idx = torch.randint(0, len(latents), (min(batch_size, len(latents)),), generator=gen).to(latents.device)
        loss = nn.functional.mse_loss(decoder(latents[idx]), actions[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return decoder.eval(), float(loss.item())


@torch.no_grad()
def policy_latents(policy: ImagePolicy, data: Any, traj_ids: np.ndarray, batch_size: int = 512,
                   input: str = "latent") -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen policy's features (`policy_features`: (N, D) predicted latents by default) and the true actions
    (N, A) of every transition of traj_ids."""
    from masklam.data import WindowSampler

    sampler = WindowSampler(data, traj_ids, frame_stack=policy.frame_stack, max_offset=1)
    zs, acts = [], []
    for b in sampler.all_windows(batch_size, k=1):
        zs.append(policy_features(policy, b["obs_t"], input).cpu())
        acts.append(torch.from_numpy(np.asarray(b["action_t"], np.float32)))
    if not zs:
        raise MasklamError("no labeled transitions to train the decoder on")
    return torch.cat(zs), torch.cat(acts)


@dataclass
class DecodeConfig:
    """Train an action decoder latent -> action on N labeled trajectories with the latent policy frozen."""

    policy: Path
    """latent BC policy directory (written by `masklam bc --target latent`)"""
    data: tuple[Path, ...]
    """HDF5 dataset file(s): the same data the policy was trained on"""
    out: Path
    """output directory (model.safetensors, config.json, metrics.json)"""
    labels: int = 8
    """number of labeled trajectories (nested subsets: the first N of one permutation)"""
    steps: int = 2500
    batch_size: int = 512
    lr: float = 3e-4
    hidden: int = 256
    layers: int = 2
    """linear layers of the decoder (2: LAOM's, 3: the MaskLAM paper's)"""
    input: DecoderInput = "latent"
    """what the decoder reads from the frozen policy: its predicted latent (the papers'), its last hidden layer,
    or both (ours: a decoder that also knows the state)"""
    heldout: float = 0.1
    """fraction of trajectories held out (must match the policy's split; held-out MSE reported)"""
    seed: int = 0
    """seed of the decoder's initialisation and batches"""
    split_seed: int = 0
    """seed of the train/held-out split and the labeled subset (the same as the LAM's and the policy's)"""
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.labels < 1 or self.steps < 1 or self.batch_size < 1 or self.hidden < 1 or self.lr <= 0:
            raise MasklamError("labels, steps, batch_size, hidden must be >= 1 and lr > 0")
        if not self.data:
            raise MasklamError("no dataset given (--data)")


def train_decoder(cfg: DecodeConfig, progress: bool = True) -> dict[str, float]:
    """Fit and save the decoder; returns metrics (train MSE, held-out MSE of decoder(policy(o_t)) vs a_t)."""
    from masklam.data import labeled_subset, load_dataset, split_trajectories

    policy = ImagePolicy.from_pretrained(cfg.policy, cfg.device)
    if policy.cfg.target != "latent":
        raise MasklamError(f"{cfg.policy} is not a latent policy (target {policy.cfg.target!r})")
    data = load_dataset(list(cfg.data), progress=progress)
    train_ids, heldout_ids = split_trajectories(data.num_trajectories, cfg.heldout, seed=cfg.split_seed)
    ids = labeled_subset(train_ids, cfg.labels, seed=cfg.split_seed)
    z, a = policy_latents(policy, data, ids, cfg.batch_size, cfg.input)
    decoder, mse = fit_decoder(z.to(cfg.device), a.to(cfg.device), cfg.steps, cfg.batch_size, cfg.lr, cfg.hidden,
                               cfg.seed, progress, cfg.layers, cfg.input)
    metrics = {"decode/train_mse": mse, "decode/labeled_transitions": len(z)}
    if len(heldout_ids):
        zh, ah = policy_latents(policy, data, heldout_ids, cfg.batch_size, cfg.input)  # every held-out transition
        with torch.no_grad():
            pred = decoder(zh.to(cfg.device)).clamp(-1, 1).cpu()
        metrics["decode/heldout_mse"] = float(nn.functional.mse_loss(pred, ah))
        metrics["decode/heldout_nmse"] = metrics["decode/heldout_mse"] / max(float(ah.var(0).mean()), 1e-8)
    decoder.save_pretrained(cfg.out)
    (Path(cfg.out) / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def main(argv: list[str]) -> int:
    """`masklam decode --policy DIR --data FILE --out DIR --labels N`."""
    cfg = tyro.cli(DecodeConfig, args=argv)
    print(json.dumps(train_decoder(cfg)))
    return 0
