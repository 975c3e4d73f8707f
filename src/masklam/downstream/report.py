"""`masklam report RUN_DIR`: one HTML page per experiment with the papers' figures, from a sweep's run directory.

`RUN_DIR/report.html` (figures as PNGs in `RUN_DIR/report/`, masklam.downstream.figures) opens with the headline
the quickstart prints (MaskLAM vs LAPO, the gap closed) and shows, per task and averaged over tasks, seeds as
mean ± standard error (tables: masklam.downstream.summary, the quickstart's table.txt; figures: `over_seeds`):

- normalised return vs labelled trajectories, ID and OOD (at the largest latent dim);
- normalised return and probe NMSE vs latent dim, when the sweep has several;
- the results table at the largest latent dim, over label budgets (and bars), with each row's LAM recipe and
  scale (pretrain preset, updates, latent dim);
- the FDM reconstruction grids (`recon.png` of the pretrain stages) side by side per task, latent dim and seed,
  each captioned by method, recipe, seed and scale; example frames with agent masks;
- what the latents mean, for each pretrain stage that `masklam viz` has drawn (``viz/viz.json`` in the stage:
  the latents' 2-D projection, latent-action transfer, FSQ code usage; masklam.downstream.viz);
- the results table per task, latent dim and label budget.

The LAMs are those of the run's manifest (`OUT/manifest.json`: each result row's stage directories, written by
`masklam experiment`), each read from its pretrain stage (config.json, recon.png). A run directory written before
manifests shows no reconstructions: `masklam experiment` again writes the manifest, reusing every stage.
"""
from __future__ import annotations

import html
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import tyro

from masklam.args import parse
from masklam import methods
from masklam.downstream.figures import AVERAGE, curve_grid, example_frames, method_bars, tasks_and_average
from masklam.downstream.results import Row, read_results
from masklam.downstream.summary import COLUMNS, NOTE, headline, headline_rows, summarize, table_cells
from masklam.downstream.sweep import MANIFEST, read_manifest
from masklam.errors import MasklamError
from masklam.files import write_text
from masklam.locks import SUFFIX, check_free, output_lock


# --- the LAMs of a run ------------------------------------------------------------------------------------
@dataclass
class Lam:
    """A latent action model the sweep trained (a done pretrain stage), as the report shows it."""

    method: str
    """as in results.csv: lapo-clean is LAPO on the distractor-free data"""
    task: str
    latent_dim: int
    seed: int
    labels: int
    """laom-sup: its label budget (0 for the others)"""
    recipe: str
    """how it was trained (results.csv's recipe: masklam.downstream.stages.recipe_label)"""
    scale: str
    """pretrain preset, updates and latent dim"""
    recon: Path | None
    """its FDM reconstruction grid, if it wrote one"""
    stage: str = ""
    """its pretrain stage's key (directory name), as results.csv's lam_stage names it"""


def _collect_stage(run_dir: Path, path: str) -> Path | None:
    """The stage.json of the collect stage that wrote `path` (stages/collect/<key>/data.h5), in this run dir."""
    p = Path(path)
    stage = run_dir / "stages" / "collect" / p.parent.name / "stage.json"
    return stage if p.parent.parent.name == "collect" and stage.is_file() else None


def _experiment(run_dir: Path) -> dict[str, Any]:
    f = run_dir / "experiment.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def row_lams(manifest: list[dict[str, Any]]) -> list[Lam]:
    """The LAMs behind the result rows (their pretrain stages in the run's manifest), each once, in method order."""
    found: dict[Path, Lam] = {}
    for r in manifest:
        d = r["stages"].get("pretrain")
        if d is None or d in found:
            continue
        resolved = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
        updates = resolved.get("total_steps", resolved.get("updates", "?"))
        scale = f"{resolved.get('preset', '?')}, {updates} updates, dim {r['latent_dim']}"
        found[d] = Lam(r["method"], r["task"], int(r["latent_dim"]), int(r["seed"]), int(resolved.get("labels", 0)),
                       r.get("recipe", "-"), scale, d / "recon.png" if (d / "recon.png").is_file() else None, d.name)
    order = methods.ordered(lam.method for lam in found.values())
    return sorted(found.values(),
                  key=lambda lam: (lam.task, lam.latent_dim, lam.seed, order.index(lam.method), lam.labels))


def scales(lams: list[Lam]) -> dict[tuple[str, str, int], str]:
    """(method, task, latent dim) -> the scale of its LAMs."""
    by: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    for lam in lams:
        by[(lam.method, lam.task, lam.latent_dim)].add(lam.scale)
    return {k: "; ".join(sorted(v)) for k, v in by.items()}


# --- tables ------------------------------------------------------------------------------------------------
def _scale(scale: dict[tuple[str, str, int], str], rows: list[Row]) -> str:
    if not methods.is_kind(rows[0].method, "lam"):
        return "-"
    found = {scale.get((r.method, r.task, r.latent_dim)) for r in rows} - {None}
    return "; ".join(sorted(found)) or "?"


