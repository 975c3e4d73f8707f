"""PretrainConfig: every knob of `masklam pretrain`, and the one way its unset fields get their values.

A field left unset (None) takes its value from the highest-precedence source that sets it (`resolve_fields`):

    given explicitly (command line, constructor) > recipe > method defaults > preset > FIELD_DEFAULTS

- a preset (PRESETS, `--preset`) fixes the scale: run length, batch, widths, latent size. `cpu-small` learns in
  minutes on two CPU cores, `h100` is sized for one H100, `paper` holds the papers' hyper-parameters (their
  control-suite runs; `paper-metaworld` is the same, but for the authors' recipe their Meta-World run);
- the method's defaults (`masklam.methods`, registered with the model in masklam.models.lam) are its own
  paper's choices: frame stack, window offset, LAOM's augmentation and target;
- a recipe (RECIPES, `--recipe`) fixes how a LAM learns: `paper` is MaskLAM's paper as written (lapo, masklam),
  `authors` what its authors' code sets (lapo, masklam), `laom-code` what LAOM's code sets (laom, laom-sup, and
  lapo: its LAPO baseline);
- FIELD_DEFAULTS: values that no source sets.

The run length is one choice made by one source: a source that sets `updates` or `epochs` clears the other,
so `--updates` overrides the paper preset's epochs and `--epochs` the cpu-small preset's updates.
Options that only some methods use (METHOD_OPTIONS) are a one-line error when given for another method (unless
the value given is the one the field has anyway), instead of being silently ignored.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

from masklam import methods
from masklam.errors import MasklamError, check_at_least
from masklam.models.encoder import stage_channels
from masklam.seeding import check_seeds
from masklam.models.lam import LAOM_METHODS as LAOM, PIXEL_METHODS as PIXEL, PIXELS_FOR, LAMConfig
from masklam.train.recipes import PRESETS, RECIPES, recipe_at_preset  # the named sources

Method = Literal[methods.trainers()]  # type: ignore[valid-type]  # lapo, masklam, laom, laom-sup

FIELD_DEFAULTS: dict[str, Any] = dict(optimizer="adam", weight_decay=0.0, mask_channel=False, mask_norm="batch",
                                      init="default", pixels="unit", fdm_width=1.0, decoder="ours", idm_window="pair",
                                      aug_style="ours", heads="ours", encoder="impala", sampling="replacement")
"""Values of the fields that no preset, method or recipe sets."""
RUN_LENGTH = ("updates", "epochs")
"""Two ways to give the run length: a source that sets one of them clears the other."""

METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "mask_lambda": ("masklam",), "mask_dilation": ("masklam",), "mask_target": ("masklam",),
    "mask_norm": ("masklam",), "mask_channel": PIXEL, "mask_key": PIXEL, "recon_samples": PIXEL,
    "pixels": PIXEL + LAOM, "fdm_width": PIXEL, "decoder": PIXEL, "idm_window": PIXEL,
    "head_dim": LAOM, "head_blocks": LAOM, "target": LAOM, "target_tau": LAOM, "aug": LAOM,
    "aug_style": LAOM, "heads": LAOM, "encoder": PIXEL + LAOM,
    "labels": ("laom-sup",), "labels_batch_size": ("laom-sup",), "sup_coef": ("laom-sup",),
}
"""The fields only some methods use, and those methods."""
_METHOD_GROUPS = {PIXEL: "pixel LAMs (lapo, masklam)", LAOM: "LAOM (laom, laom-sup)"}

OMITTED_DEFAULTS: dict[str, Any] = {**FIELD_DEFAULTS, "observations": "distracted", "episode_length": None,
                                    "init": "default", "pixels": "unit", "fdm_width": 1.0, "decoder": "ours",
                                    "idm_window": "pair", "aug_style": "ours", "heads": "ours", "encoder": "impala",
                                    "sampling": "replacement"}
"""What a field absent from a run's config.json held: runs before 2026-12-06 recorded observations,
episode_length, init, pixels, fdm_width, decoder and idm_window only when set, and had no aug_style, heads,
encoder or sampling (a resume compares with these: their values then, written out, so that a later change of
FIELD_DEFAULTS cannot change what old runs mean)."""
# Fields that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = frozenset({"out", "device", "compile", "log_every", "ckpt_every", "tensorboard", "wandb",
                               "wandb_project", "probe_batch_size", "progress", "threads",
                               # the probe runs after training: changing it never invalidates the weights
                               "probe_ridge", "probe_max_trajs",
                               # where each value came from (an option given again explicitly changes nothing)
                               "origins"})


METHOD_VALUES: dict[tuple[str, str], tuple[str, ...]] = {
    **{("pixels", value): users for value, users in PIXELS_FOR.items() if users},
    ("pixels", "unit"): PIXEL}
"""Values of a field several methods use that only some of them take (models.lam.PIXELS_FOR; LAOM's pixels are
[0, 1] by default, as before `pixels` applied to it: a sweep's "unit" is dropped for LAOM, its stage keys
unchanged)."""


def options_for(method: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `fields` (shared by several methods, e.g. a sweep's [pretrain]) that `method` uses."""
    return {k: v for k, v in fields.items() if method in METHOD_OPTIONS.get(k, (method,))
            and method in METHOD_VALUES.get((k, v) if isinstance(v, str) else (k, ""), (method,))}


