"""`masklam pretrain`: train a latent action model (lapo | masklam | laom | laom-sup), top to bottom.

config -> data (split, samplers) -> model and optimiser (resumed from train_state.pt when present)
-> loop (batch from (seed, step), step, EMA, log, checkpoint) -> save -> reconstructions -> probe
-> metrics.json. The batch of step s depends only on (seed, s), so a resumed run sees the same
batches and ends with the same weights as an uninterrupted one.

Under `torchrun --nproc_per_node N` the same loop trains one model data-parallel: --batch-size stays
the global batch, rank r draws batch_size / N windows from rng (seed, s, r), DistributedDataParallel
averages the gradients, and only rank 0 logs and writes files (see masklam.train.distributed).
"""
from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro
from tqdm.auto import tqdm

from masklam.errors import MasklamError
from masklam.models.lam import LatentActionModel, PixelLAM, build_lam
from masklam.train.checkpoint import check_resumable, load_train_state, read_json, save_checkpoint, write_json
from masklam.train.config import RESUMABLE_CHANGES, PretrainConfig
from masklam.train.distributed import DistContext, wrap_ddp
from masklam.train.logger import MetricAverager, RunLogger
from masklam.train.precision import autocast, bf16_active
from masklam.train.probe import probe_lam
from masklam.train.schedule import lr_factor


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """numpy arrays (and nested dicts of them) -> tensors on `device` (uint8 frames stay uint8)."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = to_device(value, device)
        else:
            out[key] = torch.from_numpy(np.ascontiguousarray(value)).to(device, non_blocking=True)
    return out


class StepBatches:
    """The batch of step s, drawn from rng (seed, s) (rng (seed, s, rank) for one of several ranks);
    the next one is prepared in a background thread. Sizes are per rank."""

    def __init__(self, sampler, batch_size: int, seed: int, labeled=None, labeled_batch_size: int = 0,
                 ctx: DistContext = DistContext()) -> None:
        self.sampler, self.batch_size, self.seed = sampler, batch_size, seed
        self.labeled, self.labeled_batch_size = labeled, labeled_batch_size
        self.rank_key = [ctx.rank] if ctx.enabled else []  # a single process keeps the key (seed, s)
        self.pool = ThreadPoolExecutor(1)
        self.pending: dict[int, Any] = {}

    def draw(self, step: int) -> tuple[dict[str, Any], int]:
        """(numpy batch, augmentation seed) for `step`, a pure function of (seed, step[, rank])."""
        rng = np.random.default_rng([self.seed, step, *self.rank_key])
        batch = self.sampler.sample(self.batch_size, rng)
        if self.labeled is not None:
            batch["labeled"] = self.labeled.sample(self.labeled_batch_size, rng)
        return batch, int(rng.integers(2**62))

    def get(self, step: int, prefetch: int | None) -> tuple[dict[str, Any], int]:
        future = self.pending.pop(step, None)
        out = future.result() if future is not None else self.draw(step)
        if prefetch is not None:
            self.pending[prefetch] = self.pool.submit(self.draw, prefetch)
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class StopFlag:
    """Turns Ctrl-C into a flag the loop checks between steps (so a checkpoint is never mid-update)."""

    def __init__(self) -> None:
        self.stop = False
        self.previous = None

    def __enter__(self) -> "StopFlag":
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self.previous = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


@torch.no_grad()
def save_reconstructions(model: PixelLAM, sampler, path: Path, n: int, seed: int) -> None:
    """recon.png: rows o_t, o_{t+1}, the FDM's prediction (and the mask of o_{t+1}) on held-out windows."""
    import matplotlib.image

    batch = sampler.sample(n, np.random.default_rng([seed, 2**31]))
    model.eval()
    pred = model.predict_next(batch["obs_t"], batch["obs_t1"], batch.get("mask_t"),
                              batch.get("mask_t1")).float().clamp(0, 1)  # (n, 3, H, W)
    model.train()
    rows = [batch["obs_t"][:, -1], batch["obs_t1"][:, -1],
            (pred.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)]
    if "mask_t1" in batch:
        rows.append(np.repeat(batch["mask_t1"][:, -1, ..., None], 3, axis=-1).astype(np.uint8) * 255)
    h, w = rows[0].shape[1:3]
    grid = np.full((len(rows) * (h + 2), n * (w + 2), 3), 255, np.uint8)
    for r, images in enumerate(rows):
        for c in range(n):
            grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = images[c]
    matplotlib.image.imsave(path, grid)


