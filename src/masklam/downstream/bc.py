"""`masklam bc`: one policy network, one training loop, every regression target of the pipeline.

Trains an `ImagePolicy` (masklam.downstream.policy) on a target (masklam.downstream.targets):
- `target="latent"`: the frozen LAM's latent for (o_t, o_{t+1}), standardised per dimension (latent BC,
  full unlabeled data);
- `target="action"`: the true action (BC on N labeled trajectories, or on all of them: the normaliser);
- `target="idm"`: the action an IDM infers for (o_t, o_{t+1}) (the IDM baseline's BC on relabels).
With `pair_input=True` the network sees (o_t, o_{t+1}) and is itself the IDM (target "action" on N
labeled trajectories).

OUT holds the policy (model.safetensors, config.json), metrics.json and, while training, OUT/resume/
(the run's config.json and train_state.pt): a run resumes from there when its config is the same, up
to `RESUMABLE_CHANGES` (masklam.train.checkpoint.check_resumable).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from masklam.devices import place, resolve_device
from masklam.downstream.policy import ImagePolicy, PolicyConfig
from masklam.downstream.targets import TargetFn, env_meta_of, latent_stats, make_target_fn, standardized
from masklam.args import parse
from masklam.errors import MasklamError, check_at_least
from masklam.locks import output_lock
from masklam.files import atomic_path, config_record, write_json
from masklam.seeding import check_seeds
from masklam.train.checkpoint import TRAIN_STATE, check_lam_data, check_resumable, lam_mask_key, load_train_state
from masklam.train.precision import autocast
from masklam.train.schedule import lr_factor, make_optimizer, set_lr

VERSION = 4
"""Version of what BC training computes for a config (BC and IDM stages alike): cached stages of another version
are not reused (2: latent targets standardised per dimension; 3: bf16 autocast on CPUs with native bf16; 4:
held-out errors over every held-out window)."""

RESUME_DIR = "resume"
RESUMABLE_CHANGES = frozenset({"device", "out", "save_every"})
"""BCConfig fields a resumed run may change: where it runs, where it writes, how often it checkpoints."""


AUTHORS_LATENT_BC: dict[str, Any] = dict(standardize=False, optimizer="adamw", lr=4e-4, schedule="cosine", hidden=0)
"""Latent BC as MaskLAM's authors train it (their stage 2): targets not standardised, AdamW 4e-4, cosine, and a
latent policy whose head is one Linear from the encoder's map (their ImpalaCNNBackbone: no hidden layer)."""

LAOM_LATENT_BC: dict[str, Any] = dict(arch="laom", hidden=0, standardize=False, schedule="linear")
"""Latent BC as LAOM's code trains it (docs/laom-vs-code.md): its Actor, raw latent targets, the learning rate
decayed linearly to 0; its Adam at 1e-4, 10 epochs and batch 512 are our defaults, its encoder scale 32 a scale
(`--encoder-scale 32`)."""