def resolve_fields(explicit: Mapping[str, Any], sources: Sequence[Mapping[str, Any]],
                   exclusive: Sequence[Sequence[str]] = (RUN_LENGTH,)) -> dict[str, Any]:
    """Field values from `sources` (lowest precedence first) with `explicit` on top; a source that sets a
    field of an `exclusive` group sets that group's other fields to None (unless it sets them too)."""
    return {k: v for k, (v, _) in resolve_with_origin(explicit, dict(enumerate(sources)), exclusive).items()}


def resolve_with_origin(explicit: Mapping[str, Any], sources: Mapping[Any, Mapping[str, Any]],
                        exclusive: Sequence[Sequence[str]] = (RUN_LENGTH,)) -> dict[str, tuple[Any, Any]]:
    """`resolve_fields` keeping where each value came from: field -> (value, name of its source), `sources` a
    mapping name -> fields in increasing precedence, "explicit" for `explicit`."""
    out: dict[str, tuple[Any, Any]] = {}
    for name, source in [*sources.items(), ("explicit", explicit)]:
        source = dict(source)
        for group in exclusive:
            if any(field in source for field in group):
                for field in group:
                    source.setdefault(field, None)
        out.update({k: (v, name) for k, v in source.items()})
    return out


def format_origins(fields: Iterable[tuple[str, Any, Any]]) -> str:
    """(name, value, where it came from) per field, one line each: what `--print-config` prints."""
    return "\n".join(f"{name:<18} {value!s:<28} {origin}" for name, value, origin in fields)