HEAD = ["method", "recipe", *(h for h, _, _ in COLUMNS)]
"""the columns of the one results table (masklam.downstream.summary), as the terminal prints them"""


def method_table(rows: list[Row], scale: dict[tuple[str, str, int], str]) -> list[list[str]]:
    """Per task and the average: the results table (masklam.downstream.summary), with each LAM's scale and the
    number of seeds."""
    out = []
    for panel in tasks_and_average(rows):
        sel = [r for r in rows if panel == AVERAGE or r.task == panel]
        for m, recipe, *cells in table_cells(summarize(sel)):
            g = [r for r in sel if r.method == m]
            out.append([panel, m, recipe, _scale(scale, g), str(len({r.seed for r in g})), *cells])
    return out


def summary_table(rows: list[Row], scale: dict[tuple[str, str, int], str] | None = None) -> list[list[str]]:
    """Every task, latent dim and label budget: the results table of its rows (masklam.downstream.summary)."""
    groups: dict[tuple[str, int, int], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r.task, r.latent_dim, r.labels)].append(r)
    out = []
    for task, dim, labels in sorted(groups):
        for m, recipe, *cells in table_cells(summarize(groups[(task, dim, labels)])):
            g = [r for r in groups[(task, dim, labels)] if r.method == m]
            out.append([m, recipe, _scale(scale or {}, g), task, str(dim), str(labels),
                        str(len({r.seed for r in g})), *cells])
    return out


# --- the page ----------------------------------------------------------------------------------------------
def _table(head: list[str], body: list[list[str]]) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{cells}</table>"


def _figure(src: str, caption: str, cls: str = "") -> str:
    return (f'<figure class="{cls}"><img src="{html.escape(src)}"><figcaption>{html.escape(caption)}'
            "</figcaption></figure>")


def _recon_section(run_dir: Path, lams: list[Lam]) -> list[str]:
    """The FDM reconstruction grids side by side: one row per task, latent dim and seed."""
    groups: dict[tuple[str, int, int], list[Lam]] = defaultdict(list)
    for lam in lams:
        if lam.recon is not None:
            groups[(lam.task, lam.latent_dim, lam.seed)].append(lam)
    if not groups:
        return []
    parts = ["<h2>FDM reconstructions</h2><p>Held-out windows; rows: o<sub>t</sub>, o<sub>t+1</sub>, the FDM's "
             "prediction of o<sub>t+1</sub> (and, for methods that use them, the agent mask of o<sub>t+1</sub>).</p>"]
    for (task, dim, seed), group in groups.items():
        parts.append(f"<h3>{html.escape(task)}, latent dim {dim}, seed {seed}</h3><div class='row'>")
        for lam in group:
            caption = f"{lam.method} · {lam.recipe} · seed {lam.seed} · {lam.scale}"
            parts.append(_figure(lam.recon.relative_to(run_dir).as_posix(), caption, "recon"))
        parts.append("</div>")
    return parts


def _viz_section(run_dir: Path, lams: list[Lam]) -> list[str]:
    """The `masklam viz` figures of every pretrain stage that has them (stages/pretrain/<key>/viz/viz.json)."""
    parts: list[str] = []
    for lam in lams:
        viz_dir = run_dir / "stages" / "pretrain" / lam.stage / "viz"
        if not lam.stage or not (viz_dir / "viz.json").is_file():
            continue
        summary = json.loads((viz_dir / "viz.json").read_text())
        notes = [summary[k] for k in ("transfer",) if isinstance(summary.get(k), str)]
        if "fsq" in summary:
            notes.append(f"FSQ: {summary['fsq']['used']} of {summary['fsq']['codes']} codes used, perplexity "
                         f"{summary['fsq']['perplexity']:.1f}")
        parts.append(f"<h3>"
                     f"{html.escape(f'{lam.method} · {lam.task} · latent dim {lam.latent_dim} · seed {lam.seed}')}"
                     f"</h3><p>{html.escape('; '.join(notes))}</p><div class='row'>")
        for name in summary.get("figures", {}).values():
            parts.append(_figure((viz_dir / name).relative_to(run_dir).as_posix(), name, "recon"))
        parts.append("</div>")
    if parts:
        parts.insert(0, "<h2>What the latents mean</h2><p>From <code>masklam viz</code>: latents projected to 2-D and "
                        "coloured by the true action, a transition's latent applied by the FDM to another episode's "
                        "frame, FSQ code usage.</p>")
    return parts