@dataclass
class BCConfig:
    """Behaviour cloning from images: latent BC, BC on true actions, IDM training, BC on IDM relabels."""

    data: tuple[Path, ...]
    """HDF5 dataset file(s) (all shards as one)"""
    out: Path
    """output directory (model, config, metrics; resumes from OUT/resume/)"""
    target: Literal["latent", "action", "idm"] = "latent"
    """what to regress: the frozen LAM's latent, the true action, or an IDM's relabel"""
    lam: Path | None = None
    """LAM run directory or Hugging Face Hub repo id (target latent)"""
    idm: Path | None = None
    """IDM directory written by this command with --pair-input (target idm)"""
    labels: int | None = None
    """train only on this many labeled trajectories (default: all training trajectories)"""
    pair_input: bool = False
    """train an inverse dynamics model (o_t, o_{t+1}) -> target"""
    frame_stack: int = 3
    """frames of the policy's input stack"""
    encoder_scale: int = 1
    """IMPALA channel multiplier (the papers use 32 for BC)"""
    num_res_blocks: int = 2
    """residual blocks per IMPALA stage"""
    hidden: int = 256
    """width of the MLP head's hidden layer (0: none, one Linear from the encoder's map: the authors' latent
    policy)"""
    arch: Literal["ours", "laom"] = "ours"
    """the policy network: ours (IMPALA encoder, flattened map, MLP head) or laom (LAOM's code's Actor: strided
    ReLU6 encoder, global average pooling, ReLU6, one Linear, orthogonal init, pixels 2 x/255 - 1; needs --hidden
    0)"""
    batch_size: int = 512
    """windows per update"""
    lr: float = 1e-4
    """learning rate"""
    optimizer: Literal["adam", "adamw"] = "adam"
    """adam, or adamw (weight decay 0.01, torch's default; the authors' latent policy)"""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """learning rate over the run: constant, linear to 0 (LAOM's code) or cosine to 0 (MaskLAM's authors')"""
    epochs: float = 10.0
    """passes over the training frames (ignored when updates is set)"""
    updates: int | None = None
    """number of optimiser updates (overrides epochs)"""
    heldout: float = 0.1
    """fraction of trajectories held out (never trained on; held-out MSE reported)"""
    seed: int = 0
    """seed of initialisation and batches"""
    split_seed: int = 0
    """seed of the train/held-out split and the labeled subset (the same as the LAM's)"""
    any_fps: bool = False
    """with --lam: use data whose frame rate differs from the LAM's training video"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N"""
    save_every: int = 500
    """updates between resumable checkpoints"""
    env_overrides: dict[str, Any] = field(default_factory=dict)
    """extra env kwargs recorded for evaluation (e.g. factory, max_episode_steps)"""
    standardize: bool = True
    """latent BC: regress the latent standardised per dimension (mean/std over training windows), so a LAM
    whose latents are tiny (a clean LAPO's are ~0.01) is learned as well as one whose latents are large;
    the decoder reads the same units"""
    bf16: bool = True
    """bf16 autocast of the policy's training where native: CUDA, or a CPU with AVX-512 BF16 / AMX"""

    def __post_init__(self) -> None:
        if not self.data:
            raise MasklamError("no dataset given (--data)")
        if self.target == "latent" and self.lam is None:
            raise MasklamError("target latent needs --lam DIR")
        if self.target == "idm" and self.idm is None:
            raise MasklamError("target idm needs --idm DIR")
        if self.labels is not None and self.labels < 1:
            raise MasklamError(f"labels must be >= 1, got {self.labels}")
        check_at_least(1, frame_stack=self.frame_stack, encoder_scale=self.encoder_scale,
                       num_res_blocks=self.num_res_blocks, batch_size=self.batch_size, save_every=self.save_every)
        check_at_least(0, hidden=self.hidden)
        if self.arch == "laom" and self.hidden:
            raise MasklamError(f"--arch laom (LAOM's policy) has no hidden layer: pass --hidden 0, not {self.hidden}")
        check_at_least(0, strictly=True, lr=self.lr, epochs=self.epochs)
        if self.updates is not None and self.updates < 1:
            raise MasklamError(f"updates must be >= 1, got {self.updates}")
        if not 0 <= self.heldout < 1:
            raise MasklamError(f"heldout must be in [0, 1), got {self.heldout}")
        check_seeds(seed=self.seed, split_seed=self.split_seed)


@dataclass
class _Setup:
    """Everything a BC run derives from its config and data before the first update."""

    data: Any
    train_ids: np.ndarray
    heldout_ids: np.ndarray
    sampler: Any
    target_fn: TargetFn
    frames: int
    need_masks: bool
    policy_cfg: PolicyConfig
    updates: int


def _setup(cfg: BCConfig, device: torch.device, progress: bool) -> _Setup:
    """Load the data, split it, build the target (standardised for latent BC) and the policy's config."""
    from masklam.data import WindowSampler, labeled_subset, load_dataset, split_trajectories

    if cfg.target == "latent":
        check_lam_data(cfg.lam, cfg.data, any_fps=cfg.any_fps)
    mask_key = lam_mask_key(cfg.lam) if cfg.target == "latent" else None
    target_fn, out_dim, target_frames = make_target_fn(cfg.target, device, cfg.lam, cfg.idm, cfg.data)  # checked
    data = load_dataset(list(cfg.data), mask_key=mask_key, progress=progress)
    train_ids, heldout_ids = split_trajectories(data.num_trajectories, cfg.heldout, seed=cfg.split_seed)
    if cfg.labels is not None:
        train_ids = labeled_subset(train_ids, cfg.labels, seed=cfg.split_seed)
    frames = max(cfg.frame_stack, target_frames)
    sampler = WindowSampler(data, train_ids, frame_stack=frames, max_offset=1, need_masks=mask_key is not None)
    if cfg.target == "latent" and cfg.standardize:
        target_fn = standardized(target_fn, *latent_stats(target_fn, sampler, np.random.default_rng([cfg.seed, 2])))
    img_hw = int(data.obs.shape[1])
    pcfg = PolicyConfig(data.action_dim if out_dim < 0 else out_dim, data.action_dim, cfg.frame_stack, img_hw,
                        cfg.encoder_scale, cfg.num_res_blocks, cfg.hidden, cfg.pair_input,
                        "action" if cfg.target == "idm" else cfg.target,
                        env_meta_of(dict(data.meta), cfg.env_overrides), cfg.arch)
    n_frames = int(sum(data.traj_lengths[i] - 1 for i in train_ids))
    updates = cfg.updates or max(1, math.ceil(cfg.epochs * n_frames / cfg.batch_size))
    return _Setup(data, train_ids, heldout_ids, sampler, target_fn, frames, mask_key is not None, pcfg, updates)


