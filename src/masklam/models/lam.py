"""Latent action models: one base (IDM, probes, save/load) and the two ways to predict the future.

- `PixelLAM` ("lapo", "masklam"): IDM = ResNet on (o_t, o_{t+k}) -> linear -> latent; FDM = ResNet on
  o_t, joined with the latent, transposed-conv decoder -> o_{t+1}; pixel MSE. MaskLAM is the same
  model with the per-pixel error weighted by the (dilated) agent mask of o_{t+1}, background weight
  `mask_lambda`, normalised by the weighted area (once per batch, as the authors' code; or per sample; ours
  also divides by the 3 colour channels, theirs does not: a constant factor, facts.md section 13).
  LAPO passes weight 1 through the same function, so `mask_lambda = 1` reproduces LAPO's loss bit for
  bit. With `mask_channel` (the authors' default for MaskLAM; an ablation for LAPO) the agent mask is
  a 4th input channel of every frame the IDM and the FDM see, so labelling latents needs masks too.
  MaskLAM's authors' code differs from ours in five more places, each an option here (facts.md, section 13):
  `init="orthogonal"` (gain 1, zero bias), `pixels="centered"` (x/255 - 0.5 in and 0.5*tanh out),
  `fdm_scale` (an FDM wider than the IDM: 1.5x), `decoder="authors"` (their world-model decoder layout) and,
  for their LAPO baseline, `idm_window="single"`: the IDM sees one window o_{t-F+1..t+1} (k = 1 only) instead
  of the two stacks at t and t+k. LAOM's code's LAPO baseline (`--recipe laom-code` for lapo) is `encoder="laom"`
  (its strided ReLU6 encoders, and a GELU before the IDM's Linear), `decoder="laom"` (the authors' layout with
  ReLU6 blocks, predicting the whole next stack o_{t-F+2..t+1}) and `pixels="signed"` (2 x/255 - 1 in, tanh out).
- `LatentSpaceLAM` ("laom", "laom-sup"): one shared ResNet encoder; IDM and FDM are residual MLPs;
  the FDM predicts the embedding of o_{t+1} from the *detached* embedding of o_t and the latent,
  against an EMA target encoder (or a stop-grad of the online encoder); augmentations during
  training; "laom-sup" adds a linear head latent -> true action on a labeled batch. LAOM's code differs from
  the paper's text as we first read it in four places, each an option (docs/laom-vs-code.md): `heads="laom"`
  (its head layout, models.heads.ProjectedMLP), `encoder="laom"` (strided convs, ReLU6, no final activation),
  `pixels="signed"` (2 x/255 - 1) and `aug_style="laom"` (its 1-of-8 augmentations, models.augment); with
  `init="orthogonal"` they make `--recipe laom-code`.

Every model: `forward(batch) -> (loss, info)` where batch holds `obs_t, obs_t1, obs_tk (B,F,H,W,3) uint8`
(or float (B,3F,H,W)), optional masks `mask_t, mask_t1, mask_tk (B,F,H,W) bool` (the stacks' agent masks;
MaskLAM's loss reads the newest of mask_t1), `action_t (B,A)`, `state_t (B,S)`, and for
"laom-sup" `labeled` (a dict with `obs_t, obs_tk, action_t`). Online probes (linear maps on detached
latents / embeddings) are trained through the same loss and never affect the LAM.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from masklam import methods
from masklam.errors import MasklamError
from masklam.methods import Method
from masklam.models.augment import augment, laom_augment
from masklam.models.encoder import (AuthorsDecoder, ConvDecoder, ImpalaEncoder, append_mask_channel, frames_to_tensor,
                                    init_orthogonal)
from masklam.models.fsq import FSQ
from masklam.models.heads import ProjectedMLP, ResidualMLP
from masklam.models.pretrained import Pretrained

# The methods implemented here, with their own papers' choices (PretrainConfig fields: frame stack, window offset,
# LAOM's augmentation and target), which a recipe and explicit options override (masklam.train.config).
for _method in (
    Method("lapo", "LAPO", "lam", order=1, defaults=dict(frame_stack=1, max_offset=1, aug=False, target="ema")),
    Method("masklam", "MaskLAM", "lam", order=2, defaults=dict(frame_stack=1, max_offset=1, aug=False, target="ema")),
    Method("laom", "LAOM", "lam", order=3, defaults=dict(frame_stack=3, max_offset=10, aug=True, target="ema")),
    Method("laom-sup", "LAOM+supervision", "lam", order=4, supervised=True,
           defaults=dict(frame_stack=3, max_offset=10, aug=True, target="stopgrad")),
):
    methods.register(_method)
Batch = dict[str, Any]
PIXEL_METHODS, LAOM_METHODS = ("lapo", "masklam"), ("laom", "laom-sup")
PIXELS_FOR: dict[str, tuple[str, ...] | None] = {"unit": None, "centered": PIXEL_METHODS,
                                                 "signed": ("lapo",) + LAOM_METHODS}
"""The methods that take each `pixels` value (None: every method): MaskLAM's authors' centred pixels for pixel LAMs,
LAOM's code's signed ones for LAOM and its LAPO baseline."""


@dataclass
class LAMConfig:
    """Architecture and loss of a latent action model (stored in config.json under "model")."""

    method: str
    action_dim: int
    state_dim: int
    img_hw: int = 64
    frame_stack: int = 1
    latent_dim: int = 128
    encoder_scale: int = 1
    num_res_blocks: int = 2
    head_dim: int = 1024
    head_blocks: int = 2
    fsq_levels: tuple[int, ...] = ()
    mask_lambda: float = 0.0
    mask_dilation: int = 0
    mask_target: bool = False
    mask_channel: bool = False
    mask_norm: str = "batch"
    target: str = "ema"
    target_tau: float = 0.001
    aug: bool = False
    sup_coef: float = 0.01
    init: str = "default"
    pixels: str = "unit"
    fdm_scale: float = 0.0
    decoder: str = "ours"
    idm_window: str = "pair"
    heads: str = "ours"
    encoder: str = "impala"
    aug_style: str = "ours"

    def __post_init__(self) -> None:
        if self.method not in methods.trainers():
            raise MasklamError(f"unknown method {self.method!r}; one of {', '.join(methods.trainers())}")
        if not 0.0 <= self.mask_lambda <= 1.0:
            raise MasklamError(f"mask_lambda must be in [0, 1], got {self.mask_lambda}")
        if self.mask_norm not in ("batch", "sample"):
            raise MasklamError(f"mask_norm must be 'batch' or 'sample', got {self.mask_norm!r}")
        if self.mask_channel and self.method not in ("lapo", "masklam"):
            raise MasklamError(f"the mask input channel is for pixel LAMs (lapo, masklam), not {self.method}")
        if self.target not in ("ema", "stopgrad"):
            raise MasklamError(f"target must be 'ema' or 'stopgrad', got {self.target!r}")
        self.fsq_levels = tuple(int(v) for v in self.fsq_levels)
        for name, allowed in (("init", ("default", "orthogonal")), ("pixels", tuple(PIXELS_FOR)),
                              ("decoder", ("ours", "authors", "laom")), ("idm_window", ("pair", "single")),
                              ("heads", ("ours", "laom")), ("encoder", ("impala", "laom")),
                              ("aug_style", ("ours", "laom"))):
            if getattr(self, name) not in allowed:
                raise MasklamError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.fdm_scale < 0:
            raise MasklamError(f"fdm_scale must be >= 0 (0: the IDM's width), got {self.fdm_scale}")
        pixel = self.method in PIXEL_METHODS
        users = PIXELS_FOR[self.pixels]
        if users is not None and self.method not in users:
            raise MasklamError(f"pixels {self.pixels!r} is for {', '.join(users)}, not {self.method}")
        pixel_only = {"fdm_scale": 0.0, "decoder": "ours", "idm_window": "pair"}
        changed = [k for k, v in pixel_only.items() if getattr(self, k) != v]
        if changed and not pixel:
            raise MasklamError(f"{changed[0]} is for pixel LAMs (lapo, masklam), not {self.method}")
        changed = [k for k, v in {"heads": "ours", "aug_style": "ours"}.items() if getattr(self, k) != v]
        if changed and pixel:
            raise MasklamError(f"{changed[0]} is for LAOM (laom, laom-sup), not {self.method}")
        if self.decoder == "laom" and self.method != "lapo":
            raise MasklamError(f"decoder 'laom' (LAOM's LAPO baseline: it predicts the whole next stack) is for lapo, "
                               f"not {self.method}")
        if self.pixels == "signed" and self.mask_channel:
            raise MasklamError("pixels 'signed' (LAOM's) takes RGB frames only, not a mask channel")


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, norm: str = "batch") -> torch.Tensor:
    """Sum of w * (pred - target)^2 over (C, H, W) / (C * sum of w), normalised once per batch or per sample.

    pred, target: (B, C, H, W); weight: (B, H, W). norm "batch" (MaskLAM's authors): the whole batch's
    weighted error over the whole batch's weight, so a sample counts in proportion to its mask's area;
    "sample": each sample's own ratio, then the mean, so a small mask counts as much as a large one.
    The denominators are clamped at 1, so an empty mask gives a finite loss (a sample with an empty mask
    contributes 0).
    """
    c = pred.shape[1]
    num = (weight[:, None] * (pred - target).square()).sum(dim=(1, 2, 3))  # (B,)
    den = weight.sum(dim=(1, 2)) * c  # (B,)
    if norm == "batch":
        total = den.sum().detach()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # data-parallel: normalise by the global batch's area, so that DDP's mean of the ranks' losses is
            # sum(num) / sum(den) over the global batch, whatever the number of processes
            world = torch.distributed.get_world_size()
            torch.distributed.all_reduce(total)
            return num.sum() * world / total.clamp_min(1.0)
        return num.sum() / total.clamp_min(1.0)
    return (num / den.clamp_min(1.0)).mean()


def mask_weights(mask: torch.Tensor, background: float, dilation: int = 0) -> torch.Tensor:
    """(B, H, W) bool agent mask -> (B, H, W) float weights mask + background * (1 - mask)."""
    m = mask.float()
    if dilation > 0:
        m = F.max_pool2d(m[:, None], 2 * dilation + 1, stride=1, padding=dilation)[:, 0]
    return m + background * (1.0 - m)


class LatentActionModel(Pretrained, nn.Module):
    """Base: frame conversion, online probes, target update hook, save/load (`Pretrained`: config.json
    holds the run's config with the architecture under "model")."""

    kind = "latent action model"
    config_key = "model"

    def __init__(self, cfg: LAMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.quantizer = FSQ(cfg.latent_dim, cfg.fsq_levels) if cfg.fsq_levels else None
        self.action_probe = nn.Linear(cfg.latent_dim, cfg.action_dim)
        # video without actions: an empty probe that no loss reaches; frozen, so every trainable parameter gets a
        # gradient (what DDP's find_unused_parameters=False relies on)
        self.action_probe.requires_grad_(cfg.action_dim > 0)

    @property
    def frame_stack(self) -> int:
        return self.cfg.frame_stack

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def needs_masks(self) -> bool:
        """True when the model's inputs carry the agent mask as a channel (labelling needs masks then)."""
        return bool(self.cfg.mask_channel)

    @property
    def centered(self) -> bool:
        """True when pixels enter (and the FDM predicts them) in [-0.5, 0.5] rather than [0, 1]."""
        return self.cfg.pixels == "centered"

    def frames(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, F, H, W, 3) or float (B, 3F, H, W) -> float (B, 3F, H, W) on the model's device (a float
        input is taken as already scaled)."""
        if isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point():
            return x.to(self.device)
        return frames_to_tensor(x, self.device, self.centered, self.cfg.pixels == "signed")

    def inputs(self, x: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """A frame stack as the IDM/FDM see it: (B, F, H, W, 3) uint8 [+ (B, F, H, W) bool masks]
        -> (B, CF, H, W) float, C = 4 with the mask channel, else 3."""
        if not self.cfg.mask_channel:
            return self.frames(x)
        if mask is None:
            raise MasklamError("this LAM takes the agent mask as an input channel (mask_channel): its latents "
                               "need the agent masks of both frame stacks")
        x = torch.as_tensor(x).to(self.device)
        return frames_to_tensor(append_mask_channel(x, torch.as_tensor(mask).to(self.device)), self.device,
                                self.centered)

    def _quantize(self, z: torch.Tensor) -> torch.Tensor:
        return self.quantizer(z) if self.quantizer is not None else z

    # --- what a method defines -------------------------------------------------------------
    def latent_from_tensors(self, x_t: torch.Tensor, x_tk: torch.Tensor) -> torch.Tensor:
        """(B, 3F, H, W) x2 -> (B, latent_dim)."""
        raise NotImplementedError

    def embed_tensor(self, x_t: torch.Tensor) -> torch.Tensor:
        """(B, 3F, H, W) -> (B, embed_dim) observation embedding (probed for the state)."""
        raise NotImplementedError

    def lam_loss(self, batch: Batch,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]:
        """-> (loss, info, latent (B, D), embedding of o_t (B, E))."""
        raise NotImplementedError

    # --- shared -----------------------------------------------------------------------------
    def latent(self, obs_t: torch.Tensor | np.ndarray, obs_tk: torch.Tensor | np.ndarray,
               mask_t: torch.Tensor | np.ndarray | None = None, mask_tk: torch.Tensor | np.ndarray | None = None,
               ) -> torch.Tensor:
        """Latent action for (o_t, o_{t+k}) frame stacks (and their masks, with the mask channel) -> (B, latent_dim)."""
        return self.latent_from_tensors(self.inputs(obs_t, mask_t), self.inputs(obs_tk, mask_tk))

    def label(self, windows: Batch) -> torch.Tensor:
        """The latent action of each window's one-step transition (o_t, o_{t+1}), k = 1 whatever the
        training offsets: what probes and latent BC regress. windows: a WindowSampler batch -> (B, D)."""
        return self.latent(windows["obs_t"], windows["obs_t1"], windows.get("mask_t"), windows.get("mask_t1"))

    def embed(self, obs_t: torch.Tensor | np.ndarray, mask_t: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Observation embedding of a frame stack (and its masks, with the mask channel) -> (B, embed_dim)."""
        return self.embed_tensor(self.inputs(obs_t, mask_t))

    def forward(self, batch: Batch,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """LAM loss plus the online probes' losses (on detached inputs) -> (total loss, info)."""
        loss, info, z, emb = self.lam_loss(batch, generator)
        info["train/loss"] = loss.detach()
        total = loss
        if "action_t" in batch:
            a = torch.as_tensor(batch["action_t"], device=z.device).float()
            probe_a = F.mse_loss(self.action_probe(z.detach().float()), a)
            info["probe/action_mse"] = probe_a.detach()
            total = total + probe_a
        if "state_t" in batch:
            s = torch.as_tensor(batch["state_t"], device=z.device).float()
            probe_s = F.mse_loss(self.state_probe(emb.detach().float()), s)
            info["probe/state_mse"] = probe_s.detach()
            total = total + probe_s
        return total, info

    @torch.no_grad()
    def update_target(self) -> None:
        """Called after each optimiser step (EMA target for LAOM; nothing for the others)."""

    def pretrained_config(self) -> dict[str, Any]:
        """The architecture and loss (config.json's "model" entry)."""
        return asdict(self.cfg)

    def pretrained_format(self) -> int:
        """3 when the LAM uses LAOM's code's layouts, 2 when one of MaskLAM's authors' options (which a masklam
        reading an older format would ignore or fail on), else 1."""
        plain = LAMConfig(method=self.cfg.method, action_dim=0, state_dim=0)
        if self.cfg.heads != plain.heads or self.cfg.encoder != plain.encoder or self.cfg.pixels == "signed":
            return 3
        changed = any(getattr(self.cfg, k) != getattr(plain, k)
                      for k in ("init", "pixels", "fdm_scale", "decoder", "idm_window"))
        return 2 if changed else 1

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LatentActionModel":
        """A fresh model of any method for a "model" entry (unknown keys of older files are ignored)."""
        known = {f.name for f in fields(LAMConfig)}
        return build_lam(LAMConfig(**{k: v for k, v in config.items() if k in known}))


class PixelLAM(LatentActionModel):
    """LAPO and MaskLAM: IDM + pixel FDM with a transposed-conv decoder."""

    def __init__(self, cfg: LAMConfig) -> None:
        super().__init__(cfg)
        self.channels_per_frame = 4 if cfg.mask_channel else 3
        c = self.channels_per_frame * cfg.frame_stack  # input channels of one frame stack
        # the IDM reads both stacks, or (idm_window "single") the stack at t and the newest frame of t+1's
        idm_in = 2 * c if cfg.idm_window == "pair" else c + self.channels_per_frame
        self.idm_encoder = ImpalaEncoder(idm_in, cfg.img_hw, cfg.encoder_scale, cfg.num_res_blocks, style=cfg.encoder)
        self.idm_act = nn.GELU() if cfg.encoder == "laom" else nn.Identity()  # LAOM's LAPO: Flatten, GELU, Linear
        self.idm_head = nn.Linear(self.idm_encoder.flat_dim, cfg.latent_dim)
        fdm_scale = cfg.fdm_scale or cfg.encoder_scale
        self.fdm_encoder = ImpalaEncoder(c, cfg.img_hw, fdm_scale, cfg.num_res_blocks,
                                         final_relu=cfg.decoder == "ours", style=cfg.encoder)
        ch, hw = self.fdm_encoder.out_channels, self.fdm_encoder.out_hw
        self.latent_to_map = nn.Linear(cfg.latent_dim, ch * hw * hw)
        # LAOM's LAPO predicts the whole next stack o_{t-F+2..t+1}; the others its newest frame o_{t+1}
        self.predicted_channels = 3 * cfg.frame_stack if cfg.decoder == "laom" else 3
        if cfg.decoder == "ours":
            self.decoder = ConvDecoder(2 * ch, 3, fdm_scale, cfg.num_res_blocks)
        else:
            self.decoder = AuthorsDecoder(2 * ch, self.predicted_channels, fdm_scale, cfg.num_res_blocks,
                                          relu6=cfg.decoder == "laom")
        self.state_probe = nn.Linear(self.fdm_encoder.flat_dim, cfg.state_dim)
        self.state_probe.requires_grad_(cfg.state_dim > 0)  # no states (imported video): frozen, as action_probe
        if cfg.init == "orthogonal":
            init_orthogonal(self)

    def latent_from_tensors(self, x_t: torch.Tensor, x_tk: torch.Tensor) -> torch.Tensor:
        if self.cfg.idm_window == "single":  # one window o_{t-F+1..t+1}: the stack at t and the newest frame
            x_tk = x_tk[:, -self.channels_per_frame:]
        h = self.idm_encoder.flat(torch.cat([x_t, x_tk], dim=1))  # (B, flat)
        return self._quantize(self.idm_head(self.idm_act(h)))

    def embed_tensor(self, x_t: torch.Tensor) -> torch.Tensor:
        return self.fdm_encoder.flat(x_t)

    def predict_from_tensors(self, x_t: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FDM: (B, 3F, H, W), (B, D) -> (predicted o_{t+1} (B, P, H, W) in the model's pixel range, P = 3, or 3F
        for LAOM's LAPO, whose prediction is the whole next stack; flat embedding of o_t)."""
        fmap = self.fdm_encoder(x_t)  # (B, C, h, w)
        zmap = self.latent_to_map(z).view_as(fmap)
        out = self.decoder(torch.cat([fmap, zmap], dim=1))  # (B, P, H, W)
        if self.centered:  # the authors' output range, that of centred pixels
            out = 0.5 * torch.tanh(out)
        elif self.cfg.pixels == "signed":  # LAOM's LAPO: [-1, 1]
            out = torch.tanh(out)
        return out, fmap.flatten(1)

    def newest_in_unit(self, pred: torch.Tensor) -> torch.Tensor:
        """An FDM prediction (B, P, H, W) -> its newest frame o_{t+1} (B, 3, H, W) in [0, 1] (unclamped)."""
        pred = pred[:, -3:]
        if self.centered:
            return pred + 0.5
        return (pred + 1) / 2 if self.cfg.pixels == "signed" else pred

    def predict_next(self, obs_t: torch.Tensor | np.ndarray, obs_tk: torch.Tensor | np.ndarray,
                     mask_t: torch.Tensor | np.ndarray | None = None,
                     mask_tk: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Frame stacks (and masks) -> the FDM's prediction of o_{t+1}, (B, 3, H, W) float in [0, 1] (whatever the
        model's pixel range)."""
        x_t = self.inputs(obs_t, mask_t)
        pred = self.predict_from_tensors(x_t, self.latent_from_tensors(x_t, self.inputs(obs_tk, mask_tk)))[0]
        return self.newest_in_unit(pred)

    def lam_loss(self, batch: Batch,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]:
        x_t = self.inputs(batch["obs_t"], batch.get("mask_t"))
        x_tk = self.inputs(batch["obs_tk"], batch.get("mask_tk"))
        target = self.frames(batch["obs_t1"])[:, -self.predicted_channels:]  # (B, P, H, W): o_{t+1} (or its stack)
        z = self.latent_from_tensors(x_t, x_tk)
        pred, emb = self.predict_from_tensors(x_t, z)
        pred = pred.float()
        b, _, h, w = target.shape
        info: dict[str, torch.Tensor] = {}
        if self.cfg.method == "masklam":
            if "mask_t1" not in batch:
                raise MasklamError("masklam needs the agent mask of o_{t+1} (batch key 'mask_t1')")
            mask = torch.as_tensor(batch["mask_t1"], device=target.device)  # (B, F, H, W) or (B, H, W) bool
            mask = mask[:, -1] if mask.dim() == 4 else mask  # (B, H, W): the mask of o_{t+1}
            weight = mask_weights(mask, self.cfg.mask_lambda, self.cfg.mask_dilation)
            info["train/mask_frac"] = (weight == 1).float().mean()
            if self.cfg.mask_target:  # reconstruct weight * o_{t+1} (background black) over every pixel
                black = -0.5 if self.centered else 0.0
                target = black + (target - black) * weight[:, None]
                weight = torch.ones_like(weight)
        else:
            weight = torch.ones(b, h, w, device=target.device)
        # With uniform weights (LAPO, mask_target) both normalisations are the same number; the per-sample
        # form keeps those losses bit-identical to earlier versions.
        uniform = self.cfg.method != "masklam" or self.cfg.mask_target
        loss = weighted_mse(pred, target, weight, "sample" if uniform else self.cfg.mask_norm)
        info["train/recon_mse"] = F.mse_loss(pred.detach(), target)
        return loss, info, z, emb


class LatentSpaceLAM(LatentActionModel):
    """LAOM (and LAOM+supervision): latent-space FDM against an EMA or stop-grad target."""

    def __init__(self, cfg: LAMConfig) -> None:
        super().__init__(cfg)
        self.encoder = ImpalaEncoder(3 * cfg.frame_stack, cfg.img_hw, cfg.encoder_scale, cfg.num_res_blocks,
                                     style=cfg.encoder)
        e = self.encoder.flat_dim
        if cfg.heads == "laom":  # LAOM's code: the IDM re-reads both embeddings, the FDM the latent only
            self.idm = ProjectedMLP(2 * e, cfg.latent_dim, cfg.head_dim, cfg.head_blocks)
            self.fdm = ProjectedMLP(e + cfg.latent_dim, e, cfg.head_dim, cfg.head_blocks, reread_from=e)
        else:
            self.idm = ResidualMLP(2 * e, cfg.latent_dim, cfg.head_dim, cfg.head_blocks)
            self.fdm = ResidualMLP(e + cfg.latent_dim, e, cfg.head_dim, cfg.head_blocks)
        self.action_head = nn.Linear(cfg.latent_dim, cfg.action_dim) if cfg.method == "laom-sup" else None
        self.state_probe = nn.Linear(e, cfg.state_dim)
        self.state_probe.requires_grad_(cfg.state_dim > 0)  # no states (imported video): frozen, as action_probe
        if cfg.init == "orthogonal":
            init_orthogonal(self)
        self.target_encoder: ImpalaEncoder | None = None
        if cfg.target == "ema":  # a copy of the initialised encoder
            self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)

    def _idm(self, e_t: torch.Tensor, e_tk: torch.Tensor) -> torch.Tensor:
        return self._quantize(self.idm(torch.cat([e_t, e_tk], dim=-1)))

    def latent_from_tensors(self, x_t: torch.Tensor, x_tk: torch.Tensor) -> torch.Tensor:
        e = self.encoder.flat(torch.cat([x_t, x_tk], dim=0))  # both frames in one pass: (2B, E)
        e_t, e_tk = e.chunk(2, dim=0)
        return self._idm(e_t, e_tk)

    def embed_tensor(self, x_t: torch.Tensor) -> torch.Tensor:
        return self.encoder.flat(x_t)

    def _maybe_augment(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if not (self.training and self.cfg.aug):
            return x
        return laom_augment(x, generator) if self.cfg.aug_style == "laom" else augment(x, generator)

    def lam_loss(self, batch: Batch,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]:
        x_t = self._maybe_augment(self.frames(batch["obs_t"]), generator)
        x_tk = self._maybe_augment(self.frames(batch["obs_tk"]), generator)
        x_t1 = self._maybe_augment(self.frames(batch["obs_t1"]), generator)
        e = self.encoder.flat(torch.cat([x_t, x_tk], dim=0))
        e_t, e_tk = e.chunk(2, dim=0)  # (B, E) each
        z = self._idm(e_t, e_tk)  # (B, D)
        pred = self.fdm(torch.cat([e_t.detach(), z], dim=-1)).float()  # (B, E)
        with torch.no_grad():
            target_enc = self.target_encoder if self.target_encoder is not None else self.encoder
            target = target_enc.flat(x_t1).float()  # (B, E)
        loss = F.mse_loss(pred, target)
        info: dict[str, torch.Tensor] = {"train/fdm_loss": loss.detach()}
        if self.action_head is not None:
            if "labeled" not in batch:
                raise MasklamError("laom-sup needs a labeled batch (batch key 'labeled'); set --labels N > 0")
            lab = batch["labeled"]
            z_lab = self.latent_from_tensors(self._maybe_augment(self.frames(lab["obs_t"]), generator),
                                             self._maybe_augment(self.frames(lab["obs_tk"]), generator))
            a_lab = torch.as_tensor(lab["action_t"], device=z_lab.device).float()
            sup = F.mse_loss(self.action_head(z_lab).float(), a_lab)
            info["train/sup_loss"] = sup.detach()
            loss = loss + self.cfg.sup_coef * sup
        return loss, info, z, e_t

    @torch.no_grad()
    def update_target(self) -> None:
        """EMA: target <- (1 - tau) * target + tau * online (one fused call over all tensors)."""
        if self.target_encoder is None:
            return
        tgt = list(self.target_encoder.parameters())
        src = [p.detach() for p in self.encoder.parameters()]
        torch._foreach_lerp_(tgt, src, self.cfg.target_tau)


def build_lam(cfg: LAMConfig) -> LatentActionModel:
    """The model class for `cfg.method` (data without actions or states: empty probes, built without torch's
    warning about initialising zero-element tensors)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return PixelLAM(cfg) if cfg.method in ("lapo", "masklam") else LatentSpaceLAM(cfg)


def load_lam(run_dir: str | Path, device: str | torch.device = "cpu") -> LatentActionModel:
    """Load a pretrained latent action model from a run directory (eval mode)."""
    return LatentActionModel.from_pretrained(run_dir, device)
