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

import contextlib
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from masklam.args import parse
from masklam.devices import place
from masklam.errors import MasklamError, note_once
from masklam.files import read_json, write_json
from masklam.locks import output_lock
from masklam.models.lam import LatentActionModel, PixelLAM, build_lam
from masklam.train.checkpoint import check_resumable, check_same_data, load_train_state, save_checkpoint
from masklam.train.config import OMITTED_DEFAULTS, PIXEL, RESUMABLE_CHANGES, PretrainConfig
from masklam.train.recipes import RECIPE_NOTICE, suite_note, task_note
from masklam.train.distributed import DistContext, wrap_ddp
from masklam.train.logger import MetricAverager, RunLogger
from masklam.train.precision import autocast, bf16_active
from masklam.train.probe import probe_lam
from masklam.train.schedule import lr_factor, make_optimizer, set_lr

VERSION = 3
"""Version of what pretraining computes for a config: cached stages of another version are not reused (2: bf16
autocast on CPUs with native bf16; 3: the probe's ridge chosen by cross-validation)."""


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """numpy arrays (and nested dicts of them) -> tensors on `device` (uint8 frames stay uint8)."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = to_device(value, device)
        else:
            out[key] = torch.from_numpy(np.ascontiguousarray(value)).to(device, non_blocking=True)
    return out


class EpochOrder:
    """The window each sample position takes when training passes over the windows in shuffled epochs (`--sampling
    epochs`, both papers' code): position p is window perm_e[p mod W] of epoch e = p // W, perm_e a permutation of
    the W windows seeded (seed, e, 2**32 - 1). A pure function of p, so a resumed run goes on in the same order; an
    epoch's last batch runs on into the next epoch (their code's is partial)."""

    def __init__(self, num_windows: int, seed: int) -> None:
        self.num_windows, self.seed = num_windows, seed
        self.perms: dict[int, np.ndarray] = {}
        self.lock = threading.Lock()  # the batch prefetch thread and the loop both ask

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """(B,) sample positions -> (B,) window indices."""
        epochs = positions // self.num_windows
        out = np.empty_like(positions)
        for e in np.unique(epochs):
            here = epochs == e
            out[here] = self.permutation(int(e))[positions[here] % self.num_windows]
        return out

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of epoch `epoch` (the last few are kept)."""
        with self.lock:
            if epoch not in self.perms:
                for old in sorted(self.perms)[:-2]:
                    del self.perms[old]
                # its own stream: no batch's rng (seed, step[, rank]) has 2**32 - 1 as a third entry
                rng = np.random.default_rng([self.seed, epoch, 2**32 - 1])
                self.perms[epoch] = rng.permutation(self.num_windows)
            return self.perms[epoch]


class StepBatches:
    """The batch of step s, drawn from rng (seed, s) (rng (seed, s, rank) for one of several ranks);
    the next one is prepared in a background thread. Sizes are per rank. With an `order` (EpochOrder) the windows
    are those of sample positions (s * ranks + rank) * batch_size + 0..batch_size-1 instead of drawn with
    replacement (k, the labelled batch and the augmentation still come from the rng)."""

    def __init__(self, sampler, batch_size: int, seed: int, labeled=None, labeled_batch_size: int = 0,
                 ctx: DistContext = DistContext(), order: EpochOrder | None = None) -> None:
        self.sampler, self.batch_size, self.seed, self.order = sampler, batch_size, seed, order
        self.labeled, self.labeled_batch_size = labeled, labeled_batch_size
        self.rank_key = [ctx.rank] if ctx.enabled else []  # a single process keeps the key (seed, s)
        self.ranks, self.rank = ctx.world_size, ctx.rank
        self.pool = ThreadPoolExecutor(1)
        self.pending: dict[int, Any] = {}

    def draw(self, step: int) -> tuple[dict[str, Any], int]:
        """(numpy batch, augmentation seed) for `step`, a pure function of (seed, step[, rank])."""
        rng = np.random.default_rng([self.seed, step, *self.rank_key])
        pick = None
        if self.order is not None:
            first = (step * self.ranks + self.rank) * self.batch_size
            pick = self.order(np.arange(first, first + self.batch_size, dtype=np.int64))
        batch = self.sampler.sample(self.batch_size, rng, pick)
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
    return place(model, device)


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
    try:  # one writer per run directory (rank 0 writes it)
        with output_lock(cfg.out, ", or use another --out") if ctx.is_main else contextlib.nullcontext():
            return _pretrain(cfg, until, ctx, device)
    finally:
        ctx.teardown()