def _resume(cfg: BCConfig, model: ImagePolicy, opt: torch.optim.Optimizer, rng: np.random.Generator,
            device: torch.device) -> tuple[int, float]:
    """Check OUT/resume/config.json against cfg (one resume rule), restore the saved state; -> the start update
    and the training loss of the update before it (NaN: none)."""
    run_dir = cfg.out / RESUME_DIR
    run_cfg = config_record(cfg)
    check_resumable(run_dir, run_cfg, RESUMABLE_CHANGES, {"arch": "ours"})  # runs before 2026-12-06 had no arch
    write_json(run_dir / "config.json", run_cfg, indent=1)
    st = load_train_state(run_dir, device)
    if st is None:
        return 0, float("nan")
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["opt"])
    rng.bit_generator.state = st["rng"]
    return int(st["step"]), float(st.get("loss", float("nan")))


def _batch(b: dict[str, np.ndarray], target: torch.Tensor, fs: int, pair: bool) -> dict[str, torch.Tensor]:
    out = {"obs": torch.from_numpy(b["obs_t"][:, -fs:]), "target": target}
    if pair:
        out["obs_next"] = torch.from_numpy(b["obs_t1"][:, -fs:])
    return out


def _save_state(path: Path, model: ImagePolicy, opt: torch.optim.Optimizer, rng: np.random.Generator,
                step: int, loss: float) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
                    "step": step, "loss": loss}, tmp)


def train_bc(cfg: BCConfig, progress: bool = True) -> dict[str, float]:
    """Train (or resume) the configured policy; writes cfg.out/{model.safetensors,config.json,metrics.json}."""
    device = resolve_device(cfg.device)
    s = _setup(cfg, device, progress)
    with torch.random.fork_rng(devices=[]):  # initial weights from cfg.seed, global generator untouched
        torch.manual_seed(cfg.seed)
        model = place(ImagePolicy(s.policy_cfg), device)
    opt = make_optimizer(model, cfg.optimizer, cfg.lr)
    rng = np.random.default_rng([cfg.seed, 1])
    step, last_loss = _resume(cfg, model, opt, rng, device)
    state_path = cfg.out / RESUME_DIR / TRAIN_STATE
    model.train()
    bar = tqdm(total=s.updates, initial=step, desc=f"bc {cfg.target}", unit="update", disable=not progress)
    while step < s.updates:
        b = s.sampler.sample(cfg.batch_size, rng)
        target = s.target_fn(b)  # fp32, as the decoder will read it
        set_lr(opt, cfg.lr * lr_factor(step, s.updates, 0.0, cfg.schedule))
        with autocast(device, cfg.bf16):
            loss, _ = model(_batch(b, target, cfg.frame_stack, cfg.pair_input))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(mse=f"{loss.item():.4f}")
        if step % cfg.save_every == 0 or step == s.updates:  # (a device sync at these steps only)
            last_loss = float(loss.item())
            _save_state(state_path, model, opt, rng, step, last_loss)
    bar.close()
    model.eval()
    metrics = {"bc/train_mse": last_loss, "bc/updates": step}
    if len(s.heldout_ids):
        metrics["bc/heldout_mse"] = heldout_mse(model, s.data, s.heldout_ids, s.target_fn, s.frames, cfg, s.need_masks)
    model.save_pretrained(cfg.out)
    write_json(cfg.out / "metrics.json", metrics, indent=1)
    return metrics


@torch.no_grad()
def heldout_mse(model: ImagePolicy, data: Any, ids: np.ndarray, target_fn: TargetFn, frames: int,
                cfg: BCConfig, need_masks: bool = False) -> float:
    """Mean squared error of the model's prediction vs its target over every window of the held-out trajectories."""
    from masklam.data import WindowSampler

    sampler = WindowSampler(data, ids, frame_stack=frames, max_offset=1, need_masks=need_masks)
    sse, n = 0.0, 0
    for b in sampler.all_windows(cfg.batch_size, k=1):
        batch = _batch(b, target_fn(b), cfg.frame_stack, cfg.pair_input)
        pred = model.predict(batch["obs"], batch.get("obs_next")).float()
        sse += float((pred - batch["target"].to(pred.device)).square().sum())
        n += pred.numel()
    return sse / n if n else float("nan")


def main(argv: list[str]) -> int:
    """`masklam bc --data FILE --out DIR [--target latent|action|idm] ...`."""
    cfg = parse(BCConfig, argv)
    with output_lock(cfg.out, ", or use another --out"):
        metrics = train_bc(cfg)
    print(json.dumps(metrics))
    return 0