def _build_model(cfg: PretrainConfig, data, device: torch.device) -> LatentActionModel:
    h, w = data.img_hw
    if h != w:
        raise MasklamError(f"frames must be square, got {h}x{w}")
    lam_cfg = cfg.lam_config(data.action_dim, data.state_dim, h)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(cfg.seed)
        model = build_lam(lam_cfg)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def per_rank_sizes(cfg: PretrainConfig, ctx: DistContext) -> tuple[int, int]:
    """(windows, labeled windows) per step of one rank: the global sizes split evenly over the ranks."""
    sizes = {"batch_size": int(cfg.batch_size), "labels_batch_size": int(cfg.labels_batch_size or 0)}
    if cfg.method != "laom-sup":
        sizes["labels_batch_size"] = 0
    for name, size in sizes.items():
        if size % ctx.world_size:
            raise MasklamError(f"--{name.replace('_', '-')} {size} is the global batch and must divide evenly "
                               f"over {ctx.world_size} processes")
    return sizes["batch_size"] // ctx.world_size, sizes["labels_batch_size"] // ctx.world_size


def pretrain(cfg: PretrainConfig, until: int | None = None) -> dict[str, Any]:
    """Train (or resume) the run in `cfg.out`; returns the final metrics (also in metrics.json).

    Under torchrun every rank runs this; with WORLD_SIZE unset or 1 it is a plain single-process run.
    `until` stops after that many steps with a checkpoint, as an interruption would (for tests).
    """
    ctx = DistContext.from_env()
    device = ctx.device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    ctx.setup(device)
    try:
        return _pretrain(cfg, until, ctx, device)
    finally:
        ctx.teardown()