@dataclass
class Run:
    """Everything one training session works with, built by `_setup` (on every rank; only rank 0 writes)."""

    cfg: PretrainConfig
    ctx: DistContext
    device: torch.device
    data: Any
    train_ids: np.ndarray
    held_ids: np.ndarray
    sampler: Any
    labeled: Any
    uses_masks: bool
    total: int
    config: dict[str, Any]
    model: LatentActionModel
    optimizer: torch.optim.Optimizer
    state: dict[str, Any] | None
    start: int

    @property
    def out(self) -> Path:
        return self.cfg.out


def _setup(cfg: PretrainConfig, ctx: DistContext, device: torch.device) -> Run:
    """Data, split and samplers; the run's config (checked against a run to resume); model and optimiser,
    restored from train_state.pt when there is one."""
    from masklam.data import WindowSampler, labeled_subset, load_dataset, split_trajectories

    uses_masks = cfg.method == "masklam" or bool(cfg.mask_channel)  # in the loss, or as an input channel
    data = load_dataset(cfg.data, mask_key=cfg.mask_key if uses_masks else None, progress=cfg.progress and ctx.is_main,
                        observations=cfg.observations, episode_length=cfg.episode_length)
    for kind, note in (("suite", suite_note(cfg, data.meta)), ("task", task_note(cfg, data.meta))):
        if note and ctx.is_main:  # a preset or value chosen for other data than these
            note_once((kind, str(cfg.out)), note)
    train_ids, held_ids = split_trajectories(data.num_trajectories, cfg.heldout, cfg.split_seed)
    if len(held_ids) and not data.action_dim and ctx.is_main:  # imported video: no probe to hold them out for
        serve = "only make recon.png" if cfg.method in PIXEL and cfg.recon_samples > 0 else "serve nothing"
        note_once(("heldout-no-actions", str(cfg.out)), f"these data have no actions: the {len(held_ids)} held-out "
                  f"trajectories (--heldout {cfg.heldout}) are not trained on and {serve}; --heldout 0 trains on all")
    sampler = WindowSampler(data, train_ids, cfg.frame_stack, cfg.max_offset, need_masks=uses_masks)
    if len(held_ids) and (data.action_dim or (cfg.method in PIXEL and cfg.recon_samples > 0)):
        try:  # the probe and the reconstruction figure read held-out windows after training: checked before it
            WindowSampler(data, held_ids, cfg.frame_stack, 1, need_masks=uses_masks)
        except MasklamError as e:
            raise MasklamError(f"the held-out trajectories {held_ids.tolist()[:5]}{' ...' if len(held_ids) > 5 else ''}"
                               f" (--heldout {cfg.heldout}) make no window for the probe or the reconstructions "
                               f"({e}); import without the short items, or change --split-seed") from None
    labeled = None
    if cfg.method == "laom-sup":
        data.require_actions("laom-sup (supervised with labelled actions)")
        labeled = WindowSampler(data, labeled_subset(train_ids, cfg.labels, cfg.split_seed),
                                cfg.frame_stack, cfg.max_offset)
    total = cfg.total_updates(sampler.num_windows)
    config = cfg.to_dict()
    check_resumable(cfg.out, config, RESUMABLE_CHANGES, OMITTED_DEFAULTS)
    config = {**config, "total_steps": total, "num_train_windows": sampler.num_windows,
              "train_trajectories": train_ids.tolist(), "heldout_trajectories": held_ids.tolist()}
    check_same_data(cfg.out, config)
    if data.meta.get("fps"):  # imported video records its frame rate: label, decode and bc check video against it
        config["data_fps"] = float(data.meta["fps"])
    for key in ("camera", "resize"):  # and how its frames were made: label makes them the same way
        if data.meta.get(key):
            config[f"data_{key}"] = str(data.meta[key])
    if ctx.enabled:
        config["world_size"] = ctx.world_size
    if ctx.is_main:
        cfg.out.mkdir(parents=True, exist_ok=True)

    model = _build_model(cfg, data, device)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay)
    state = load_train_state(cfg.out, device)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        if ctx.is_main:
            tqdm.write(f"resuming {cfg.out} from step {start}/{total}")
        recorded = read_json(cfg.out / "config.json") if (cfg.out / "config.json").is_file() else {}
        was = int(recorded.get("world_size", 1))
        if was != ctx.world_size and ctx.is_main:
            note_once(("world-size", str(cfg.out)), f"{cfg.out} ran in {was} process(es), resumes in "
                      f"{ctx.world_size}: its batches from here differ from an uninterrupted run's")
    return Run(cfg, ctx, device, data, train_ids, held_ids, sampler, labeled, uses_masks, total, config, model,
               optimizer, state, start)


def _already_complete(run: Run) -> bool:
    """True when the run has trained all its steps and written its probe metrics."""
    path = run.out / "metrics.json"
    return run.start >= run.total and path.is_file() and ({"probe_nmse", "probe_skipped"} & set(read_json(path)))


