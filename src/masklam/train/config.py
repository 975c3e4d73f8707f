"""PretrainConfig: every knob of `masklam pretrain`, with presets and per-method defaults.

Fields left at None are filled in `__post_init__`, first from the recipe (`paper`: what MaskLAM's
authors' code sets for lapo and masklam), then from the method's defaults (frame stack, window offset,
augmentation, target), then from the preset (`cpu-small`: learns in minutes on two CPU cores; `paper`:
the papers' hyper-parameters). Any field given on the command line wins. A recipe fixes how a method
learns (inputs, offsets, loss, optimiser); a preset fixes its scale (steps, batch, widths, latent size).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from masklam.errors import MasklamError
from masklam.models.lam import LAMConfig

Method = Literal["lapo", "masklam", "laom", "laom-sup"]

PRESETS: dict[str, dict[str, Any]] = {
    "cpu-small": dict(steps=1500, epochs=None, batch_size=64, lr=3e-4, encoder_scale=1, latent_dim=128,
                      head_dim=256, head_blocks=2, warmup_frac=0.02, schedule="constant", labeled_batch_size=32),
    "paper": dict(steps=None, epochs=10.0, batch_size=512, lr=1e-4, encoder_scale=6, latent_dim=8192,
                  head_dim=1024, head_blocks=2, warmup_frac=0.3, schedule="linear", labeled_batch_size=128),
}
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lapo": dict(frame_stack=1, max_offset=1, aug=False, target="ema"),
    "masklam": dict(frame_stack=1, max_offset=1, aug=False, target="ema"),
    "laom": dict(frame_stack=3, max_offset=10, aug=True, target="ema"),
    "laom-sup": dict(frame_stack=3, max_offset=10, aug=True, target="stopgrad"),
}
# MaskLAM's authors' training code (../shared/reference/facts.md, section 9): LAPO and MaskLAM alike see
# frame stacks of 3 with the IDM's future stack at t+k, k uniform in 1..9 (the FDM always predicts o_{t+1});
# AdamW with a cosine schedule; MaskLAM appends the agent mask as a 4th input channel of every frame and
# normalises its masked error once per batch. AdamW's decay is not stated there: 0.01 is torch's default,
# which a plain `AdamW(params, lr)` uses. LAOM's recipe is its own paper's (the method defaults).
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    "paper": {
        "lapo": dict(frame_stack=3, max_offset=9, optimizer="adamw", weight_decay=0.01, schedule="cosine",
                     mask_channel=False),
        "masklam": dict(frame_stack=3, max_offset=9, optimizer="adamw", weight_decay=0.01, schedule="cosine",
                        mask_channel=True, mask_norm="batch"),
    },
}
# Fields that may change between an interrupted run and its resumption.
# Values of the fields no preset, method or recipe sets.
FALLBACKS: dict[str, Any] = dict(optimizer="adam", weight_decay=0.0, mask_channel=False, mask_norm="batch")
RESUMABLE_CHANGES = frozenset({"out", "device", "compile", "log_every", "ckpt_every", "tensorboard", "wandb",
                               "wandb_project", "probe_batch_size", "progress", "threads",
                               # the probe runs after training: changing it never invalidates the weights
                               "probe_ridge", "probe_max_trajs"})


@dataclass
class PretrainConfig:
    """Train a latent action model on an HDF5 dataset; writes config.json, model.safetensors, metrics.json."""

    method: Method
    """lapo | masklam (LAPO + agent-mask-weighted loss) | laom | laom-sup (LAOM + action supervision)"""
    data: tuple[Path, ...]
    """dataset file(s) or directories of shards (HDF5, masklam/LAOM layout)"""
    out: Path
    """run directory; an interrupted run in it resumes"""
    preset: Literal["cpu-small", "paper"] = "cpu-small"
    """defaults for the fields left unset: cpu-small (minutes on 2 CPU cores) or paper (the papers' values)"""
    recipe: Literal["default", "paper"] = "default"
    """how lapo/masklam learn: default (the papers' text: frame stack 1, k = 1, Adam) or paper (MaskLAM's
    authors' code: frame stack 3, k in 1..9, AdamW + cosine, mask input channel and per-batch mask
    normalisation for masklam); fields given explicitly win"""

    steps: int | None = None
    """optimisation steps (default: preset; paper derives them from --epochs)"""
    epochs: float | None = None
    """passes over the training windows, used when --steps is not set"""
    batch_size: int | None = None
    """windows per step"""
    lr: float | None = None
    """learning rate"""
    optimizer: Literal["adam", "adamw"] | None = None
    """adam (default) or adamw (decoupled weight decay; the paper recipe)"""
    weight_decay: float | None = None
    """weight decay (default 0; 0.01 with the paper recipe)"""
    warmup_frac: float | None = None
    """fraction of the steps with a linear learning-rate warm-up"""
    schedule: Literal["constant", "linear", "cosine"] | None = None
    """learning-rate decay after the warm-up"""
    grad_clip: float | None = None
    """clip the gradient norm to this value (None: no clipping)"""

    encoder_scale: int | None = None
    """IMPALA ResNet channel multiplier: channels (16, 32, 32) x scale"""
    num_res_blocks: int = 2
    """residual blocks per ResNet stage"""
    latent_dim: int | None = None
    """latent action size"""
    head_dim: int | None = None
    """width of LAOM's residual MLP heads"""
    head_blocks: int | None = None
    """blocks per LAOM residual MLP head"""
    fsq_levels: tuple[int, ...] = ()
    """quantise the latent with FSQ at these levels, e.g. 8 5 5 5 (ablation; empty = off)"""
    frame_stack: int | None = None
    """frames per observation (default 1 for lapo/masklam, 3 for laom)"""
    max_offset: int | None = None
    """IDM sees o_{t+k}, k uniform in 1..max_offset (default 1 for lapo/masklam, 10 for laom)"""

    mask_lambda: float = 0.0
    """MaskLAM background weight in [0, 1]; 1 is exactly LAPO"""
    mask_dilation: int = 0
    """MaskLAM: dilate the agent mask by this many pixels"""
    mask_target: bool = False
    """MaskLAM: instead of weighting the error, reconstruct the masked frame M*o_{t+1} (background black) at every pixel"""
    mask_channel: bool | None = None
    """append the agent mask as a 4th input channel of every frame the IDM and FDM see (on for masklam in the
    paper recipe; for lapo an ablation); latents are then labelled with masks too"""
    mask_norm: Literal["batch", "sample"] | None = None
    """MaskLAM's masked error divided by the mask area once per batch (default, the authors' code) or per sample"""
    mask_key: Literal["masks", "sam2_masks", "masks_mobilesam", "masks_student"] = "masks"
    """MaskLAM: which masks of the file (simulator, SAM 2, MobileSAM or its student; `masklam masks`)"""

    target: Literal["ema", "stopgrad"] | None = None
    """LAOM target encoder: EMA (default for laom) or stop-grad of the online encoder (default for laom-sup)"""
    target_tau: float = 0.001
    """EMA rate of LAOM's target encoder"""
    aug: bool | None = None
    """random shift/rotation/perspective during training (default on for laom, off for lapo/masklam)"""
    labeled: int = 0
    """laom-sup: number of labeled training trajectories for the supervised action head"""
    labeled_batch_size: int | None = None
    """laom-sup: labeled windows per step"""
    sup_coef: float = 0.01
    """laom-sup: weight of the supervised action loss"""

    heldout: float = 0.1
    """fraction of trajectories held out (probe evaluation, reconstructions)"""
    split_seed: int = 0
    """seed of the train/held-out split and of the labeled subset"""
    seed: int = 0
    """seed of initialisation, batches and augmentations"""
    log_every: int = 100
    """steps between console/TensorBoard lines"""
    ckpt_every: int = 500
    """steps between checkpoints (train_state.pt)"""
    probe_ridge: float | None = None
    """ridge strength of the final probe, relative to the mean latent variance (None: chosen by 5-fold
    cross-validation over the training trajectories)"""
    probe_batch_size: int = 256
    """windows per batch when encoding latents for the final probe"""
    probe_max_trajs: int | None = None
    """fit the final probe on at most this many training trajectories (None: all)"""
    recon_samples: int = 8
    """held-out frames in recon.png (lapo, masklam; 0 = none)"""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""
    threads: int | None = None
    """CPU threads for torch (None: torch's default; 1 is often fastest on a busy machine)"""
    compile: bool = False
    """torch.compile the model"""
    bf16: bool = True
    """bf16 autocast where native: CUDA, or a CPU with AVX-512 BF16 / AMX (about 1.7x faster there)"""
    tensorboard: bool = True
    """write TensorBoard logs to OUT/tb"""
    wandb: bool = False
    """also log to Weights & Biases (needs the wandb package)"""
    wandb_project: str = "masklam"
    """wandb project name"""
    progress: bool = True
    """show a progress bar"""

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, Path)):
            self.data = (self.data,)
        self.data = tuple(Path(p) for p in self.data)
        self.out = Path(self.out)
        self.fsq_levels = tuple(int(v) for v in self.fsq_levels)
        if self.preset not in PRESETS:
            raise MasklamError(f"unknown preset {self.preset!r}; one of {', '.join(PRESETS)}")
        if self.method not in METHOD_DEFAULTS:
            raise MasklamError(f"unknown method {self.method!r}; one of {', '.join(METHOD_DEFAULTS)}")
        if self.recipe not in RECIPES:
            raise MasklamError(f"unknown recipe {self.recipe!r}; one of {', '.join(RECIPES)}")
        defaults = {**PRESETS[self.preset], **METHOD_DEFAULTS[self.method], **FALLBACKS,
                    **RECIPES[self.recipe].get(self.method, {})}
        explicit_steps = self.steps is not None
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if explicit_steps or self.epochs is None:
            self.epochs = None
        self._validate()

    def _validate(self) -> None:
        if not self.data:
            raise MasklamError("--data needs at least one file")
        positive = ["batch_size", "encoder_scale", "latent_dim", "head_dim", "head_blocks", "frame_stack",
                    "max_offset", "num_res_blocks", "log_every", "ckpt_every", "probe_batch_size", "labeled_batch_size"]
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise MasklamError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise MasklamError(f"steps must be >= 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise MasklamError(f"epochs must be > 0, got {self.epochs}")
        if not self.lr > 0:
            raise MasklamError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise MasklamError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if not 0.0 <= self.mask_lambda <= 1.0:
            raise MasklamError(f"mask_lambda must be in [0, 1], got {self.mask_lambda}")
        if self.mask_dilation < 0:
            raise MasklamError(f"mask_dilation must be >= 0, got {self.mask_dilation}")
        if not 0.0 < self.target_tau <= 1.0:
            raise MasklamError(f"target_tau must be in (0, 1], got {self.target_tau}")
        if not 0.0 <= self.heldout < 1.0:
            raise MasklamError(f"heldout must be in [0, 1), got {self.heldout}")
        if self.heldout == 0.0:
            raise MasklamError("heldout must be > 0: the probe is reported on held-out trajectories")
        if self.mask_channel and self.method not in ("lapo", "masklam"):
            raise MasklamError(f"--mask-channel is for pixel LAMs (lapo, masklam), not {self.method}")
        if self.method == "laom-sup" and self.labeled < 1:
            raise MasklamError("laom-sup needs labeled trajectories: pass --labeled N (N >= 1)")
        if self.method != "laom-sup" and self.labeled:
            raise MasklamError(f"--labeled is only used by laom-sup, not {self.method}")
        if self.labeled < 0 or self.sup_coef < 0 or self.weight_decay < 0 or self.recon_samples < 0:
            raise MasklamError("labeled, sup_coef, weight_decay and recon_samples must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise MasklamError(f"threads must be >= 1, got {self.threads}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise MasklamError(f"grad_clip must be > 0, got {self.grad_clip}")

    def total_steps(self, num_windows: int) -> int:
        """Steps of the run: --steps, or ceil(epochs * training windows / batch size)."""
        if self.steps is not None:
            return int(self.steps)
        return max(1, math.ceil(float(self.epochs) * num_windows / self.batch_size))

    def lam_config(self, action_dim: int, state_dim: int, img_hw: int) -> LAMConfig:
        """The model part of this config, for a dataset with these sizes."""
        return LAMConfig(
            method=self.method, action_dim=action_dim, state_dim=state_dim, img_hw=img_hw,
            frame_stack=self.frame_stack, latent_dim=self.latent_dim, encoder_scale=self.encoder_scale,
            num_res_blocks=self.num_res_blocks, head_dim=self.head_dim, head_blocks=self.head_blocks,
            fsq_levels=self.fsq_levels, mask_lambda=self.mask_lambda, mask_dilation=self.mask_dilation,
            mask_target=self.mask_target, mask_channel=bool(self.mask_channel), mask_norm=self.mask_norm,
            target=self.target, target_tau=self.target_tau, aug=bool(self.aug),
            sup_coef=self.sup_coef)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (paths as strings)."""
        out = dataclasses.asdict(self)
        out["data"] = [str(p) for p in self.data]
        out["out"] = str(self.out)
        out["fsq_levels"] = list(self.fsq_levels)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PretrainConfig":
        """Inverse of `to_dict` (unknown keys such as "model" are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