def _frames(run_dir: Path, out: Path) -> bool:
    """Example frames with masks from the first dataset experiment.json records (if it can be found)."""
    paths = [p for ps in _experiment(run_dir).get("datasets", {}).values() for p in ps]
    if not paths:
        return False
    stage = _collect_stage(run_dir, paths[0])
    local = stage.parent / Path(paths[0]).name if stage else Path(paths[0])
    return local.is_file() and example_frames(local, out)


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1500px}table{border-collapse:collapse;font-size:90%}"
         "td,th{border:1px solid #ccc;padding:2px 6px}figure{margin:0.5em 0}img{max-width:100%}"
         ".row{display:flex;gap:1em;flex-wrap:wrap}.recon{flex:1;min-width:260px;max-width:32%}"
         "figcaption{font-size:85%}.headline{font-size:130%;font-weight:bold}")


def render_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html and its PNG figures (in RUN_DIR/report/); returns the HTML path."""
    run_dir = Path(run_dir)
    rows = read_results(run_dir / "results.csv")
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    exp = _experiment(run_dir).get("config", {})
    manifest = read_manifest(run_dir)
    lams = row_lams(manifest or [])
    scale = scales(lams)
    top, dim = headline_rows(rows)
    budget = max((r.labels for r in rows if not methods.is_kind(r.method, "normaliser")), default=0)
    dims = sorted({r.latent_dim for r in rows if r.latent_dim > 0})
    parts = [f"<h1>masklam report: {html.escape(run_dir.name)}</h1>"]
    lines = headline(summarize(top))  # as the quickstart prints it: over tasks, each seed's task average first
    if lines:
        parts.append("<p class='headline'>" + "<br>".join(html.escape(line) for line in lines) + "</p>")
    if exp.get("description"):
        parts.append(f"<p>{html.escape(exp['description'])}</p>")
    tasks, seeds = sorted({r.task for r in rows}), sorted({r.seed for r in rows})
    parts.append(f"<p>{len(rows)} result rows in {html.escape(str(run_dir / 'results.csv'))}: tasks "
                 f"{', '.join(tasks)}; seeds {', '.join(map(str, seeds))}. Over tasks: each seed's task average "
                 f"first. {html.escape(NOTE)}.</p>")

    def fig(name: str, caption: str, draw: Callable[[Path], bool]) -> None:
        """Draw report/NAME; show it if there was something to draw."""
        if draw(out / name):
            parts.append(_figure(f"report/{name}", caption))

    parts.append(f"<h2>Every method (latent dim {dim}, mean over label budgets)</h2>")
    parts.append(_table(["task", *HEAD[:2], "scale (pretrain preset, updates, latent dim)", "seeds", *HEAD[2:]],
                        method_table(top, scale)))
    fig("methods.png", "probe NMSE and normalised return ID / OOD, averaged over tasks and label budgets "
        "(mean ± SE over seeds)", lambda p: method_bars(top, p))
    parts.append("<h2>Return vs labelled trajectories</h2>")
    for split in ("id", "ood"):
        fig(f"return_vs_labels_{split}.png", f"normalised return vs labelled trajectories ({split}; latent dim {dim})",
            lambda p, s=split: curve_grid(rows, "labels", "normalized_return",
                                          lambda r: r.split == s and r.latent_dim in (0, dim),
                                          f"normalised return vs labels ({s})", p))
    if len(dims) > 1:
        parts.append("<h2>Latent size</h2>")
        for split in ("id", "ood"):
            fig(f"return_vs_dim_{split}.png", f"normalised return vs latent dim ({split}; {budget} labels)",
                lambda p, s=split: curve_grid(rows, "latent_dim", "normalized_return",
                                              lambda r: r.split == s and r.labels == budget and r.latent_dim > 0,
                                              f"normalised return vs latent dim ({s})", p))
        fig("probe_vs_dim.png", "held-out linear probe NMSE latent -> action vs latent dim",
            lambda p: curve_grid(rows, "latent_dim", "probe_nmse", lambda r: r.split == "id" and r.latent_dim > 0,
                                 "probe NMSE vs latent dim", p))
    if manifest is None:
        parts.append(f"<p>No {MANIFEST} in this run directory (written before manifests): `masklam experiment` again "
                     "writes it, reusing every stage, and the report then shows the LAMs' reconstructions.</p>")
    parts += _recon_section(run_dir, lams)
    parts += _viz_section(run_dir, lams)
    fig("frames.png", "example frames (top) and agent masks (bottom)", lambda p: _frames(run_dir, p))
    parts.append("<h2>Every result, per label budget</h2>")
    parts.append(_table([*HEAD[:2], "scale", "task", "latent dim", "labels", "seeds", *HEAD[2:]],
                        summary_table(rows, scale)))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>masklam report: {html.escape(run_dir.name)}"
            f"</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    write_text(run_dir / "report.html", page, shared=True)  # sweeps over other seeds may share the run directory
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
    hint = " (`masklam experiment` renders the report itself)"
    with output_lock(cfg.run_dir, hint):
        for sweep in sorted(cfg.run_dir.glob(f"sweep-seeds-*{SUFFIX}")):  # a sweep writing the run directory now
            check_free(sweep.with_name(sweep.name[:-len(SUFFIX)]), hint)
        path = render_report(cfg.run_dir)
    print(f"wrote {path}")
    return 0