def _write_config(run: Run) -> None:
    """config.json before training (rank 0), keeping the "model" entry a checkpoint already wrote."""
    path = run.out / "config.json"
    old = read_json(path) if path.is_file() else {}  # "model" and "step": written by the last checkpoint
    write_json(path, {**run.config, **{k: old[k] for k in ("model", "step") if k in old}})


def _train_step(run: Run, forward: torch.nn.Module, batch: dict[str, Any], generator: torch.Generator, step: int,
                use_bf16: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser update at `step`: learning rate, forward, backward, (clip), step, EMA target."""
    cfg, model, optimizer = run.cfg, run.model, run.optimizer
    set_lr(optimizer, cfg.lr * lr_factor(step, run.total, cfg.warmup_frac, cfg.schedule))
    with autocast(run.device, use_bf16):
        loss, info = forward(batch, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip is not None:
        info["train/grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    model.update_target()  # the same EMA on every rank: the weights are the same
    return loss, info


def _log(run: Run, step: int, averager: MetricAverager, logger: RunLogger | None) -> dict[str, float] | None:
    """Average the metrics since the last log over steps and ranks; stop on a non-finite loss; log (rank 0).
    Returns the logged line (None when nothing was logged)."""
    means = run.ctx.mean(averager.means())  # averaged over ranks: a NaN on one rank stops all
    if not np.isfinite(means.get("total", 0.0)):
        raise MasklamError(
            f"loss became non-finite ({means['total']}) before step {step}; stopped. The last good "
            f"checkpoint in {run.out} is kept; try a lower --lr or --grad-clip")
    means.pop("total", None)
    if means and logger is not None:
        return logger.log(step, means, run.cfg.batch_size)
    return None


def _loop(run: Run, stop_at: int, batch_sizes: tuple[int, int], use_bf16: bool
          ) -> tuple[int, dict[str, float], list[float]]:
    """Train from `run.start` to `stop_at` (or Ctrl-C), logging and checkpointing on their boundaries.

    Returns (the step reached, the last logged metrics, the samples/s of every log line)."""
    cfg, ctx, model = run.cfg, run.ctx, run.model
    forward = wrap_ddp(model, ctx, run.device)  # DDP averages the gradients over the ranks
    forward = torch.compile(forward) if cfg.compile else forward
    order = EpochOrder(run.sampler.num_windows, cfg.seed) if cfg.sampling == "epochs" else None
    batches = StepBatches(run.sampler, batch_sizes[0], cfg.seed, run.labeled, batch_sizes[1], ctx, order)
    logger = (RunLogger(run.out, run.total, run.start, run.config, cfg.tensorboard, cfg.wandb, cfg.wandb_project)
              if ctx.is_main else None)
    averager = MetricAverager()
    last = {} if run.state is None else dict(run.state.get("extra", {}).get("last_metrics", {}))
    rates: list[float] = []
    model.train()
    bar = tqdm(total=run.total, initial=run.start, desc=f"pretrain {cfg.method}", unit="step",
               disable=not (cfg.progress and ctx.is_main))
    step = run.start
    try:
        with StopFlag() as flag:
            while step < stop_at:
                np_batch, aug_seed = batches.get(step, step + 1 if step + 1 < stop_at else None)
                generator = torch.Generator().manual_seed(aug_seed)
                loss, info = _train_step(run, forward, to_device(np_batch, run.device), generator, step, use_bf16)
                info["total"] = loss.detach()
                averager.add(info)
                step += 1
                bar.update()
                stop = ctx.any(flag.stop)  # Ctrl-C on any rank stops every rank after the same step
                if step % cfg.log_every == 0 or step % cfg.ckpt_every == 0 or step == stop_at or stop:
                    logged = _log(run, step, averager, logger)
                    if logged is not None:
                        last = logged
                        rates.append(last["train/samples_per_s"])
                if (step % cfg.ckpt_every == 0 or step == stop_at or stop) and ctx.is_main:
                    save_checkpoint(run.out, model, run.optimizer, step, run.config, {"last_metrics": last})
                if stop:
                    raise KeyboardInterrupt
    finally:
        bar.close()
        batches.close()
        if logger is not None:
            logger.close()
    return step, last, rates


def probe_settings(cfg: PretrainConfig) -> dict[str, Any]:
    """What the probe was asked for (metrics.json records it; None: ridge by cross-validation, every trajectory)."""
    return {"ridge": cfg.probe_ridge, "max_trajs": cfg.probe_max_trajs}


def _reprobe(run: Run, metrics: dict[str, Any]) -> None:
    """metrics.json of a finished run with its probe made again under the run's probe settings."""
    cfg = run.cfg
    if not len(run.held_ids):
        return
    run.model.eval()
    probe = probe_lam(run.model, run.data, run.train_ids, run.held_ids, cfg.probe_ridge, cfg.probe_batch_size,
                      cfg.probe_max_trajs, progress=cfg.progress)
    kept = {k: v for k, v in metrics.items() if not k.startswith("probe_")}  # no score of the old probe stays
    write_json(run.out / "metrics.json", {**kept, **probe, "probe_settings": probe_settings(cfg)})


def _finish(run: Run, last: dict[str, float], rates: list[float], use_bf16: bool, t0: float) -> dict[str, Any]:
    """After training (rank 0): reconstructions, the held-out probe, metrics.json."""
    from masklam.data import WindowSampler

    cfg, model = run.cfg, run.model
    model.eval()
    if isinstance(model, PixelLAM) and cfg.recon_samples > 0 and len(run.held_ids):
        held = WindowSampler(run.data, run.held_ids, cfg.frame_stack, 1, need_masks=run.uses_masks)
        save_reconstructions(model, held, run.out / "recon.png", cfg.recon_samples, cfg.seed)
    if not len(run.held_ids):
        probe = {"probe_skipped": "no held-out trajectories (--heldout 0)"}
    elif run.data.action_dim:
        probe = probe_lam(model, run.data, run.train_ids, run.held_ids, cfg.probe_ridge, cfg.probe_batch_size,
                          cfg.probe_max_trajs, progress=cfg.progress)
    else:  # video imported without actions: nothing to probe against
        probe = {"probe_skipped": "the data have no actions"}
    metrics: dict[str, Any] = {"method": cfg.method, "steps": run.total, "complete": True,
                               "precision": "bf16" if use_bf16 else "fp32",
                               # CPU results are bit-identical for a seed *and* thread count, not across thread counts
                               "torch_threads": torch.get_num_threads(), **probe, "probe_settings": probe_settings(cfg),
                               **{k: v for k, v in last.items()}}
    if rates:
        metrics["train/samples_per_s"] = float(np.median(rates))
    metrics["wall_s_last_session"] = time.perf_counter() - t0
    write_json(run.out / "metrics.json", metrics)
    if "probe_nmse" in probe:
        tqdm.write(f"{cfg.method}: probe_nmse (held-out) {probe['probe_nmse']:.4f}  "
                   f"train {probe['probe_nmse_train']:.4f}  -> {run.out / 'metrics.json'}")
    else:
        tqdm.write(f"{cfg.method}: probe skipped ({probe['probe_skipped']})  -> {run.out / 'metrics.json'}")
    return metrics


def _pretrain(cfg: PretrainConfig, until: int | None, ctx: DistContext, device: torch.device) -> dict[str, Any]:
    """setup -> (already complete: its metrics) -> config.json -> loop -> (interrupted: where it stopped)
    -> reconstructions, probe, metrics.json."""
    batch_sizes = per_rank_sizes(cfg, ctx)
    run = _setup(cfg, ctx, device)
    if _already_complete(run):
        metrics = read_json(run.out / "metrics.json")
        same = metrics.get("probe_settings", probe_settings(cfg)) == probe_settings(cfg)
        if same or not len(run.held_ids):  # --heldout 0: no probe to make again
            if ctx.is_main:
                tqdm.write(f"{run.out} is already complete ({run.total} steps); metrics.json kept")
            return metrics
        if ctx.is_main:  # the probe's settings changed (RESUMABLE_CHANGES): the probe again, on the final model
            tqdm.write(f"{run.out} is already complete ({run.total} steps); probing it again with "
                       f"{probe_settings(cfg)}, not {metrics['probe_settings']}")
            _reprobe(run, metrics)
        ctx.barrier()
        return read_json(run.out / "metrics.json")
    if ctx.is_main:
        _write_config(run)
    use_bf16 = bf16_active(device, cfg.bf16)
    stop_at = run.total if until is None else min(run.total, until)
    t0 = time.perf_counter()
    step, last, rates = _loop(run, stop_at, batch_sizes, use_bf16)
    if step < run.total:
        ctx.barrier()  # the checkpoint is on disk before any rank returns
        return {"step": step, "total_steps": run.total, "complete": False}
    metrics = _finish(run, last, rates, use_bf16, t0) if ctx.is_main else None
    ctx.barrier()  # every rank ends together, after metrics.json is written
    return metrics if metrics is not None else read_json(run.out / "metrics.json")


def main(argv: list[str]) -> int:
    """`masklam pretrain --method M --data F.h5 --out DIR [--preset P] [--recipe R] [...]`."""
    cfg = parse(PretrainConfig, argv)
    if cfg.recipe in RECIPE_NOTICE:
        print(RECIPE_NOTICE[cfg.recipe], file=sys.stderr)
    if cfg.print_config:
        print(cfg.describe())
        return 0
    pretrain(cfg)
    return 0
