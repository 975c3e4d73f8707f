"""`masklam report RUN_DIR`: the papers' figures and one HTML page from a sweep's `results.csv`.

Figures (matplotlib, Agg), per task and averaged over tasks, seeds as error bands (mean +- std):
normalised return vs number of labels, normalised return vs latent dim, probe NMSE vs latent dim,
in-distribution vs out-of-distribution. Any `recon.png` under the run directory (FDM
reconstruction grids) and example frames with masks (when `experiment.json` records a dataset)
are shown too. `RUN_DIR/report.html` links to the PNG figures in `RUN_DIR/report/`.
"""
from __future__ import annotations

import html
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from masklam.downstream.results import Row, SeedStats, over_seeds, read_results
from masklam.args import parse
from masklam.errors import MasklamError

AVERAGE = "average"


def seed_curves(rows: list[Row], x: str, y: str, task: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per method: (xs, mean, std) of `y` over seeds at each `x` for one task or the task average.

    For the average, each seed's values are first averaged over tasks, then mean/std over seeds
    (`over_seeds`). Rows with a missing y are skipped.
    """
    cell: dict[str, dict[float, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if task == AVERAGE or r.task == task:
            cell[r.method][getattr(r, x)].append((r.seed, getattr(r, y)))
    curves = {}
    for method, by_x in cell.items():
        stats = {xv: over_seeds(pairs) for xv, pairs in by_x.items()}
        xs = sorted(xv for xv, st in stats.items() if st.n)
        if xs:
            curves[method] = (np.array(xs, dtype=float), np.array([stats[xv].mean for xv in xs]),
                              np.array([stats[xv].std for xv in xs]))
    return curves


def _plot_curves(ax, curves, logx: bool) -> None:  # noqa: ANN001 (matplotlib axes)
    for method, (xs, mean, std) in sorted(curves.items()):
        if len(xs) == 1:  # a method without this axis (e.g. full-data BC): a horizontal reference
            ax.axhline(mean[0], ls="--", lw=1, label=method, color=None)
            continue
        (line,) = ax.plot(xs, mean, marker="o", label=method)
        ax.fill_between(xs, mean - std, mean + std, alpha=0.2, color=line.get_color())
    if logx:
        ax.set_xscale("log", base=2)


def _figure_grid(rows: list[Row], x: str, y: str, where: dict, title: str, path: Path, logx: bool = True) -> bool:
    """One panel per task plus the average; returns False when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if all(where[k](getattr(r, k)) for k in where)]
    tasks = sorted({r.task for r in sel})
    if not sel:
        return False
    panels = tasks + ([AVERAGE] if len(tasks) > 1 else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, task in zip(axes[0], panels):
        _plot_curves(ax, seed_curves(sel, x, y, task), logx)
        ax.set_title(task)
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(y.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _id_vs_ood(rows: list[Row], path: Path) -> bool:
    """Grouped bars: mean +- std (over seeds, task-averaged) normalised return per method, ID vs OOD."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r.method for r in rows})
    if not any(r.split == "ood" for r in rows):
        return False
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(methods)), 3.4))
    for j, split in enumerate(("id", "ood")):
        stats = [_pooled(rows, m, split) for m in methods]
        ax.bar(np.arange(len(methods)) + 0.4 * j, [s[0] for s in stats], 0.4, yerr=[s[1] for s in stats],
               label=split, capsize=3)
    ax.set_xticks(np.arange(len(methods)) + 0.2, methods, rotation=30, fontsize=8)
    ax.set_ylabel("normalized return")
    ax.legend()
    ax.set_title("in-distribution vs OOD (all tasks, dims, labels)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _pooled(rows: list[Row], method: str, split: str) -> tuple[float, float]:
    """Mean and std over seeds of a method's normalised return, averaged within each seed."""
    st = over_seeds((r.seed, r.normalized_return) for r in rows if r.method == method and r.split == split)
    return st.mean, st.std


def summary_table(rows: list[Row]) -> list[list[str]]:
    """Rows of (method, task, dim, labels, split, n seeds, probe NMSE, return, normalised return) as mean +- std."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r.method, r.task, r.latent_dim, r.labels, r.split)].append(r)
    def ms(st: SeedStats) -> str:
        return "" if not st.n else f"{st.mean:.3f} ± {st.std:.3f}"

    out = []
    for key in sorted(groups):
        g = groups[key]
        out.append([*map(str, key), str(len(g)), *(ms(over_seeds((r.seed, getattr(r, y)) for r in g))
                                                   for y in ("probe_nmse", "ret", "normalized_return"))])
    return out


def _example_frames(run_dir: Path, out: Path) -> bool:
    """Frames with their agent masks from the dataset recorded in experiment.json (if any, if readable)."""
    meta = run_dir / "experiment.json"
    if not meta.is_file():
        return False
    paths = json.loads(meta.read_text()).get("datasets", {})
    first = next((p for ps in paths.values() for p in (ps if isinstance(ps, list) else [ps])), None)
    if first is None or not Path(first).is_file():
        return False
    import h5py
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with h5py.File(first, "r") as f:
        g = f["0"]
        if "masks" not in g:
            return False
        idx = np.linspace(0, g["obs"].shape[0] - 1, 6).astype(int)
        obs, masks = g["obs"][list(idx)], g["masks"][list(idx)]
    fig, axes = plt.subplots(2, len(idx), figsize=(1.6 * len(idx), 3.4))
    for j in range(len(idx)):
        axes[0, j].imshow(obs[j])
        axes[1, j].imshow(obs[j] * masks[j][..., None])
        axes[0, j].set_title(f"t={idx[j]}", fontsize=8)
        for a in axes[:, j]:
            a.axis("off")
    fig.suptitle(f"frames and agent masks: {Path(first).name}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


def render_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html and its PNG figures (in RUN_DIR/report/); returns the HTML path."""
    run_dir = Path(run_dir)
    rows = read_results(run_dir / "results.csv")
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    dims = sorted({r.latent_dim for r in rows if r.latent_dim > 0})
    labels = sorted({r.labels for r in rows if r.method != "bc-full"})
    max_dim, max_labels = (dims[-1] if dims else 0), (labels[-1] if labels else 0)
    figs: list[tuple[str, str]] = []

    def add(name: str, caption: str, ok: bool) -> None:
        if ok:
            figs.append((name, caption))

    for split in ("id", "ood"):
        add(f"return_vs_labels_{split}.png", f"normalised return vs labeled trajectories ({split}, latent dim {max_dim})",
            _figure_grid(rows, "labels", "normalized_return",
                         {"split": lambda s, sp=split: s == sp, "latent_dim": lambda d: d in (0, max_dim),
                          "method": lambda m: m != "bc-full"},
                         f"normalised return vs labels ({split})", out / f"return_vs_labels_{split}.png"))
        add(f"return_vs_dim_{split}.png", f"normalised return vs latent dim ({split}, {max_labels} labels)",
            _figure_grid(rows, "latent_dim", "normalized_return",
                         {"split": lambda s, sp=split: s == sp, "labels": lambda n: n == max_labels,
                          "latent_dim": lambda d: d > 0},
                         f"normalised return vs latent dim ({split})", out / f"return_vs_dim_{split}.png"))
    add("probe_vs_dim.png", "linear probe NMSE (held out) vs latent dim",
        _figure_grid(rows, "latent_dim", "probe_nmse", {"split": lambda s: s == "id", "latent_dim": lambda d: d > 0},
                     "probe NMSE vs latent dim", out / "probe_vs_dim.png"))
    add("id_vs_ood.png", "in-distribution vs out-of-distribution normalised return", _id_vs_ood(rows, out / "id_vs_ood.png"))
    add("frames.png", "example frames (top) and agent masks (bottom)", _example_frames(run_dir, out / "frames.png"))
    recons = sorted(p for p in run_dir.rglob("recon.png") if out not in p.parents)
    parts = [f"<h1>masklam report: {html.escape(str(run_dir))}</h1>", f"<p>{len(rows)} result rows.</p>"]
    for name, caption in figs:
        parts.append(f'<figure><img src="report/{name}"><figcaption>{html.escape(caption)}</figcaption></figure>')
    if recons:
        parts.append("<h2>FDM reconstructions</h2>")
        for p in recons:
            rel = p.relative_to(run_dir)
            parts.append(f'<figure><img src="{html.escape(rel.as_posix())}" style="max-width:100%">'
                         f"<figcaption>{html.escape(str(p.parent.relative_to(run_dir)))}</figcaption></figure>")
    head = ["method", "task", "latent dim", "labels", "split", "seeds", "probe NMSE", "return", "normalised return"]
    parts.append("<h2>Results (mean ± std over seeds)</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>")
    for r in summary_table(rows):
        parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
    parts.append("</table>")
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>masklam report</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"
    (run_dir / "report.html").write_text(page)
    return run_dir / "report.html"


@dataclass
class ReportConfig:
    """Render the figures and report.html of a sweep's run directory."""

    run_dir: tyro.conf.Positional[Path]
    """run directory holding results.csv (as written by `masklam experiment`)"""

    def __post_init__(self) -> None:
        if not self.run_dir.is_dir():
            raise MasklamError(f"no such run directory: {self.run_dir}")


def main(argv: list[str]) -> int:
    """`masklam report RUN_DIR`."""
    cfg = parse(ReportConfig, argv)
    path = render_report(cfg.run_dir)
    print(f"wrote {path}")
    return 0
