"""`masklam decode`: train the action decoder latent -> action on N labeled trajectories only.

As in LAOM appendix E: the latent BC policy is frozen; the decoder's input is what the policy computes
from o_t (`masklam.downstream.decoder.policy_features`), its target the true a_t of labeled transitions.
The policy's features over the labeled frames are computed once and cached, so the 2500 decoder
updates touch only small vectors. At evaluation action = decoder(policy(o_t)), clipped to [-1, 1]
(`masklam.downstream.agent.LatentAgent`). Options measured in docs/quickstart-science.md.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from masklam.devices import resolve_device
from masklam.downstream.bc import RESUME_DIR
from masklam.downstream.decoder import (DecoderInput, check_decoder_input, fit_decoder, policy_latents,
                                        transition_features)
from masklam.downstream.policy import ImagePolicy
from masklam.downstream.targets import check_policy_data
from masklam.args import parse
from masklam.errors import MasklamError, check_at_least, note_once
from masklam.locks import output_lock
from masklam.files import config_record, read_record, write_json
from masklam.seeding import check_seeds

VERSION = 2
"""Version of what decoder training computes for a config (2: held-out errors over every held-out window)."""


AUTHORS_DECODER: dict[str, object] = dict(input_relu=True, layers=3, hidden=256, optimizer="adamw", lr=1e-3,
                                          schedule="cosine", grad_clip=1.0, head_gain=0.01)
"""The action decoder as MaskLAM's authors train it (their stage 3): a ReLU on the latent, then 3 Linear layers
(2 hidden of 256 and the output, which starts orthogonal with gain 0.01 and a zero bias: their ActionHead), AdamW
1e-3 with a cosine schedule, gradient norm clipped to 1."""

LAOM_DECODER: dict[str, object] = dict(layers=3, hidden=256, relu6=True, schedule="linear")
"""The action decoder as LAOM's code trains it (docs/laom-vs-code.md): 3 Linear layers (two hidden of 256) with
ReLU6 between, the learning rate decayed linearly to 0; its Adam at 3e-4, 2500 updates and batch 512 are our
defaults."""


@dataclass
class DecodeConfig:
    """Train an action decoder latent -> action on N labeled trajectories with the latent policy frozen."""

    data: tuple[Path, ...]
    """HDF5 dataset file(s): the same data the policy (or LAM) was trained on"""
    out: Path
    """output directory (model.safetensors, config.json, metrics.json)"""
    policy: Path | None = None
    """latent BC policy directory (written by `masklam bc --target latent`): decode what it predicts (the agent)"""
    lam: Path | None = None
    """instead of --policy, a LAM run directory or Hub repo id: decode the LAM's own latents of (o_t, o_{t+1})
    (what `masklam label --decoder` needs to turn labelled video's latents into actions)"""
    labels: int = 8
    """number of labeled trajectories (nested subsets: the first N of one permutation)"""
    updates: int = 2500
    """optimiser updates of the decoder"""
    batch_size: int = 512
    """transitions per update"""
    lr: float = 3e-4
    """learning rate"""
    optimizer: Literal["adam", "adamw"] = "adam"
    """adam, or adamw (weight decay 0.01; the authors' decoder)"""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """learning rate over the run: constant, linear to 0 (LAOM's code) or cosine to 0 (MaskLAM's authors')"""
    grad_clip: float | None = None
    """clip the gradient norm to this value (the authors': 1; None: no clipping)"""
    relu6: bool = False
    """ReLU6 between the layers instead of ReLU (LAOM's code's decoder)"""
    input_relu: bool = False
    """apply a ReLU to the decoder's input first (the authors' decoder)"""
    head_gain: float | None = None
    """initialise the output layer orthogonal with this gain and a zero bias (the authors': 0.01; None: PyTorch's
    default init)"""
    hidden: int = 256
    """width of the decoder's hidden layers"""
    layers: int = 3
    """linear layers of the decoder (3: two hidden, both papers' (LAOM's code, MaskLAM's 3-layer MLP); 2: one hidden;
    until 2026-12-06 the default was 2)"""
    input: DecoderInput = "latent"
    """what the decoder reads from the frozen policy: its predicted latent (the papers'), its last hidden layer,
    or both (ours: a decoder that also knows the state)"""
    heldout: float = 0.1
    """fraction of trajectories held out (must match the policy's split; held-out MSE reported)"""
    seed: int = 0
    """seed of the decoder's initialisation and batches"""
    split_seed: int = 0
    """seed of the train/held-out split and the labeled subset (the same as the LAM's and the policy's)"""
    any_fps: bool = False
    """with --lam: use data whose frame rate differs from the LAM's training video"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N"""

    def __post_init__(self) -> None:
        check_at_least(1, labels=self.labels, updates=self.updates, batch_size=self.batch_size, hidden=self.hidden)
        check_at_least(0, strictly=True, lr=self.lr)
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise MasklamError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.head_gain is not None and not self.head_gain > 0:
            raise MasklamError(f"head_gain must be > 0, got {self.head_gain}")
        if not self.data:
            raise MasklamError("no dataset given (--data)")
        check_seeds(seed=self.seed, split_seed=self.split_seed)
        if (self.policy is None) == (self.lam is None):
            raise MasklamError("give what to decode: --policy DIR (a latent policy) or --lam DIR (a LAM's latents)")
        if self.lam is not None and self.input != "latent":
            raise MasklamError(f"a decoder over a LAM's latents reads its latent only, not --input {self.input}")
        if self.layers < 2:
            raise MasklamError(f"--layers must be >= 2, got {self.layers}")
        if not 0 <= self.heldout < 1:
            raise MasklamError(f"--heldout must be in [0, 1), got {self.heldout}")


def train_decoder(cfg: DecodeConfig, progress: bool = True) -> dict[str, float]:
    """Fit and save the decoder; returns metrics (train MSE, held-out MSE of decoder(policy(o_t)) vs a_t)."""
    from masklam.data import labeled_subset, load_dataset, split_trajectories

    device = resolve_device(cfg.device)
    if cfg.lam is not None:
        return _train_lam_decoder(cfg, device, progress)
    policy = ImagePolicy.from_pretrained(cfg.policy, device)
    if policy.cfg.target != "latent":
        raise MasklamError(f"{cfg.policy} is not a latent policy (target {policy.cfg.target!r})")
    check_policy_data(policy, cfg.policy, cfg.data)
    check_decoder_input(policy, cfg.input)
    record = Path(cfg.policy) / RESUME_DIR / "config.json"  # the BC run's record (a local run directory)
    note_split(cfg, read_record(record) if record.is_file() else None, "the policy", cfg.policy)
    data = load_dataset(list(cfg.data), progress=progress)
    train_ids, heldout_ids = split_trajectories(data.num_trajectories, cfg.heldout, seed=cfg.split_seed)
    ids = labeled_subset(train_ids, cfg.labels, seed=cfg.split_seed)
    return _fit_and_save(cfg, lambda ids_: policy_latents(policy, data, ids_, cfg.batch_size, cfg.input), ids,
                         heldout_ids, device, progress)


def note_split(cfg: DecodeConfig, trained: dict[str, Any] | None, who: str, where: Path) -> None:
    """A note when the decoder's held-out trajectories are not the ones `who` (the policy or LAM it reads, at
    `where`, a local run) held out, on data it trained on (a labelled set of its own: nothing to say): the split is
    a function of the data list, --heldout and --split-seed, so another list or other values hold out trajectories
    whose frames it trained on."""
    from masklam.models.pretrained import is_local

    if not trained or "heldout" not in trained or not cfg.heldout or not is_local(str(where)):
        return
    data = trained.get("data") or []
    seen = [Path(p).expanduser().resolve() for p in ([data] if isinstance(data, str) else data)]
    mine = [Path(p).expanduser().resolve() for p in cfg.data]
    held, seed = float(trained["heldout"]), int(trained.get("split_seed", 0))
    if not set(seen) & set(mine) or (seen == mine and (held, seed) == (cfg.heldout, cfg.split_seed)):
        return
    if seen == mine:
        why = (f"was trained with --heldout {held:g} --split-seed {seed}, the decoder holds out --heldout "
               f"{cfg.heldout:g} --split-seed {cfg.split_seed}")
        fix = f"; pass --heldout {held:g} --split-seed {seed} to hold out the same"
    else:
        why, fix = f"was trained on {', '.join(map(str, data))}, in part the decoder's data", ""
    note_once(("decode-split", str(where)), f"{who} {where} {why}: its held-out error reads trajectories whose "
              f"frames {who} trained on (not their actions){fix}")


def _fit_and_save(cfg: DecodeConfig, features: Any, ids: Any, heldout_ids: Any, device: torch.device,
                  progress: bool, source: str | None = None) -> dict[str, float]:
    """Fit the decoder on `features(ids)` -> ((N, D) inputs, (N, A) actions), report its error on every held-out
    transition, save it and its metrics."""
    z, a = features(ids)
    decoder, mse = fit_decoder(z.to(device), a.to(device), cfg.updates, cfg.batch_size, cfg.lr, cfg.hidden,
                               cfg.seed, progress, cfg.layers, cfg.input, optimizer=cfg.optimizer,
                               schedule=cfg.schedule, grad_clip=cfg.grad_clip, input_relu=cfg.input_relu,
                               relu6=cfg.relu6,
                               head_gain=cfg.head_gain)
    if source is not None:
        decoder.dims["source"] = source
    metrics = {"decode/train_mse": mse, "decode/labeled_trajectories": len(ids), "decode/labeled_transitions": len(z),
               "decode/heldout_trajectories": len(heldout_ids), "decode/updates": cfg.updates}
    if len(heldout_ids):
        zh, ah = features(heldout_ids)
        with torch.no_grad():
            pred = decoder(zh.to(device)).clamp(-1, 1).cpu()
        metrics["decode/heldout_mse"] = float(nn.functional.mse_loss(pred, ah))
        metrics["decode/heldout_nmse"] = metrics["decode/heldout_mse"] / max(float(ah.var(0).mean()), 1e-8)
    decoder.save_pretrained(cfg.out)
    write_json(Path(cfg.out) / "metrics.json", metrics, indent=1)
    write_json(Path(cfg.out) / "run_config.json", config_record(cfg), indent=1)  # how it was fitted
    return metrics


def _train_lam_decoder(cfg: DecodeConfig, device: torch.device, progress: bool) -> dict[str, float]:
    """`train_decoder` for --lam: the decoder maps the LAM's k = 1 latents (raw, as `masklam label` writes them) of
    the labelled trajectories to their actions."""
    from masklam.data import labeled_subset, load_dataset, split_trajectories
    from masklam.downstream.targets import latent_target
    from masklam.train.checkpoint import check_lam_data, lam_config, lam_mask_key

    check_lam_data(cfg.lam, cfg.data, any_fps=cfg.any_fps)
    note_split(cfg, lam_config(cfg.lam), "the LAM", cfg.lam)
    mask_key = lam_mask_key(cfg.lam)
    data = load_dataset(list(cfg.data), mask_key=mask_key, progress=progress)
    if data.action_dim == 0:
        raise MasklamError(f"{', '.join(map(str, cfg.data))} has no actions: a decoder needs labelled trajectories")
    target_fn, _, frames = latent_target(cfg.lam, device)
    train_ids, heldout_ids = split_trajectories(data.num_trajectories, cfg.heldout, seed=cfg.split_seed)

    def latents(ids) -> tuple[torch.Tensor, torch.Tensor]:  # (N, D) latents, (N, A) actions of every transition
        return transition_features(data, ids, frames, target_fn, cfg.batch_size, need_masks=mask_key is not None)

    return _fit_and_save(cfg, latents, labeled_subset(train_ids, cfg.labels, seed=cfg.split_seed), heldout_ids,
                         device, progress, source=lam_source(cfg.lam))


def lam_source(lam: Path) -> str:
    """How a decoder over a LAM's raw latents names that LAM (directory or Hub repo id) in its config (`masklam
    label` checks it)."""
    from masklam.models.pretrained import source_name

    return f"lam:{source_name(lam)}"


def main(argv: list[str]) -> int:
    """`masklam decode --policy DIR --data FILE --out DIR --labels N` (or --lam DIR instead of --policy)."""
    cfg = parse(DecodeConfig, argv)
    with output_lock(cfg.out, ", or use another --out"):
        print(json.dumps(train_decoder(cfg)))
    return 0
