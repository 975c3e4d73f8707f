"""`masklam viz --lam RUN --data DATA`: what a latent action model's latents mean, as PNGs and viz.json.

Written to ``--out`` (default ``RUN/viz/``, which `masklam report` shows when RUN is a pretrain stage):

- ``latents.png``: the latent of every one-step transition (o_t, o_{t+1}) of up to ``--max-trajs``
  trajectories (spread over the file), projected to 2-D by PCA (numpy SVD; the explained variance is in the
  titles), one panel per true action dimension coloured by its value when the data has actions that vary,
  else two panels coloured by episode and by time step. ``latents_umap.png``: the same with UMAP, only when
  the ``umap`` package imports (it is not a dependency).
- ``transfer.png`` (pixel LAMs, LAPO / MaskLAM): latent-action transfer. Each row takes a transition of one
  episode (its o_t, o_{t+1}), infers its latent, and applies it with the FDM to a frame o'_t of *another*
  episode: the FDM's prediction with the transferred latent is shown beside its prediction with o'_t's own
  latent and the true o'_{t+1}. A latent that means "what the agent did" moves the other agent the same way;
  one that encodes the background repaints the background. LAOM's models predict embeddings, not pixels, so
  they have no transfer grid (viz.json says so).
- ``codes.png`` (FSQ latents only): how often each code of the grid is used, most used first; viz.json holds
  the number of codes, the number used, and the perplexity exp(H) of the empirical code distribution
  (``prod(levels)`` if every code were used equally, 1 if one code were always used).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from masklam.args import parse
from masklam.devices import resolve_device
from masklam.errors import MasklamError, MasklamRuntimeError
from masklam.files import atomic_path, config_record, write_json
from masklam.seeding import check_seeds

TRANSFER_ROWS = 6


@dataclass
class VizConfig:
    """PNG views of what a LAM's latents mean: a 2-D projection, latent-action transfer, FSQ code usage."""

    lam: Path
    """the LAM's run directory (from `masklam pretrain`, or a pretrain stage of `masklam experiment`), or a Hub repo id
    (then --out)"""
    data: list[Path] | None = None
    """dataset file(s) (default: the data the run was trained on, from its config.json)"""
    out: Path | None = None
    """output directory (default: LAM/viz)"""
    max_trajs: int = 20
    """trajectories whose transitions are projected (spread over the data)"""
    batch: int = 256
    """transitions per forward pass"""
    seed: int = 0
    """chooses the transfer pairs"""
    device: str = "auto"
    """torch device: auto, cpu, cuda, cuda:N"""

    def __post_init__(self) -> None:
        if self.max_trajs < 2:
            raise MasklamError(f"--max-trajs must be >= 2 (transfer needs two episodes), got {self.max_trajs}")
        if self.batch < 1:
            raise MasklamError(f"--batch must be >= 1, got {self.batch}")
        check_seeds(seed=self.seed)
        resolve_device(self.device)


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> (N, 2) projection on the two principal axes, and their explained-variance ratios (2,)."""
    centred = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s ** 2
    ratio = var[:2] / max(float(var.sum()), 1e-12)
    proj = centred @ vt[:2].T
    if proj.shape[1] < 2:  # a 1-D latent: plot it against zero
        proj, ratio = np.pad(proj, ((0, 0), (0, 2 - proj.shape[1]))), np.pad(ratio, (0, 2 - len(ratio)))
    return proj, ratio


def code_indices(codes: torch.Tensor, levels: torch.Tensor) -> np.ndarray:
    """FSQ codes (N, len(levels)) in [-1, 1] -> (N,) int64 index of each code in the grid of prod(levels)."""
    half = torch.floor(levels / 2)
    digits = torch.round(codes * half + half).long().clamp(min=0)  # per-dim level index 0..L-1
    digits = torch.minimum(digits, levels.long() - 1)
    radix = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), levels.long()[:-1]]), dim=0)
    return (digits * radix).sum(dim=1).cpu().numpy()


def code_stats(index: np.ndarray, num_codes: int) -> dict[str, float]:
    """Usage of an FSQ grid: codes, used, usage (used / codes) and perplexity exp(entropy) of the counts."""
    counts = np.bincount(index, minlength=num_codes).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    used = int((counts > 0).sum())
    return {"codes": int(num_codes), "used": used, "usage": used / num_codes,
            "perplexity": float(np.exp(-(p * np.log(p)).sum()))}


def latents(lam, data, traj_ids: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One-step latents of every transition of ``traj_ids``: (N, D), their flat frame rows (N,), and the FSQ
    codes' grid indices (N,) when the LAM quantises (else None)."""
    from masklam.data.dataset import WindowSampler

    sampler = WindowSampler(data, traj_ids, frame_stack=lam.frame_stack, need_masks=lam.needs_masks)
    captured: list[torch.Tensor] = []
    hook = None
    if lam.quantizer is not None:  # the quantiser's input, to read the codes of the latent it outputs
        hook = lam.quantizer.register_forward_hook(lambda mod, args, out: captured.append(mod.codes(args[0])))
    zs, rows = [], []
    try:
        with torch.no_grad():
            for windows in tqdm(sampler.all_windows(batch), total=-(-sampler.num_windows // batch), unit="batch",
                                desc="latents", leave=False):
                zs.append(lam.label(windows).float().cpu().numpy())
                rows.append(windows["index"])
    finally:
        if hook is not None:
            hook.remove()
    index = code_indices(torch.cat(captured), lam.quantizer.levels.cpu()) if captured else None
    return np.concatenate(zs), np.concatenate(rows), index


def _scatter_panels(proj: np.ndarray, colours: list[tuple[str, np.ndarray]], title: str, path: Path) -> None:
    from masklam.downstream.figures import _plt

    plt = _plt()
    n = len(colours)
    cols = min(n, 3)
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(4.2 * cols, 3.6 * -(-n // cols)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, values) in zip(axes.flat, colours):
        ax.axis("on")
        points = ax.scatter(proj[:, 0], proj[:, 1], c=values, s=4, cmap="viridis", linewidths=0)
        fig.colorbar(points, ax=ax, fraction=0.046)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    from masklam.downstream.figures import _plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    _plt().close(fig)


def colourings(data, rows: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """What to colour the points by: each true action dimension that varies, else episode and time step."""
    actions = data.actions[rows] if data.actions.size else np.zeros((len(rows), 0))
    varying = [d for d in range(actions.shape[1]) if np.ptp(actions[:, d]) > 0]
    if varying:
        return [(f"true action dim {d}", actions[:, d]) for d in varying]
    episode = np.searchsorted(data.traj_starts, rows, side="right") - 1
    return [("episode", episode.astype(float)), ("time step", (rows - data.traj_starts[episode]).astype(float))]


def transfer_grid(lam, data, traj_ids: np.ndarray, rows: int, seed: int, path: Path) -> int:
    """Draw the latent-transfer grid (module docstring) for ``rows`` (source, target) pairs from different
    episodes; returns the number of rows drawn."""
    from masklam.data.dataset import WindowSampler
    from masklam.downstream.figures import _plt

    rng = np.random.default_rng(seed)
    half = len(traj_ids) // 2
    source = WindowSampler(data, traj_ids[:half], frame_stack=lam.frame_stack, need_masks=lam.needs_masks)
    target = WindowSampler(data, traj_ids[half:], frame_stack=lam.frame_stack, need_masks=lam.needs_masks)
    src, tgt = source.sample(rows, rng), target.sample(rows, rng)
    with torch.no_grad():
        z_src, z_own = lam.label(src), lam.label(tgt)
        x_t = lam.inputs(tgt["obs_t"], tgt.get("mask_t"))
        moved = lam.newest_in_unit(lam.predict_from_tensors(x_t, z_src)[0]).clamp(0, 1)  # (B, 3, H, W)
        own = lam.newest_in_unit(lam.predict_from_tensors(x_t, z_own)[0]).clamp(0, 1)

    def image(t: torch.Tensor) -> np.ndarray:
        return t.permute(1, 2, 0).float().cpu().numpy()

    columns = [("source o_t", lambda i: src["obs_t"][i, -1]), ("source o_t+1", lambda i: src["obs_t1"][i, -1]),
               ("target o'_t", lambda i: tgt["obs_t"][i, -1]), ("FDM(o'_t, source latent)", lambda i: image(moved[i])),
               ("FDM(o'_t, own latent)", lambda i: image(own[i])), ("true o'_t+1", lambda i: tgt["obs_t1"][i, -1])]
    plt = _plt()
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.7 * len(columns), 1.7 * rows + 0.4), squeeze=False)
    for i in range(rows):
        for j, (name, get) in enumerate(columns):
            axes[i, j].imshow(get(i), interpolation="nearest")
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(name, fontsize=7)
    fig.suptitle("latent-action transfer: a source episode's transition latent applied to another episode's frame",
                 fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return rows


def _codes_plot(index: np.ndarray, stats: dict[str, float], path: Path) -> None:
    from masklam.downstream.figures import _plt

    counts = np.sort(np.bincount(index, minlength=stats["codes"]))[::-1]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    shown = counts[: max(stats["used"], 1)]
    ax.bar(np.arange(len(shown)), shown / counts.sum(), width=1.0)
    ax.set_xlabel(f"code (most used first; {stats['used']} of {stats['codes']} used)")
    ax.set_ylabel("fraction of transitions")
    ax.set_title(f"FSQ code usage: perplexity {stats['perplexity']:.1f} of {stats['codes']}", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def visualise(cfg: VizConfig) -> dict:
    """Write the PNGs and viz.json of ``cfg`` (module docstring); returns viz.json's content."""
    from masklam.data import load_dataset
    from masklam.data.dataset import data_layouts
    from masklam.masks.distill import spread
    from masklam.models.lam import PixelLAM, load_lam

    from masklam.models.pretrained import is_local
    from masklam.train.checkpoint import check_lam_data, lam_config

    if cfg.out is None and not is_local(str(cfg.lam)):
        raise MasklamError(f"{cfg.lam} is a Hub repo id: pass --out DIR for the figures")
    lam = load_lam(cfg.lam, resolve_device(cfg.device))
    run_cfg = lam_config(cfg.lam)
    paths = [str(p) for p in cfg.data] if cfg.data else run_cfg.get("data")
    if not paths:
        raise MasklamError(f"{cfg.lam}/config.json names no data; pass --data FILE")
    paths = [paths] if isinstance(paths, str) else list(paths)
    # the run's frames of its parquet data (as `masklam probe`); a file given with --data is read as it is
    observations = None if cfg.data else run_cfg.get("observations")
    episode_length = run_cfg.get("episode_length")
    check_lam_data(cfg.lam, paths, observations, episode_length, any_fps=True)  # its image size, its masks
    total = sum(lay.num_trajectories for lay in data_layouts(paths, observations, episode_length))  # folders too
    if total < 2:
        raise MasklamError(f"{', '.join(paths)} holds {total} trajectory; viz needs at least 2")
    chosen = spread(list(range(total)), cfg.max_trajs)
    data = load_dataset(paths, mask_key=run_cfg.get("mask_key", "masks") if lam.needs_masks else None,
                        traj_ids=chosen, progress=False, observations=observations, episode_length=episode_length)
    ids = np.arange(data.num_trajectories)
    z, rows, index = latents(lam, data, ids, cfg.batch)
    if not np.isfinite(z).all():
        raise MasklamRuntimeError(f"the latents of {cfg.lam} are not finite (NaN or inf): its weights are broken; "
                                  "train it again")
    out = cfg.out or cfg.lam / "viz"
    out.mkdir(parents=True, exist_ok=True)  # once there is something to show
    proj, ratio = pca_2d(z)
    colours = colourings(data, rows)
    summary: dict = {"config": config_record(cfg), "lam": str(cfg.lam), "method": lam.cfg.method, "data": paths,
                     "trajectories": len(ids),
                     "transitions": int(len(z)), "latent_dim": int(z.shape[1]),
                     "coloured_by": [name for name, _ in colours], "pca_explained_variance": ratio.tolist(),
                     "figures": {"latents": "latents.png"}}
    _scatter_panels(proj, colours, f"{lam.cfg.method} latents, PCA (PC1 {ratio[0]:.0%}, PC2 {ratio[1]:.0%} of "
                    f"the variance), {len(z)} transitions", out / "latents.png")
    try:
        import umap  # noqa: F401 - optional
    except ImportError:
        summary["umap"] = "not installed (pip install umap-learn)"
    else:
        emb = umap.UMAP(n_components=2, random_state=cfg.seed).fit_transform(z)
        _scatter_panels(emb, colours, f"{lam.cfg.method} latents, UMAP", out / "latents_umap.png")
        summary["figures"]["latents_umap"] = "latents_umap.png"
    if isinstance(lam, PixelLAM):
        transfer_grid(lam, data, ids, TRANSFER_ROWS, cfg.seed, out / "transfer.png")
        summary["figures"]["transfer"] = "transfer.png"
    else:
        summary["transfer"] = (f"{lam.cfg.method} predicts the next frame's embedding, not its pixels: no pixel "
                               "decoder to show latent-action transfer with")
    if index is not None:
        stats = code_stats(index, int(torch.prod(lam.quantizer.levels).item()))
        summary["fsq"] = {"levels": [int(v) for v in lam.quantizer.levels.tolist()], **stats}
        _codes_plot(index, stats, out / "codes.png")
        summary["figures"]["codes"] = "codes.png"
    write_json(out / "viz.json", summary)
    return summary


def main(argv: list[str]) -> int:
    """`masklam viz --lam RUN [--data FILE] [--out DIR]`."""
    cfg = parse(VizConfig, argv)
    summary = visualise(cfg)
    out = cfg.out or cfg.lam / "viz"
    print(f"{summary['transitions']} transitions of {summary['trajectories']} trajectories; wrote "
          f"{', '.join(summary['figures'].values())} and viz.json to {out}")
    if "fsq" in summary:
        fsq = summary["fsq"]
        print(f"FSQ: {fsq['used']} of {fsq['codes']} codes used, perplexity {fsq['perplexity']:.1f}")
    if "transfer" in summary:
        print(summary["transfer"])
    return 0