@dataclass
class PretrainConfig:
    """Train a latent action model on an HDF5 dataset; writes config.json, model.safetensors, metrics.json."""

    method: Method
    """lapo | masklam (LAPO + agent-mask-weighted loss) | laom | laom-sup (LAOM + action supervision)"""
    data: tuple[Path, ...]
    """dataset file(s) or directories of shards: HDF5 (ours, or LAOM's published files) or MaskLAM's parquet data
    (a file or a directory of shards; the format is read from the content)"""
    out: Path
    """run directory; an interrupted run in it resumes"""
    preset: Literal["cpu-small", "h100", "paper", "paper-metaworld"] = "cpu-small"
    """the scale of unset fields: cpu-small (minutes on 2 CPU cores), h100 (one H100), paper (the papers'
    values, their control-suite runs), paper-metaworld (the same; with --recipe authors their Meta-World run: lr
    3e-4, batch 128, 4 epochs); explicit values, the recipe and the method's defaults win over it"""
    recipe: Literal["default", "paper", "authors", "laom-code"] = "default"
    """how a LAM learns: default (the method's defaults: frame stack 1, k = 1 for lapo/masklam), paper (MaskLAM's
    paper as written, for lapo/masklam: frame stack 1, k = 1, LAOM's hyper-parameters), authors (MaskLAM's
    authors' code, for lapo/masklam: frame stack 3, k in 1..9 and a mask input channel for masklam, one window
    o_{t-2..t+1} for lapo, orthogonal init, centred pixels and tanh output, a 1.5x wider FDM with their decoder,
    AdamW 6e-4 cosine, no warm-up) or laom-code (LAOM's code, for laom/laom-sup: its head layout with 3 blocks,
    strided ReLU6 encoder, pixels in [-1, 1], orthogonal init, its 1-of-8 augmentations, an EMA target for
    laom-sup; for lapo its LAPO baseline: frame stack 3, k in 1..10, strided ReLU6 encoders, the whole next stack
    predicted, pixels in [-1, 1]); README, "Recipes"; explicit values win over it"""

    updates: int | None = None
    """optimiser updates (default: the preset's; the paper preset derives them from --epochs)"""
    epochs: float | None = None
    """run length as passes over the training windows instead of --updates (default: the preset's)"""
    batch_size: int | None = None
    """windows per update (default: the preset's)"""
    sampling: Literal["replacement", "epochs"] | None = None
    """how each update's windows are drawn: uniformly with replacement (default) or in shuffled epochs, each window
    once per pass (both papers' code; the authors' and laom-code recipes at the paper presets)"""
    lr: float | None = None
    """learning rate (default: the preset's)"""
    optimizer: Literal["adam", "adamw"] | None = None
    """adam (default) or adamw (decoupled weight decay; the authors' recipe)"""
    weight_decay: float | None = None
    """weight decay (default 0; 0.01 with the authors' recipe)"""
    warmup_frac: float | None = None
    """fraction of the updates with a linear learning-rate warm-up (default: the preset's)"""
    schedule: Literal["constant", "linear", "cosine"] | None = None
    """learning-rate decay after the warm-up (default: the preset's; cosine with the authors' recipe)"""
    grad_clip: float | None = None
    """clip the gradient norm to this value (None: no clipping)"""

    encoder_scale: int | None = None
    """IMPALA ResNet channel multiplier: channels (16, 32, 32) x scale (default: the preset's)"""
    num_res_blocks: int = 2
    """residual blocks per ResNet stage"""
    latent_dim: int | None = None
    """latent action size (default: the preset's)"""
    head_dim: int | None = None
    """laom, laom-sup: width of the residual MLP heads (IDM, FDM) (default: the preset's)"""
    head_blocks: int | None = None
    """laom, laom-sup: blocks per residual MLP head (default: the preset's)"""
    fdm_width: float | None = None
    """lapo, masklam: the FDM's width as a multiple of the IDM's (default 1; 1.5 with the authors' recipe)"""
    decoder: Literal["ours", "authors", "laom"] | None = None
    """lapo, masklam: the FDM's decoder layout: ours (residual blocks, ConvT k4, 3x3 head) or the authors' (ConvT
    k2, residual blocks, GELU, 1x1 head; their encoder map not ReLU'd) (default ours); lapo: laom (LAOM's LAPO
    baseline: the authors' layout with ReLU6 blocks, predicting the whole next stack)"""
    idm_window: Literal["pair", "single"] | None = None
    """lapo, masklam: the IDM reads the stacks at t and t+k (pair, default) or one window o_{t-F+1..t+1} (single,
    the authors' LAPO; needs --max-offset 1)"""
    init: Literal["default", "orthogonal"] | None = None
    """weight initialisation: PyTorch's default, or orthogonal (gain 1, zero bias) for every Conv2d,
    ConvTranspose2d and Linear (the authors') (default: default)"""
    pixels: Literal["unit", "centered", "signed"] | None = None
    """RGB in [0, 1] (unit, default); lapo, masklam: x/255 - 0.5 with a 0.5*tanh FDM output (centered, MaskLAM's
    authors'; a mask channel stays {0, 1}); lapo, laom, laom-sup: 2 x/255 - 1 (signed, LAOM's code; lapo's FDM
    output a tanh)"""
    fsq_levels: tuple[int, ...] = ()
    """quantise the latent with FSQ at these levels, e.g. 8 5 5 5 (ablation; empty = off)"""
    frame_stack: int | None = None
    """frames per observation (default 1 for lapo/masklam, 3 for laom and with the authors' recipe)"""
    max_offset: int | None = None
    """IDM sees o_{t+k}, k uniform in 1..max_offset (default 1 for lapo/masklam, 10 for laom, 9 for masklam with
    the authors' recipe)"""

    mask_lambda: float = 0.0
    """masklam: background weight of the loss in [0, 1]; 1 is exactly LAPO"""
    mask_dilation: int = 0
    """masklam: dilate the agent mask by this many pixels"""
    mask_target: bool = False
    """masklam: instead of weighting the error, reconstruct the masked frame M*o_{t+1} (background black) at
    every pixel"""
    mask_channel: bool | None = None
    """lapo, masklam: append the agent mask as a 4th input channel of every frame the IDM and FDM see (on for
    masklam in the authors' recipe; for lapo an ablation); latents are then labelled with masks too"""
    mask_norm: Literal["batch", "sample"] | None = None
    """masklam: divide the masked error by the mask area once per batch (default, the authors' code) or per
    sample"""
    mask_key: Literal["masks", "sam2_masks", "masks_mobilesam", "masks_student"] = "masks"
    """lapo, masklam: which masks of the file (simulator, SAM 2, MobileSAM or its student; `masklam masks`); in
    MaskLAM's parquet data: masks = its simulator masks (`mask`), sam2_masks = its SAM masks (`pred_mask*`)"""
    observations: Literal["distracted", "clean"] = "distracted"
    """MaskLAM's parquet data: train on its distracted frames (`observation_distracted`) or its distractor-free
    ones (`observation`, the LAPO-clean upper bound); HDF5 files hold one kind of frame"""
    episode_length: int | None = None
    """MaskLAM's parquet data: cut its rows into episodes of this many steps too (DCS: 1000), for data whose
    time-limit episodes set neither `terminated` nor `truncated`"""

    target: Literal["ema", "stopgrad"] | None = None
    """laom, laom-sup: target encoder, EMA (default for laom) or stop-grad of the online encoder (default for
    laom-sup)"""
    target_tau: float = 0.001
    """laom, laom-sup: EMA rate of the target encoder"""
    aug: bool | None = None
    """laom, laom-sup: random shift/rotation/perspective during training (default on)"""
    aug_style: Literal["ours", "laom"] | None = None
    """laom, laom-sup: which augmentations: ours (a mild shift +-4 px, rotation +-5 degrees and perspective
    jitter on every sample, default) or LAOM's code's (one of 8 choices per sample, none among them: shifts up to
    +-14 px, rotations up to +-90 degrees, strong perspective)"""
    heads: Literal["ours", "laom"] | None = None
    """laom, laom-sup: IDM/FDM head layout: ours (every block re-reads the whole conditioning at 4x width, default)
    or LAOM's code's (a Linear back to --head-dim before each block; its FDM re-reads the latent only: the paper's
    Table 4 parameter counts with --head-blocks 3)"""
    encoder: Literal["impala", "laom"] | None = None
    """the ResNet encoders: impala (conv + max-pool per stage, ReLU, a final ReLU, default) or LAOM's code's (a
    stride-2 conv per stage, ReLU6, no final activation; lapo, masklam: and a GELU before the IDM's Linear, as
    LAOM's LAPO)"""
    labels: int = 0
    """laom-sup: number of labelled training trajectories for the supervised action head"""
    labels_batch_size: int | None = None
    """laom-sup: labelled windows per update (default: the preset's)"""
    sup_coef: float = 0.01
    """laom-sup: weight of the supervised action loss"""

    heldout: float = 0.1
    """fraction of trajectories held out (probe evaluation, reconstructions); 0 trains on every trajectory, as both
    papers' code, and skips the probe and the reconstructions"""
    split_seed: int = 0
    """seed of the train/held-out split and of the labelled subset"""
    seed: int = 0
    """seed of initialisation, batches and augmentations"""
    log_every: int = 100
    """updates between console/TensorBoard lines"""
    ckpt_every: int = 500
    """updates between checkpoints (train_state.pt)"""
    probe_ridge: float | None = None
    """ridge strength of the final probe, relative to the mean latent variance (None: chosen by 5-fold
    cross-validation over the training trajectories)"""
    probe_batch_size: int = 256
    """windows per batch when encoding latents for the final probe"""
    probe_max_trajs: int | None = None
    """fit the final probe on at most this many training trajectories (None: all)"""
    recon_samples: int = 8
    """lapo, masklam: held-out frames in recon.png (0 = none)"""
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
    print_config: bool = False
    """print every resolved field with where its value came from (explicit, recipe, method, preset, default),
    then exit without training"""

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, Path)):
            self.data = (self.data,)
        self.data = tuple(Path(p) for p in self.data)
        self.out = Path(self.out)
        self.fsq_levels = tuple(int(v) for v in self.fsq_levels)
        for name, table in (("preset", PRESETS), ("method", methods.trainers()), ("recipe", RECIPES)):
            if getattr(self, name) not in table:
                raise MasklamError(f"unknown {name} {getattr(self, name)!r}; one of {', '.join(table)}")
        if self.updates is not None and self.epochs is not None:
            raise MasklamError("give the run length as --updates or as --epochs, not both")
        sources = self.sources()
        explicit = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                    if f.default is None and getattr(self, f.name) is not None}
        baseline = resolve_fields({}, list(sources.values()))
        resolved = resolve_with_origin(explicit, sources)
        for name, (value, _) in resolved.items():
            setattr(self, name, value)
        self.origins = {name: origin for name, (_, origin) in resolved.items()}
        self._check_method_options(baseline)
        self._validate()

    def sources(self) -> dict[str, dict[str, Any]]:
        """The sources of unset fields by name, lowest precedence first: field defaults, preset, method, recipe
        (and the recipe's values at this preset)."""
        recipe = RECIPES[self.recipe].get(self.method, {})
        return {"default": FIELD_DEFAULTS, f"preset {self.preset}": PRESETS[self.preset],
                f"method {self.method}": methods.get(self.method).defaults, f"recipe {self.recipe}": recipe,
                f"recipe {self.recipe} at preset {self.preset}": recipe_at_preset(self.recipe, self.preset,
                                                                                   self.method)}

    def describe(self) -> str:
        """Every field with its value and where it came from, one per line (`--print-config`)."""
        return format_origins(
            (f.name, getattr(self, f.name),
             self.origins.get(f.name, "explicit" if getattr(self, f.name) != f.default else "default"))
            for f in dataclasses.fields(self) if f.name != "print_config")

    def _check_method_options(self, baseline: dict[str, Any]) -> None:
        """A one-line error for an option of another method given a value that would silently be ignored."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, users in METHOD_OPTIONS.items():
            if self.method in users:
                continue
            value = getattr(self, name)
            if value != baseline.get(name, defaults[name]):
                who = _METHOD_GROUPS.get(users, ", ".join(users))
                raise MasklamError(f"--{name.replace('_', '-')} is only for {who}, not {self.method}")

    def _validate(self) -> None:
        if not self.data:
            raise MasklamError("--data needs at least one file")
        positive = ["batch_size", "encoder_scale", "latent_dim", "head_dim", "head_blocks", "frame_stack",
                    "max_offset", "num_res_blocks", "log_every", "ckpt_every", "probe_batch_size", "labels_batch_size"]
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise MasklamError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.updates is not None and self.updates < 1:
            raise MasklamError(f"updates must be >= 1, got {self.updates}")
        if self.epochs is not None and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise MasklamError(f"epochs must be a finite number > 0, got {self.epochs}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise MasklamError(f"lr must be a finite number > 0, got {self.lr}")
        check_seeds(seed=self.seed, split_seed=self.split_seed)
        for name in ("weight_decay", "sup_coef", "grad_clip", "probe_ridge", "fdm_width", "target_tau"):
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
                raise MasklamError(f"{name} must be a finite number, got {getattr(self, name)}")
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
        if self.method == "laom-sup" and self.labels < 1:
            raise MasklamError("laom-sup needs labelled trajectories: pass --labels N (N >= 1)")
        check_at_least(0, labels=self.labels, sup_coef=self.sup_coef, weight_decay=self.weight_decay,
                       recon_samples=self.recon_samples)
        if self.threads is not None and self.threads < 1:
            raise MasklamError(f"threads must be >= 1, got {self.threads}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise MasklamError(f"grad_clip must be > 0, got {self.grad_clip}")
        if not self.fdm_width > 0:
            raise MasklamError(f"fdm_width must be > 0, got {self.fdm_width}")
        if min(stage_channels(self.encoder_scale * self.fdm_width)) < 1:
            raise MasklamError(f"fdm_width {self.fdm_width} x encoder_scale {self.encoder_scale} leaves the FDM's "
                               f"first stage no channel (16 x {self.encoder_scale * self.fdm_width:g} rounds to 0)")
        users = PIXELS_FOR.get(self.pixels)  # unit: every method (an unknown value: LAMConfig's error below)
        if users and self.method not in users:
            who = _METHOD_GROUPS.get(users, ", ".join(users))
            raise MasklamError(f"--pixels {self.pixels} is for {who}, not {self.method}")
        if self.sampling not in ("replacement", "epochs"):
            raise MasklamError(f"sampling must be 'replacement' or 'epochs', got {self.sampling!r}")
        if self.idm_window == "single" and self.max_offset != 1:
            raise MasklamError(f"--idm-window single reads one window o_(t-F+1..t+1): it needs --max-offset 1, "
                               f"got {self.max_offset}")
        for name in ("episode_length", "probe_max_trajs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise MasklamError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.probe_ridge is not None and self.probe_ridge < 0:
            raise MasklamError(f"probe_ridge must be >= 0, got {self.probe_ridge}")
        self.lam_config(0, 0, 64)  # the model's own checks (models.lam.LAMConfig), before any data are read

    def total_updates(self, num_windows: int) -> int:
        """Optimiser updates of the run: --updates, or ceil(epochs * training windows / batch size)."""
        if self.updates is not None:
            return int(self.updates)
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
            sup_coef=self.sup_coef, init=self.init, pixels=self.pixels, decoder=self.decoder,
            idm_window=self.idm_window, heads=self.heads, encoder=self.encoder, aug_style=self.aug_style,
            fdm_scale=0.0 if self.fdm_width == 1.0 else self.encoder_scale * self.fdm_width)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (paths as strings)."""
        out = dataclasses.asdict(self)
        out["data"] = [str(p) for p in self.data]
        out["out"] = str(self.out)
        out["fsq_levels"] = list(self.fsq_levels)
        del out["print_config"]
        out["origins"] = dict(getattr(self, "origins", {}))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PretrainConfig":
        """Inverse of `to_dict` (unknown keys such as "model" are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"print_config"}
        return cls(**{k: v for k, v in d.items() if k in names})
