"""The report's figures (matplotlib, Agg, PNG): the papers' curves and bars from results.csv rows.

Every figure has one panel per task plus the task average; seeds are aggregated with `over_seeds` (each
seed's values averaged first, over tasks for the average) and drawn as the mean with a standard-error band
or error bar. The full-data BC normalisers are not methods: in normalised-return plots they are the line at 1.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from masklam import methods
from masklam.downstream.results import Row, SeedStats, over_seeds
from masklam.files import atomic_path

AVERAGE = "average"
"""the panel of the task average"""
LABELS = {"normalized_return": "normalised return", "probe_nmse": "probe NMSE (held out)", "ret": "return",
          "labels": "labelled trajectories", "latent_dim": "latent dim"}


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure atomically (never a half-written PNG; a full disk is one line) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, shared=True) as tmp:  # sweeps over other seeds may share the run directory
            fig.savefig(tmp, dpi=90, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)

def _plt():  # noqa: ANN202 (matplotlib.pyplot, imported only when drawing)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tasks_and_average(rows: list[Row]) -> list[str]:
    """The panels: each task, then the average when there are several."""
    tasks = sorted({r.task for r in rows})
    return tasks + ([AVERAGE] if len(tasks) > 1 else [])


def stats(rows: list[Row], y: str, task: str) -> SeedStats:
    """`y` over seeds of `rows` for one task or the task average (each seed's values averaged first)."""
    return over_seeds((r.seed, getattr(r, y)) for r in rows if task == AVERAGE or r.task == task)


def seed_curves(rows: list[Row], x: str, y: str, task: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per method: (xs, mean, standard error) of `y` over seeds at each `x`, for one task or the task average.

    Rows with a missing y are skipped; an x without a value is left out."""
    cell: dict[str, dict[float, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cell[r.method][getattr(r, x)].append(r)
    curves = {}
    for method, by_x in cell.items():
        st = {xv: stats(rs, y, task) for xv, rs in by_x.items()}
        xs = sorted(xv for xv, s in st.items() if s.n)
        if xs:
            curves[method] = (np.array(xs, dtype=float), np.array([st[xv].mean for xv in xs]),
                              np.array([st[xv].sem for xv in xs]))
    return curves


def curve_grid(rows: list[Row], x: str, y: str, keep: Callable[[Row], bool], title: str, path: Path) -> bool:
    """`y` vs `x` (log2 axis), one panel per task and the average, mean and SE band per method; False if empty
    (rows without a `y`, e.g. no probe under --heldout 0, are not drawn)."""
    sel = [r for r in rows if keep(r) and not methods.is_kind(r.method, "normaliser")
           and getattr(r, y) is not None and np.isfinite(getattr(r, y))]
    panels = tasks_and_average(sel)
    if not panels:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, task in zip(axes[0], panels):
        curves = seed_curves(sel, x, y, task)
        for method in methods.ordered(curves):
            xs, mean, sem = curves[method]
            color = methods.color(method)
            ax.plot(xs, mean, marker="o", label=method, color=color)
            ax.fill_between(xs, mean - sem, mean + sem, alpha=0.2, color=color)
        if y == "normalized_return":
            ax.axhline(1.0, ls="--", lw=1, color="grey", label="full-data BC")
        ax.set_xscale("log", base=2)
        ax.set_title(task)
        ax.set_xlabel(LABELS.get(x, x))
        ax.set_ylabel(LABELS.get(y, y))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return True


BARS = (("probe_nmse", "id", "probe NMSE (lower is better)"), ("normalized_return", "id", "normalised return, ID"),
        ("normalized_return", "ood", "normalised return, OOD"))
"""the panels of `method_bars`: (column, split, title)"""


def method_bars(rows: list[Row], path: Path) -> bool:
    """Every method's probe NMSE and normalised return ID / OOD, task average, mean ± SE over seeds."""
    shown = methods.ordered(r.method for r in rows if not methods.is_kind(r.method, "normaliser"))
    if not shown:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(BARS), figsize=(max(9.0, 1.1 * len(shown) * len(BARS)), 3.2))
    for ax, (y, split, title) in zip(axes, BARS):
        st = [stats([r for r in rows if r.method == m and r.split == split], y, AVERAGE) for m in shown]
        ax.bar(range(len(shown)), [s.mean for s in st], yerr=[s.sem for s in st], capsize=3,
               color=[methods.color(m) for m in shown])
        ax.set_xticks(range(len(shown)), shown, rotation=30, fontsize=8)
        if y == "normalized_return":
            ax.axhline(1.0, ls="--", lw=1, color="grey")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, path)
    return True


def example_frames(dataset: Path, path: Path) -> bool:
    """Six frames of a dataset's first trajectory with their agent masks; False if it has no masks or is not one of
    our HDF5 files (MaskLAM's parquet data: no picture)."""
    import h5py

    from masklam.data.hdf5 import trajectory_names

    if not h5py.is_hdf5(dataset):
        return False
    with h5py.File(dataset, "r") as f:
        names = trajectory_names(f)
        if not names or "masks" not in f[names[0]]:
            return False
        g = f[names[0]]
        idx = np.linspace(0, g["obs"].shape[0] - 1, 6).astype(int)
        obs, masks = g["obs"][list(idx)], g["masks"][list(idx)]
    plt = _plt()
    fig, axes = plt.subplots(2, len(idx), figsize=(1.6 * len(idx), 3.4))
    for j in range(len(idx)):
        axes[0, j].imshow(obs[j])
        axes[1, j].imshow(obs[j] * masks[j][..., None])
        axes[0, j].set_title(f"t={idx[j]}", fontsize=8)
        for a in axes[:, j]:
            a.axis("off")
    fig.suptitle(f"frames and agent masks: {dataset.name}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return True
