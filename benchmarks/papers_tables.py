"""Markdown tables of an experiment's results.csv, per task and averaged over tasks (docs/results.md).

    .venv/bin/python benchmarks/papers_tables.py RUN_DIR [--labels N]

One row per method: its recipe, held-out probe NMSE, normalised return ID and OOD and the raw ID return,
each a mean over seeds ± the standard error over seeds (masklam.downstream.results.over_seeds: values of one
seed, e.g. over tasks, are averaged first), then the per-seed probe NMSE. The averaged table weighs every task
equally. Normalised return = return / full-data BC's on the same data and split (bc-full; bc-full-clean for
lapo-clean), so the normalisers themselves read 1.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from masklam import methods
from masklam.downstream.results import Row, over_seeds, read_results


def _cell(pairs: list[tuple[int, float | None]], digits: int) -> str:
    return over_seeds(pairs).format(digits) or "-"


def table(rows: list[Row], title: str) -> str:
    """One markdown table over `rows` (one task, or every task for the average)."""
    lines = [f"**{title}**", "",
             "| method | recipe | probe NMSE | norm. return ID | norm. return OOD | return ID (raw) | probe per seed |",
             "|---|---|---|---|---|---|---|"]
    for m in methods.ordered(r.method for r in rows):
        mine = [r for r in rows if r.method == m]
        idr, ood = [r for r in mine if r.split == "id"], [r for r in mine if r.split == "ood"]
        probe = over_seeds((r.seed, r.probe_nmse) for r in idr)
        per_seed = " / ".join(f"{v:.3f}" for _, v in sorted(probe.per_seed.items())) or "-"
        lines.append(f"| {methods.title(m)} | {mine[0].extra.get('recipe', '-')} "
                     f"| {_cell([(r.seed, r.probe_nmse) for r in idr], 3)} "
                     f"| {_cell([(r.seed, r.normalized_return) for r in idr], 2)} "
                     f"| {_cell([(r.seed, r.normalized_return) for r in ood], 2)} "
                     f"| {_cell([(r.seed, r.ret) for r in idr], 0)} | {per_seed} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="experiment run directory (holds results.csv)")
    ap.add_argument("--labels", type=int, default=None, help="only this label budget (default: all, averaged)")
    args = ap.parse_args()
    rows = read_results(args.run / "results.csv")
    keep = [r for r in rows if args.labels is None or r.labels == args.labels or r.method.startswith("bc-full")]
    tasks = sorted({r.task for r in keep})
    seeds = sorted({r.seed for r in keep})
    print(f"{args.run}: tasks {', '.join(tasks)}; seeds {seeds}; ± = standard error over seeds\n")
    for task in tasks:
        print(table([r for r in keep if r.task == task], task) + "\n")
    if len(tasks) > 1:
        print(table(keep, f"average over {len(tasks)} tasks") + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
