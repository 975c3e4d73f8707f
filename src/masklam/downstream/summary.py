"""The one results table: per method, means over seeds and label budgets with standard errors, and the headline.

`summarize` turns result rows (of one task, or several: each seed's values are averaged first) into per-method
figures; `format_table` prints them (the quickstart's terminal and table.txt), `table_cells` gives the same cells
to the HTML report, and `headline` the lines that open both: MaskLAM vs LAPO in probe NMSE, and the share of
the gap to the distractor-free upper bound that MaskLAM closes.

The rule, one for both: each figure is the mean over seeds (`over_seeds`) of each seed's mean over the label
budgets (and tasks) of the rows given, at the largest latent dim (`headline_rows`). ± is the standard error over
seeds; with one seed, a return's is the episodes' standard errors pooled over its rows (`return_sem`), carried to
the normalised and expert-fraction returns by the return's relative error, and a probe NMSE has none.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from masklam import methods
from masklam.downstream.results import Row, over_seeds

HEADLINE = ("masklam", "lapo")
"""the comparison the headline reports: (method, baseline); the upper bound is the baseline's clean twin"""
COLUMNS = (("probe NMSE", "probe_nmse", 3), ("return ID", "return_id", 0), ("of expert", "expert_id", 2),
           ("norm ID", "normalized_id", 2), ("return OOD", "return_ood", 0), ("norm OOD", "normalized_ood", 2))
"""the table's figures: (heading, summary key, decimals)"""
NOTE = ("norm = return / full-data BC's on the same data and videos (bc-full ID and OOD, bc-full-clean for "
        "lapo-clean); of expert = return / the shipped expert's; means over seeds of each seed's mean over label "
        "budgets; ± = standard error over seeds (with one seed: over the episodes)")
"""what the table's figures are"""


def headline_rows(rows: list[Row]) -> tuple[list[Row], int]:
    """The rows the table summarises: those at the largest latent dim (and those without a LAM); -> (rows, dim)."""
    dim = max((r.latent_dim for r in rows if r.latent_dim > 0), default=0)
    return [r for r in rows if r.latent_dim in (0, dim)], dim