def _pretrain(cfg: PretrainConfig, until: int | None, ctx: DistContext, device: torch.device) -> dict[str, Any]:
    from masklam.data import WindowSampler, labeled_subset, load_dataset, split_trajectories

    # --- setup (every rank; only rank 0 writes) --------------------------------------------------
    main_rank = ctx.is_main
    batch_size, labeled_batch_size = per_rank_sizes(cfg, ctx)
    uses_masks = cfg.method == "masklam" or bool(cfg.mask_channel)  # in the loss, or as an input channel
    data = load_dataset(cfg.data, mask_key=cfg.mask_key if uses_masks else None, progress=cfg.progress and main_rank)
    train_ids, held_ids = split_trajectories(data.num_trajectories, cfg.heldout, cfg.split_seed)
    sampler = WindowSampler(data, train_ids, cfg.frame_stack, cfg.max_offset, need_masks=uses_masks)
    labeled = None
    if cfg.method == "laom-sup":
        labeled = WindowSampler(data, labeled_subset(train_ids, cfg.labels, cfg.split_seed),
                                cfg.frame_stack, cfg.max_offset)
    total = cfg.total_updates(sampler.num_windows)
    out = cfg.out
    config = cfg.to_dict()
    check_resumable(out, config, RESUMABLE_CHANGES)
    config = {**config, "total_steps": total, "num_train_windows": sampler.num_windows,
              "train_trajectories": train_ids.tolist(), "heldout_trajectories": held_ids.tolist()}
    if ctx.enabled:
        config["world_size"] = ctx.world_size
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)

    model = _build_model(cfg, data, device)
    optim_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = optim_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = load_train_state(out, device)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        if main_rank:
            tqdm.write(f"resuming {out} from step {start}/{total}")
    if start >= total and (out / "metrics.json").is_file() and "probe_nmse" in read_json(out / "metrics.json"):
        if main_rank:
            tqdm.write(f"{out} is already complete ({total} steps); metrics.json kept")
        return read_json(out / "metrics.json")
    if main_rank:
        write_json(out / "config.json", {**config, "model": read_json(out / "config.json")["model"]}
                   if (out / "config.json").is_file() else config)

    forward = wrap_ddp(model, ctx, device)  # DDP averages the gradients over the ranks
    forward = torch.compile(forward) if cfg.compile else forward
    use_bf16 = bf16_active(device, cfg.bf16)
    batches = StepBatches(sampler, batch_size, cfg.seed, labeled, labeled_batch_size, ctx)
    logger = RunLogger(out, total, start, config, cfg.tensorboard, cfg.wandb, cfg.wandb_project) if main_rank else None
    averager = MetricAverager()
    last = {} if state is None else dict(state.get("extra", {}).get("last_metrics", {}))
    rates: list[float] = []
    stop_at = total if until is None else min(total, until)
    t0 = time.perf_counter()

    # --- loop -----------------------------------------------------------------------------------
    def checkpoint(step: int) -> None:
        if main_rank:
            save_checkpoint(out, model, optimizer, step, config, {"last_metrics": last})

    model.train()
    bar = tqdm(total=total, initial=start, desc=f"pretrain {cfg.method}", unit="step",
               disable=not (cfg.progress and main_rank))
    step = start
    try:
        with StopFlag() as flag:
            while step < stop_at:
                np_batch, aug_seed = batches.get(step, step + 1 if step + 1 < stop_at else None)
                batch = to_device(np_batch, device)
                generator = torch.Generator().manual_seed(aug_seed)
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(step, total, cfg.warmup_frac, cfg.schedule)
                with autocast(device, use_bf16):
                    loss, info = forward(batch, generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    info["train/grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                model.update_target()  # the same EMA on every rank: the weights are the same
                info["total"] = loss.detach()
                averager.add(info)
                step += 1
                bar.update()
                stop = ctx.any(flag.stop)  # Ctrl-C on any rank stops every rank after the same step
                boundary = step % cfg.log_every == 0 or step % cfg.ckpt_every == 0 or step == stop_at or stop
                if boundary:
                    means = ctx.mean(averager.means())  # averaged over ranks: a NaN on one rank stops all
                    if not np.isfinite(means.get("total", 0.0)):
                        raise MasklamError(
                            f"loss became non-finite ({means['total']}) before step {step}; stopped. The last good "
                            f"checkpoint in {out} is kept; try a lower --lr or --grad-clip")
                    means.pop("total", None)
                    if means and logger is not None:
                        last = logger.log(step, means, cfg.batch_size)
                        rates.append(last["train/samples_per_s"])
                if step % cfg.ckpt_every == 0 or step == stop_at or stop:
                    checkpoint(step)
                if stop:
                    raise KeyboardInterrupt
    finally:
        bar.close()
        batches.close()
        if logger is not None:
            logger.close()
    if step < total:
        ctx.barrier()  # the checkpoint is on disk before any rank returns
        return {"step": step, "total_steps": total, "complete": False}

    # --- after training (rank 0): reconstructions, probe, metrics --------------------------------
    if main_rank:
        model.eval()
        if isinstance(model, PixelLAM) and cfg.recon_samples > 0:
            held = WindowSampler(data, held_ids, cfg.frame_stack, 1, need_masks=uses_masks)
            save_reconstructions(model, held, out / "recon.png", cfg.recon_samples, cfg.seed)
        probe = probe_lam(model, data, train_ids, held_ids, cfg.probe_ridge, cfg.probe_batch_size,
                          cfg.probe_max_trajs, progress=cfg.progress)
        metrics: dict[str, Any] = {"method": cfg.method, "steps": total, "complete": True,
                                   "precision": "bf16" if use_bf16 else "fp32", **probe,
                                   **{k: v for k, v in last.items()}}
        if rates:
            metrics["train/samples_per_s"] = float(np.median(rates))
        metrics["wall_s_last_session"] = time.perf_counter() - t0
        write_json(out / "metrics.json", metrics)
        tqdm.write(f"{cfg.method}: probe_nmse (held-out) {probe['probe_nmse']:.4f}  "
                   f"train {probe['probe_nmse_train']:.4f}  -> {out / 'metrics.json'}")
    ctx.barrier()  # every rank ends together, after metrics.json is written
    return metrics if main_rank else read_json(out / "metrics.json")


def main(argv: list[str]) -> int:
    """`masklam pretrain --method M --data F.h5 --out DIR [--preset cpu-small|paper] [...]`."""
    pretrain(tyro.cli(PretrainConfig, args=argv))
    return 0
