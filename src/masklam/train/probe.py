"""The held-out linear probe latent -> true action, the same protocol for every method.

Protocol: latents z = lam.label(window) (k = 1, no augmentation; with the LAM's masks when it takes them
as input) for every window of the training trajectories -> closed-form ridge regression z -> a_t (with
bias); report on the held-out trajectories the **normalised probe MSE** = sum of squared errors / sum of
squared deviations of the true actions from their held-out mean, i.e. the MSE divided by the mean
per-dimension variance of the held-out actions (1.0 = no better than predicting the mean action).

The ridge strength is chosen on the training trajectories alone, by K-fold cross-validation over whole
trajectories on a grid that reaches strengths where the probe predicts the training mean: a latent that
carries nothing scores ~1 instead of the 2-8 an unregularised fit on few windows reaches.
The fit streams sufficient statistics (X'X, X'y in float64, one set per fold), so it never holds all
latents at once.
`masklam probe RUN_DIR [--data FILE]` re-runs it on a checkpoint and updates RUN_DIR/metrics.json.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Iterable

import numpy as np
import torch
import tyro

from masklam.args import parse
from masklam.devices import resolve_device
from masklam.errors import MasklamError, MasklamRuntimeError
from masklam.files import config_record, read_json, write_json
from masklam.metrics import nmse_from_sums


class RidgeProbe:
    """Streaming ridge regression x (N, D) -> y (N, A) with an unpenalised bias."""

    def __init__(self, dim: int, out_dim: int, device: torch.device | str = "cpu") -> None:
        self.n = 0
        self.sxx = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.sx = torch.zeros(dim, dtype=torch.float64, device=device)
        self.sxy = torch.zeros(dim, out_dim, dtype=torch.float64, device=device)
        self.sy = torch.zeros(out_dim, dtype=torch.float64, device=device)
        self.syy = torch.zeros(out_dim, dtype=torch.float64, device=device)
        self.weight: torch.Tensor | None = None  # (D, A)
        self.bias: torch.Tensor | None = None  # (A,)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Accumulate a batch: x (B, D), y (B, A)."""
        x = x.to(self.sxx.device, torch.float64)
        y = y.to(self.sxx.device, torch.float64)
        self.n += x.shape[0]
        self.sxx += x.T @ x
        self.sx += x.sum(0)
        self.sxy += x.T @ y
        self.sy += y.sum(0)
        self.syy += y.square().sum(0)

    def merge(self, others: Iterable["RidgeProbe"]) -> "RidgeProbe":
        """A probe whose statistics are the sum of `others`' (unfitted)."""
        for o in others:
            self.n += o.n
            for name in ("sxx", "sx", "sxy", "sy", "syy"):
                getattr(self, name).add_(getattr(o, name))
        return self

    def fit(self, ridge: float = 1e-3) -> "RidgeProbe":
        """Solve (Cov + ridge * mean variance * I) W = Cov(x, y); ridge is relative to the latents' scale."""
        if self.n < 2:
            raise MasklamError(f"the probe needs at least 2 training windows, got {self.n}")
        mx, my = self.sx / self.n, self.sy / self.n
        cov = self.sxx / self.n - torch.outer(mx, mx)
        cxy = self.sxy / self.n - torch.outer(mx, my)
        d = cov.shape[0]
        lam = ridge * max(float(torch.trace(cov)) / d, 1e-12)
        eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
        self.weight = torch.linalg.solve(cov + lam * eye, cxy)
        self.bias = my - mx @ self.weight
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, A) float64."""
        if self.weight is None:
            raise RuntimeError("fit() first")
        return x.to(self.weight.device, torch.float64) @ self.weight + self.bias

    def train_nmse(self) -> float:
        """Normalised MSE on the accumulated (training) data, from the sufficient statistics alone."""
        return nmse_from_sums(*self.errors(self))

    def errors(self, fitted: "RidgeProbe") -> tuple[float, float]:
        """(sum of squared errors of `fitted`'s map, sum of squares about the mean) on this probe's data."""
        if fitted.weight is None:
            raise RuntimeError("fit() first")
        w = torch.cat([fitted.weight, fitted.bias[None]], 0)  # (D+1, A)
        s = torch.cat([torch.cat([self.sxx, self.sx[:, None]], 1),
                       torch.cat([self.sx[None], torch.tensor([[float(self.n)]], dtype=torch.float64,
                                                              device=self.sx.device)], 1)], 0)  # (D+1, D+1)
        b = torch.cat([self.sxy, self.sy[None]], 0)  # (D+1, A)
        sse = self.syy.sum() - 2 * (w * b).sum() + (w * (s @ w)).sum()
        sst = (self.syy - self.sy.square() / max(self.n, 1)).sum()
        return float(sse.clamp_min(0)), float(sst)


# Ridge strengths tried by cross-validation, relative to the mean latent variance; the largest make the
# probe predict the training mean (normalised MSE ~1 on any data).
RIDGE_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3, 1e4, 1e6)


def cross_validate_ridge(folds: list[RidgeProbe],
                         grid: Iterable[float] = RIDGE_GRID) -> tuple[float, dict[float, float]]:
    """The ridge of `grid` with the lowest pooled held-fold normalised MSE, and each ridge's score.

    folds: one RidgeProbe per fold of training trajectories (K >= 2); each ridge is fitted on K-1 folds
    and scored on the remaining one, errors summed over the K rounds."""
    folds = [f for f in folds if f.n > 0]
    if len(folds) < 2:
        raise MasklamError("cross-validating the probe needs at least 2 non-empty folds of training trajectories")
    dim, out_dim, device = folds[0].sxx.shape[0], folds[0].sxy.shape[1], folds[0].sxx.device
    rest = [RidgeProbe(dim, out_dim, device).merge(f for j, f in enumerate(folds) if j != i) for i in range(len(folds))]
    scores: dict[float, float] = {}
    for ridge in grid:
        sse = sst = 0.0
        for i, held in enumerate(folds):
            e, t = held.errors(rest[i].fit(ridge))
            sse, sst = sse + e, sst + t
        scores[float(ridge)] = nmse_from_sums(sse, sst)
    best = min(scores, key=lambda r: (scores[r], -r))  # ties: the stronger ridge
    return best, scores


@torch.no_grad()
def latents_and_actions(lam: torch.nn.Module, windows: Iterable[dict[str, np.ndarray]]
                        ) -> Iterable[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
    """Yield (latent (B, D) float32, true action (B, A), flat frame rows (B,)) for batches of k = 1 windows,
    in eval mode."""
    was_training = lam.training
    lam.eval()
    try:
        for batch in windows:
            z = lam.label(batch).float()
            yield z, torch.from_numpy(batch["action_t"]).to(z.device), batch["index"]
    finally:
        lam.train(was_training)


def probe_lam(lam: torch.nn.Module, data, train_ids: np.ndarray, heldout_ids: np.ndarray, ridge: float | None = None,
              batch_size: int = 256, max_train_trajs: int | None = None, progress: bool = False,
              folds: int = 5) -> dict[str, float]:
    """Fit the ridge probe on training trajectories, report normalised MSE on train and held-out ones.

    ridge None: chosen by `folds`-fold cross-validation over the training trajectories (RIDGE_GRID);
    a number: that strength, relative to the mean latent variance."""
    from tqdm.auto import tqdm

    from masklam.data import WindowSampler

    data.require_actions("the probe")
    if max_train_trajs is not None:
        train_ids = np.asarray(train_ids)[:max_train_trajs]
    fs, masks = lam.frame_stack, bool(getattr(lam, "needs_masks", False))
    train = WindowSampler(data, train_ids, frame_stack=fs, max_offset=1, need_masks=masks)
    held = WindowSampler(data, heldout_ids, frame_stack=fs, max_offset=1, need_masks=masks)
    k = max(2, min(folds, len(train_ids)))
    fold_of = np.full(data.num_trajectories, -1, np.int64)
    fold_of[np.asarray(train_ids)] = np.arange(len(train_ids)) % k  # whole trajectories per fold
    parts = [RidgeProbe(lam.latent_dim, data.action_dim, lam.device) for _ in range(k)]
    n_batches = -(-train.num_windows // batch_size) + -(-held.num_windows // batch_size)
    bar = tqdm(total=n_batches, desc="probe", unit="batch", disable=not progress, leave=False)
    for z, a, rows in latents_and_actions(lam, train.all_windows(batch_size, k=1)):
        if not bool(torch.isfinite(z).all()):
            raise MasklamRuntimeError("the LAM's latents are not finite (NaN or inf): its weights are broken; train "
                                      "it again")
        traj = np.searchsorted(data.traj_starts, rows, side="right") - 1
        which = torch.as_tensor(fold_of[traj], device=z.device)
        for i in range(k):
            sel = which == i
            if bool(sel.any()):
                parts[i].add(z[sel], a[sel])
        bar.update()
    scores: dict[float, float] = {}
    if ridge is None and len(train_ids) < 2:
        ridge = 1e-3  # one training trajectory: nothing to cross-validate over; the former fixed strength
    if ridge is None:
        ridge, scores = cross_validate_ridge(parts)
    probe = RidgeProbe(lam.latent_dim, data.action_dim, lam.device).merge(parts).fit(ridge)
    sse = torch.zeros((), dtype=torch.float64, device=lam.device)  # streamed: the latents never all in memory
    ys: list[torch.Tensor] = []
    for z, a, _ in latents_and_actions(lam, held.all_windows(batch_size, k=1)):
        a = a.double()
        sse += (probe.predict(z) - a).square().sum()
        ys.append(a)
        bar.update()
    bar.close()
    y = torch.cat(ys)
    sst = (y - y.mean(0)).square().sum()  # about the held-out mean
    out = {"probe_nmse": nmse_from_sums(sse, sst), "probe_nmse_train": probe.train_nmse(),
           "probe_n_train": int(probe.n), "probe_n_heldout": int(y.shape[0]), "probe_ridge": float(ridge)}
    if scores:
        out["probe_nmse_cv"] = scores[ridge]
    return out


@dataclass
class ProbeConfig:
    """Held-out linear probe latent -> true action of a pretrained latent action model."""

    ckpt: Annotated[Path, tyro.conf.Positional]
    """run directory written by `masklam pretrain` (config.json + model.safetensors)"""
    data: tuple[Path, ...] = ()
    """dataset file(s) (default: the run's training data)"""
    heldout: float | None = None
    """held-out fraction (default: the run's)"""
    split_seed: int | None = None
    """split seed (default: the run's)"""
    ridge: float | None = None
    """ridge strength relative to the mean latent variance (None: chosen by 5-fold cross-validation over
    the training trajectories)"""
    batch_size: int = 256
    """windows per encoding batch"""
    max_train_trajs: int | None = None
    """fit on at most this many training trajectories"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N"""
    write: bool = True
    """update CKPT/metrics.json with the result"""

    def __post_init__(self) -> None:
        if self.ridge is not None and not self.ridge >= 0:  # NaN too
            raise MasklamError(f"ridge must be >= 0, got {self.ridge}")
        if self.max_train_trajs is not None and self.max_train_trajs < 1:
            raise MasklamError(f"max_train_trajs must be >= 1, got {self.max_train_trajs}")
        if self.batch_size < 1:
            raise MasklamError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.heldout is not None and not 0.0 < self.heldout < 1.0:
            raise MasklamError(f"heldout must be in (0, 1), got {self.heldout}")


def run_probe(cfg: ProbeConfig) -> dict[str, float]:
    """Load the checkpoint and data, probe, optionally merge into metrics.json; returns the metrics."""
    from masklam.data import load_dataset, split_trajectories
    from masklam.data.formats import offers_observations
    from masklam.models.lam import load_lam
    from masklam.train.checkpoint import check_lam_data

    run_cfg = read_json(cfg.ckpt / "config.json")
    if cfg.heldout is None and run_cfg.get("heldout", 0.1) == 0:
        raise MasklamError(f"{cfg.ckpt} was trained with --heldout 0 (no held-out trajectories): pass --heldout F "
                           "to probe on a split of the data")
    device = resolve_device(cfg.device)
    lam = load_lam(cfg.ckpt, device)
    paths = list(cfg.data) or run_cfg.get("data")
    if not paths:
        raise MasklamError(f"{cfg.ckpt}/config.json names no data; pass --data FILE")
    # the run's kind of frame where the data offer a choice; data passed with --data holding one kind: those
    one_kind = any(not offers_observations(p) for p in cfg.data)
    observations = None if one_kind else run_cfg.get("observations")
    episode_length = run_cfg.get("episode_length")
    # frames of its size, the masks it reads (a probe measures any frame rate): one line before loading the data
    check_lam_data(cfg.ckpt, paths, observations, episode_length, any_fps=True)
    data = load_dataset(paths, mask_key=run_cfg.get("mask_key", "masks") if lam.needs_masks else None,
                        observations=observations, episode_length=episode_length)
    heldout = cfg.heldout if cfg.heldout is not None else run_cfg.get("heldout", 0.1)
    seed = cfg.split_seed if cfg.split_seed is not None else run_cfg.get("split_seed", 0)
    train_ids, held_ids = split_trajectories(data.num_trajectories, heldout, seed)
    metrics = probe_lam(lam, data, train_ids, held_ids, cfg.ridge, cfg.batch_size, cfg.max_train_trajs, progress=True)
    if cfg.write:
        path = cfg.ckpt / "metrics.json"
        old = read_json(path) if path.is_file() else {}  # the old probe's scores go: none stays beside the new ones
        write_json(path, {**{k: v for k, v in old.items() if not k.startswith("probe_")}, **metrics,
                          "probe_settings": {"ridge": cfg.ridge, "max_trajs": cfg.max_train_trajs},
                          "probe_config": {**config_record(cfg), "data": paths, "heldout": heldout,
                                           "split_seed": seed}})
    return metrics


def main(argv: list[str]) -> int:
    """`masklam probe RUN_DIR [--data FILE]`."""
    metrics = run_probe(parse(ProbeConfig, argv))
    print(f"probe_nmse (held-out) {metrics['probe_nmse']:.4f}  train {metrics['probe_nmse_train']:.4f}  "
          f"({metrics['probe_n_train']} train / {metrics['probe_n_heldout']} held-out windows)")
    return 0