def _float(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def summarize(rows: list[Row]) -> dict[str, dict[str, Any]]:
    """Per method: probe NMSE, raw / normalised / expert-fraction return and success per split, each a mean over
    seeds with its standard error (the module's rule), the seeds' values (`KEY_seeds`) and the recipe."""
    per: dict[str, dict[str, list[tuple[int, float | None]]]] = {}
    sems: dict[str, dict[str, list[float]]] = {}
    recipes: dict[str, str] = {}
    for r in rows:
        recipes.setdefault(r.method, r.extra.get("recipe", "-"))
        vals = per.setdefault(r.method, {})
        if r.probe_nmse is not None and r.split == "id":
            vals.setdefault("probe_nmse", []).append((r.seed, r.probe_nmse))
        for key, value in ((f"return_{r.split}", r.ret), (f"normalized_{r.split}", r.normalized_return),
                           (f"expert_{r.split}", _float(r.extra.get("expert_fraction"))),
                           (f"success_{r.split}", r.success)):
            if value is not None:
                vals.setdefault(key, []).append((r.seed, value))
        if _float(r.extra.get("return_sem")) is not None:
            sems.setdefault(r.method, {}).setdefault(r.split, []).append(float(r.extra["return_sem"]))
    summary: dict[str, dict[str, Any]] = {}
    for m, vals in per.items():
        s: dict[str, Any] = {"recipe": recipes[m]}
        for key, pairs in vals.items():
            stats = over_seeds(pairs)
            if not stats.n:
                continue
            s[key] = stats.mean
            s[f"{key}_seeds"] = list(stats.per_seed.values())
            if stats.n > 1:
                s[f"{key}_sem"] = stats.sem
            elif key.startswith("return_"):
                e = np.asarray(sems.get(m, {}).get(key.removeprefix("return_"), []))
                s[f"{key}_sem"] = float(np.sqrt(np.square(e).sum()) / len(e)) if len(e) else math.nan
        for split in ("id", "ood"):  # one seed: the scaled figures carry the return's relative error
            ret, err = s.get(f"return_{split}"), s.get(f"return_{split}_sem")
            for key in (f"normalized_{split}", f"expert_{split}"):
                if key in s and f"{key}_sem" not in s and ret and err is not None:
                    s[f"{key}_sem"] = abs(s[key]) * err / abs(ret)
        summary[m] = s
    return summary


def gap_closed(summary: dict[str, dict[str, Any]], key: str, lower_is_better: bool) -> float:
    """(baseline - method) / (baseline - upper bound) in `key` for HEADLINE (MaskLAM, LAPO, LAPO distractor-free):
    the share of the distractors' damage undone.

    For returns use the raw `return_id`: the three methods are then on one scale (their normalisers differ)."""
    method, baseline = HEADLINE
    try:
        base, ours, clean = (summary[m][key] for m in (baseline, method, methods.upper_bound(baseline)))
    except KeyError:
        return math.nan
    gap = (base - clean) if lower_is_better else (clean - base)
    if not gap > 0:  # no gap to close: the upper bound is not better than the baseline (or a value is missing)
        return math.nan
    return ((base - ours) if lower_is_better else (ours - base)) / gap


def format_gaps(summary: dict[str, dict[str, Any]]) -> str:
    """`gap_closed` in probe NMSE and in raw return (ID), as percentages or why there is none."""
    def pct(x: float) -> str:
        return "n/a (the upper bound is not above LAPO)" if math.isnan(x) else f"{100 * x:.0f}%"

    return (f"{pct(gap_closed(summary, 'probe_nmse', True))} in probe NMSE, "
            f"{pct(gap_closed(summary, 'return_id', False))} in return (ID, raw)")


def headline(summary: dict[str, dict[str, Any]]) -> list[str]:
    """The lines that open the results: HEADLINE's probe NMSE ratio and the gap it closes (none without both)."""
    method, baseline = HEADLINE
    ours, base = summary.get(method, {}), summary.get(baseline, {})
    if "probe_nmse" not in ours or "probe_nmse" not in base or not ours["probe_nmse"] > 0:
        return []
    ratio = base["probe_nmse"] / ours["probe_nmse"]  # > 1: ours lower (better)
    said = f"{ratio:.2f}x lower" if ratio >= 1 else f"{1 / ratio:.2f}x higher"
    return [f"{methods.title(method)} vs {methods.title(baseline)}, held-out probe NMSE: {said}",
            f"gap to the distractor-free upper bound closed by {methods.title(method)}: {format_gaps(summary)}"]


def cell(s: dict[str, Any], key: str, digits: int) -> str:
    """'mean ± standard error', 'mean' without one, '-' without a value."""
    x, e = s.get(key), s.get(f"{key}_sem")
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if e is None or math.isnan(e) else f"{x:.{digits}f} ± {e:.{digits}f}"


def table_cells(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Per method, in the registered order: method, recipe and the COLUMNS' cells."""
    return [[m, summary[m].get("recipe", "-"), *(cell(summary[m], key, nd) for _, key, nd in COLUMNS)]
            for m in methods.ordered(summary)]


def success_line(summary: dict[str, dict[str, Any]]) -> str:
    """The success rates ID / OOD of the methods whose env reports success ('' without any)."""
    won = [m for m in methods.ordered(summary) if "success_id" in summary[m] or "success_ood" in summary[m]]
    return "success rate ID / OOD: " + ", ".join(
        f"{m} {cell(summary[m], 'success_id', 2)} / {cell(summary[m], 'success_ood', 2)}" for m in won) if won else ""


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    """The results table as text (the quickstart's terminal and table.txt)."""
    def line(cells: list[str]) -> str:
        return f"{cells[0]:<14}{cells[1]:<22}" + "".join(f"{c:>{15 if i == 0 else 13}}"
                                                         for i, c in enumerate(cells[2:]))

    head = line(["method", "recipe", *(h for h, _, _ in COLUMNS)])
    lines = [head, "-" * len(head)] + [line(cells) for cells in table_cells(summary)]
    for extra in ([success_line(summary)] if success_line(summary) else []) + ["\n".join(headline(summary))]:
        if extra:
            lines += ["", extra]
    lines.append(NOTE)
    return "\n".join(lines)
