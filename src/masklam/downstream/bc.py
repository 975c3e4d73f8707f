"""`masklam bc`: one policy network, one training loop, every regression target of the pipeline.

`ImagePolicy` = IMPALA encoder + 2-layer MLP head, regressing from a frame stack a target vector:
- `target="latent"`: the frozen LAM's latent for (o_t, o_{t+1}), standardised per dimension (latent BC, full
  unlabeled data);
- `target="action"`: the true action (BC on N labeled trajectories, or on all of them: the normaliser);
- `target="idm"`: the action an IDM infers for (o_t, o_{t+1}) (the IDM baseline's BC on relabels).
With `pair_input=True` the network sees (o_t, o_{t+1}) and is itself the IDM (target "action" on N
labeled trajectories). Targets come from the batch on the fly, so no relabelled copy of the data exists.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import tyro
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from masklam.errors import MasklamError
from masklam.models.encoder import ImpalaEncoder, frames_to_tensor
from masklam.train.precision import autocast


@dataclass
class PolicyConfig:
    """Architecture of an `ImagePolicy` (stored as config.json next to the weights)."""

    out_dim: int
    """size of the regressed vector (latent dim or action dim)"""
    action_dim: int
    frame_stack: int = 3
    img_hw: int = 64
    encoder_scale: int = 1
    num_res_blocks: int = 2
    hidden: int = 256
    pair_input: bool = False
    """input (o_t, o_{t+1}): an inverse dynamics model"""
    target: str = "action"
    env_meta: dict[str, Any] = field(default_factory=dict)
    """task and env kwargs of the training data, for evaluation"""
    target_mean: list[float] | None = None
    """latent BC with standardised targets: the outputs are (z - target_mean) / target_std"""
    target_std: list[float] | None = None


class ImagePolicy(nn.Module):
    """(B, F, H, W, 3) uint8 frame stack (twice for an IDM) -> (B, out_dim)."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        frames = cfg.frame_stack * (2 if cfg.pair_input else 1)
        self.encoder = ImpalaEncoder(3 * frames, cfg.img_hw, cfg.encoder_scale, cfg.num_res_blocks)
        self.head = nn.Sequential(nn.Linear(self.encoder.flat_dim, cfg.hidden), nn.ReLU(),
                                  nn.Linear(cfg.hidden, cfg.out_dim))

    @property
    def frame_stack(self) -> int:
        return self.cfg.frame_stack

    @property
    def env_meta(self) -> dict[str, Any]:
        return self.cfg.env_meta

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def predict(self, obs: np.ndarray | torch.Tensor, obs_next: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
        """(B, F, H, W, 3) uint8 [, (B, F, H, W, 3) for an IDM] -> (B, out_dim) float."""
        if self.cfg.pair_input:
            if obs_next is None:
                raise MasklamError("an inverse dynamics model needs (obs, obs_next)")
            obs = torch.cat([torch.as_tensor(obs), torch.as_tensor(obs_next)], dim=1)
        x = frames_to_tensor(obs, self.device)  # (B, 3F, H, W)
        return self.head(self.encoder.flat(x))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """batch: obs (B,F,H,W,3) uint8, [obs_next], target (B, out_dim) -> (MSE loss, info)."""
        pred = self.predict(batch["obs"], batch.get("obs_next"))
        loss = nn.functional.mse_loss(pred, batch["target"].to(pred.device))
        return loss, {"train/mse": loss.detach()}

    @torch.no_grad()
    def select_action(self, obs: np.ndarray) -> np.ndarray:
        """(B, F, H, W, 3) uint8 -> (B, A) actions in [-1, 1] (action-regressing policies only)."""
        if self.cfg.target == "latent" or self.cfg.pair_input:
            raise MasklamError("this network does not output actions; evaluate it with its action decoder")
        return self.predict(obs).clamp(-1, 1).float().cpu().numpy()

    def save_pretrained(self, directory: str | Path) -> None:
        """Write model.safetensors and config.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps(dataclasses.asdict(self.cfg), indent=1))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> "ImagePolicy":
        """Read a directory written by save_pretrained."""
        directory = Path(directory)
        for name in ("config.json", "model.safetensors"):
            if not (directory / name).is_file():
                raise MasklamError(f"not a policy directory (no {name}): {directory}")
        try:
            cfg = PolicyConfig(**json.loads((directory / "config.json").read_text()))
        except (TypeError, json.JSONDecodeError) as e:
            raise MasklamError(f"bad policy config in {directory}: {e}") from None
        model = cls(cfg)
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        return model.to(device).eval()


@dataclass
class BCConfig:
    """Behaviour cloning from images: latent BC, BC on true actions, IDM training, BC on IDM relabels."""

    data: tuple[Path, ...]
    """HDF5 dataset file(s) (all shards as one)"""
    out: Path
    """output directory (model, config, metrics; resumes from train_state.pt)"""
    target: Literal["latent", "action", "idm"] = "latent"
    """what to regress: the frozen LAM's latent, the true action, or an IDM's relabel"""
    lam: Path | None = None
    """LAM directory (target latent)"""
    idm: Path | None = None
    """IDM directory written by this command with --pair-input (target idm)"""
    labels: int | None = None
    """train only on this many labeled trajectories (default: all training trajectories)"""
    pair_input: bool = False
    """train an inverse dynamics model (o_t, o_{t+1}) -> target"""
    frame_stack: int = 3
    encoder_scale: int = 1
    """IMPALA channel multiplier (the papers use 32 for BC)"""
    num_res_blocks: int = 2
    hidden: int = 256
    batch_size: int = 512
    lr: float = 1e-4
    epochs: float = 10.0
    """passes over the training frames (ignored when steps is set)"""
    steps: int | None = None
    """number of updates (overrides epochs)"""
    heldout: float = 0.1
    """fraction of trajectories held out (never trained on; held-out MSE reported)"""
    seed: int = 0
    """seed of initialisation and batches"""
    split_seed: int = 0
    """seed of the train/held-out split and the labeled subset (the same as the LAM's)"""
    device: str = "cpu"
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
        if min(self.frame_stack, self.encoder_scale, self.batch_size, self.hidden) < 1 or self.lr <= 0:
            raise MasklamError("frame_stack, encoder_scale, batch_size, hidden must be >= 1 and lr > 0")
        if self.steps is not None and self.steps < 1:
            raise MasklamError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.heldout < 1:
            raise MasklamError(f"heldout must be in [0, 1), got {self.heldout}")


def env_meta_of(meta: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Env kwargs that reproduce a dataset's environment (from its HDF5 attrs) for evaluation."""
    env: dict[str, Any] = {"task": f"{meta.get('domain_name')}-{meta.get('task_name')}"}
    for key, name in (("distractors", "distractors"), ("action_repeat", "action_repeat"),
                      ("shadows", "shadows"), ("reflections", "reflections"),
                      ("multisample", "multisample")):
        if key in meta:
            env[name] = meta[key]
    if "img_hw" in meta:
        hw = meta["img_hw"]
        env["img_size"] = int(hw[0] if isinstance(hw, (list, tuple, np.ndarray)) else hw)
    env.update(overrides)
    return env


def lam_mask_key(lam_dir: str | Path | None) -> str | None:
    """The dataset key of the agent masks a LAM reads as input (None when it takes none): labelling with a
    mask-channel LAM needs the same masks it was trained with."""
    if lam_dir is None:
        return None
    try:
        cfg = json.loads((Path(lam_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MasklamError(f"cannot read {Path(lam_dir) / 'config.json'}: {e}") from None
    return cfg.get("mask_key", "masks") if cfg.get("model", {}).get("mask_channel") else None


def lam_frame_stack(lam: nn.Module) -> int:
    """The frame stack a LAM was trained with (attribute or config field; 1 if it records none)."""
    for obj in (lam, getattr(lam, "cfg", None), getattr(lam, "config", None)):
        fs = getattr(obj, "frame_stack", None) if obj is not None else None
        if isinstance(fs, int):
            return fs
    return 1


def make_target_fn(cfg: BCConfig, img_hw: int) -> tuple[Callable[[dict[str, np.ndarray]], torch.Tensor], int, int]:
    """(batch -> (B, D) target on cfg.device, D, frames the target needs) for the configured target."""
    if cfg.target == "latent":
        from masklam.models import load_lam

        lam = load_lam(cfg.lam).to(cfg.device).eval()
        for p in lam.parameters():
            p.requires_grad_(False)
        f = lam_frame_stack(lam)

        @torch.no_grad()
        def latent(b: dict[str, np.ndarray]) -> torch.Tensor:  # the LAM's k = 1 label (with masks if it takes them)
            return lam.label({k: b[k][:, -f:] for k in ("obs_t", "obs_t1", "mask_t", "mask_t1") if k in b}).float()

        return latent, lam.latent_dim, f
    if cfg.target == "idm":
        idm = ImagePolicy.from_pretrained(cfg.idm, cfg.device)
        f = idm.frame_stack

        @torch.no_grad()
        def relabel(b: dict[str, np.ndarray]) -> torch.Tensor:
            return idm.predict(b["obs_t"][:, -f:], b["obs_t1"][:, -f:]).clamp(-1, 1).float()  # (B, A)

        return relabel, idm.cfg.out_dim, f

    def action(b: dict[str, np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.asarray(b["action_t"], np.float32)).to(cfg.device)  # (B, A)

    return action, -1, 1


@torch.no_grad()
def latent_stats(target_fn: Callable[[dict[str, np.ndarray]], torch.Tensor], sampler: Any, rng: np.random.Generator,
                 windows: int = 2048, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (floored at 1e-6) of the target over `windows` random training windows."""
    z = torch.cat([target_fn(sampler.sample(batch_size, rng)) for _ in range(max(1, windows // batch_size))])  # (N, D)
    return z.mean(0), z.std(0).clamp_min(1e-6)


def _batch(b: dict[str, np.ndarray], target: torch.Tensor, fs: int, pair: bool) -> dict[str, torch.Tensor]:
    out = {"obs": torch.from_numpy(b["obs_t"][:, -fs:]), "target": target}
    if pair:
        out["obs_next"] = torch.from_numpy(b["obs_t1"][:, -fs:])
    return out


def train_bc(cfg: BCConfig, progress: bool = True) -> dict[str, float]:
    """Train (or resume) the configured policy; writes cfg.out/{model.safetensors,config.json,metrics.json}."""
    from masklam.data import WindowSampler, labeled_subset, load_dataset, split_trajectories

    mask_key = lam_mask_key(cfg.lam) if cfg.target == "latent" else None
    data = load_dataset(list(cfg.data), mask_key=mask_key, progress=progress)
    train_ids, heldout_ids = split_trajectories(data.num_trajectories, cfg.heldout, seed=cfg.split_seed)
    if cfg.labels is not None:
        train_ids = labeled_subset(train_ids, cfg.labels, seed=cfg.split_seed)
    img_hw = int(data.obs.shape[1])
    target_fn, out_dim, target_frames = make_target_fn(cfg, img_hw)
    out_dim = data.action_dim if out_dim < 0 else out_dim
    frames = max(cfg.frame_stack, target_frames)
    sampler = WindowSampler(data, train_ids, frame_stack=frames, max_offset=1, need_masks=mask_key is not None)
    mean = std = None
    if cfg.target == "latent" and cfg.standardize:
        raw_fn, (mean, std) = target_fn, latent_stats(target_fn, sampler, np.random.default_rng([cfg.seed, 2]))
        target_fn = lambda b: (raw_fn(b) - mean) / std  # noqa: E731  (B, D) standardised
    pcfg = PolicyConfig(out_dim, data.action_dim, cfg.frame_stack, img_hw, cfg.encoder_scale, cfg.num_res_blocks,
                        cfg.hidden, cfg.pair_input, "action" if cfg.target == "idm" else cfg.target,
                        env_meta_of(dict(data.meta), cfg.env_overrides),
                        None if mean is None else mean.tolist(), None if std is None else std.tolist())
    with torch.random.fork_rng(devices=[]):  # initial weights from cfg.seed, global generator untouched
        torch.manual_seed(cfg.seed)
        model = ImagePolicy(pcfg).to(cfg.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n_frames = int(sum(data.traj_lengths[i] - 1 for i in train_ids))
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * n_frames / cfg.batch_size))
    rng, step = np.random.default_rng([cfg.seed, 1]), 0
    cfg.out.mkdir(parents=True, exist_ok=True)
    state_path, run_cfg = cfg.out / "train_state.pt", json.dumps(dataclasses.asdict(cfg), default=str, indent=1)
    if state_path.is_file():
        if (cfg.out / "bc_config.json").read_text() != run_cfg:
            raise MasklamError(f"{cfg.out} holds a run with a different config; use another --out")
        st = torch.load(state_path, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        rng.bit_generator.state, step = st["rng"], st["step"]
    (cfg.out / "bc_config.json").write_text(run_cfg)
    model.train()
    bar = tqdm(total=steps, initial=step, desc=f"bc {cfg.target}", unit="step", disable=not progress)
    loss = torch.zeros(())
    while step < steps:
        b = sampler.sample(cfg.batch_size, rng)
        target = target_fn(b)  # fp32, as the decoder will read it
        with autocast(cfg.device, cfg.bf16):
            loss, _ = model(_batch(b, target, cfg.frame_stack, cfg.pair_input))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(mse=f"{loss.item():.4f}")
        if step % cfg.save_every == 0 or step == steps:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
                        "step": step}, state_path)
    bar.close()
    model.eval()
    metrics = {"train/mse": float(loss.item()), "train/steps": step}
    if len(heldout_ids):
        metrics["eval/heldout_mse"] = heldout_mse(model, data, heldout_ids, target_fn, frames, cfg, mask_key is not None)
    model.save_pretrained(cfg.out)
    (cfg.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


@torch.no_grad()
def heldout_mse(model: ImagePolicy, data: Any, ids: np.ndarray, target_fn: Callable, frames: int,
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


def load_policy(policy_dir: str | Path, decoder_dir: str | Path | None = None, device: str = "cpu") -> Any:
    """A policy ready for evaluation: an action policy, or a latent policy with its action decoder."""
    policy = ImagePolicy.from_pretrained(policy_dir, device)
    if policy.cfg.target != "latent":
        return policy
    if decoder_dir is None:
        raise MasklamError(f"{policy_dir} predicts latents; give its action decoder (--decoder)")
    from masklam.downstream.decode import ActionDecoder, LatentAgent

    return LatentAgent(policy, ActionDecoder.from_pretrained(decoder_dir, device))


def main(argv: list[str]) -> int:
    """`masklam bc --data FILE --out DIR [--target latent|action|idm] ...`."""
    cfg = tyro.cli(BCConfig, args=argv)
    metrics = train_bc(cfg)
    print(json.dumps(metrics))
    return 0
