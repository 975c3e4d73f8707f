"""Distracting Meta-World at the paper's 128x128: LAPO vs MaskLAM (mask-target) vs the distractor-free upper bound
(lapo-clean) on mw-push, mw-reach and mw-door-open, 3 seeds; held-out probe NMSE and success rate.

    .venv/bin/python benchmarks/mw128.py --out /work/runs/mw128 [--tasks mw-push] [--seeds 0 1 2] \
        [--train-workers 1] [--commit docs/mw128]
    .venv/bin/python benchmarks/mw128.py --table docs/mw128/results.csv

The sweep is `masklam experiment mw128-cpu`, run one chunk (task, seed) at a time: `masklam experiment mw128-cpu
--tasks T --seeds S --out OUT` (every stage cached under OUT). A chunk takes ~2.5 hours on 2 cores without native
bf16 (measured 2026-12-06), a whole task ~7.5, longer than a session, and run directories need not outlive a
session: after every finished chunk its rows are merged into OUT/mw128.csv (OUT/results.csv holds the last chunk's,
as `masklam experiment` writes it) and, with --commit DIR, into DIR/results.csv with the chunks' times (chunks.csv:
minutes summed over every process that ran a part of the chunk, kept in OUT/chunk-minutes.json) and the table's
figure (mw128.png), and committed (those three files only). With --commit, the chunks already in
DIR/results.csv are skipped. The merged files' normalized_return is recomputed over every seed merged, as the whole
sweep's results.csv has it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from masklam.errors import MasklamError, MasklamRuntimeError
from masklam.files import read_csv, write_csv


CONFIG = "mw128-cpu"
METHODS = ("lapo", "masklam", "lapo-clean")  # in the table and figure: the LAMs (bc-full rows normalise returns)
CHUNK_COLUMNS = ["task", "seed", "minutes"]


def row_id(r: dict[str, Any]) -> tuple[str, str, int, int, int, str]:
    """What identifies a results.csv row: (task, method, latent_dim, labels, seed, split)."""
    return r["task"], r["method"], int(r["latent_dim"]), int(r["labels"]), int(r["seed"]), r["split"]


def chunk(out: Path, task: str, seed: int, train_workers: int | None) -> list[dict[str, Any]]:
    """Run (or reuse) one task and seed of the sweep -> its results.csv rows."""
    from masklam.downstream.experiment import load_config, run_experiment

    cfg = load_config(CONFIG, out=out, tasks=[task], seeds=[seed])
    workers = {} if train_workers is None else {"train_workers": train_workers}
    cfg = dataclasses.replace(cfg, progress=False, **workers)
    return [{k: ("" if v is None else v) for k, v in r.items()} for r in run_experiment(cfg, render=False)]


def _value(cell: Any) -> float | None:
    """A csv cell as a number (None where empty: a method without latents, an env that reports no success)."""
    return None if cell in ("", None) else float(cell)


def renormalized(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The merged chunks' normalized_return as the whole sweep computes it: over the full-data BC's mean return over
    all the seeds merged (each chunk's run normalised by its own seed's only)."""
    from masklam import methods
    from masklam.downstream.results import normalize

    raw = [{**r, "return": float(r["return"]), "variant": methods.get(r["method"]).variant} for r in rows]
    return normalize(raw)


def summary(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (task, method): the seeds, and SeedStats (masklam.downstream.results.over_seeds, each seed's values
    averaged first: success over label budgets) of probe NMSE and success ID and OOD (none: lapo-clean is
    evaluated ID only)."""
    from masklam.downstream.results import over_seeds

    out: dict[tuple[str, str], dict[str, Any]] = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        for method in METHODS:
            rs = [r for r in rows if r["task"] == task and r["method"] == method]
            if not rs:
                continue
            out[task, method] = {
                "seeds": sorted({int(r["seed"]) for r in rs}),
                "probe_nmse": over_seeds((int(r["seed"]), _value(r["probe_nmse"])) for r in rs),
                **{f"success_{split}": over_seeds((int(r["seed"]), _value(r.get("success"))) for r in rs
                                                  if r["split"] == split) for split in ("id", "ood")}}
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table: per task and method, probe NMSE and success rate, mean ± s.e. over seeds ('-': not measured),
    and LAPO's probe NMSE over the method's."""
    cells = summary(rows)
    lines = ["| task | method | seeds | held-out probe NMSE | LAPO / method | success ID | success OOD |",
             "|---|---|---|---|---|---|---|"]
    for (task, method), c in cells.items():
        lapo = cells.get((task, "lapo"))
        ratio = f"{lapo['probe_nmse'].mean / c['probe_nmse'].mean:.2f}x" if lapo and c["probe_nmse"].n else "-"
        lines.append(f"| {task} | {method} | {','.join(map(str, c['seeds']))} | {c['probe_nmse'].format(3) or '-'} | "
                     f"{ratio} | {c['success_id'].format(2) or '-'} | {c['success_ood'].format(2) or '-'} |")
    return "\n".join(lines)


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    """Probe NMSE and success ID per task, one bar per method, mean ± s.e. over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from masklam import methods

    cells = summary(rows)
    tasks = list(dict.fromkeys(t for t, _ in cells))
    recipes = {r["method"]: r.get("recipe") for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(METHODS)
    for i, method in enumerate(METHODS):
        for ax, key in zip(axes, ("probe_nmse", "success_id")):
            xs = [j for j, t in enumerate(tasks) if (t, method) in cells and cells[t, method][key].n]
            if xs:
                m, e = zip(*((cells[tasks[j], method][key].mean, cells[tasks[j], method][key].sem) for j in xs))
                recipe = recipes.get(method)  # labelled by method and recipe, in the report's colours
                ax.bar([j + (i - (len(METHODS) - 1) / 2) * width for j in xs], m, width, yerr=e, capsize=2,
                       color=methods.get(method).color,
                       label=methods.get(method).title + (f" [{recipe}]" if recipe not in (None, "", "-") else ""))
    for ax, label in zip(axes, ("held-out probe NMSE (lower is better)", "success rate ID (16 labelled traj.)")):
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set(ylabel=label)
    axes[0].legend(fontsize=8)
    fig.suptitle("Distracting Meta-World at 128x128 (mw128-cpu): mean ± s.e. over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def commit_chunk(commit: Path, rows: list[dict[str, Any]], task: str, seed: int, minutes: float) -> None:
    """Merge a finished chunk into COMMIT's files and git-commit them; runs committing into one COMMIT at once take
    turns (locks.queued_lock), so no chunk is lost."""
    from masklam.downstream.results import merge_rows, write_results
    from masklam.locks import queued_lock

    commit.mkdir(parents=True, exist_ok=True)
    with queued_lock(commit / "results.csv"):
        merged = renormalized(merge_rows(read_csv(commit / "results.csv", missing_ok=True), rows, row_id))
        write_results(commit / "results.csv", merged)
        chunk_row = dict(task=task, seed=seed, minutes=f"{minutes:.1f}")
        chunks = merge_rows(read_csv(commit / "chunks.csv", missing_ok=True), [chunk_row],
                            lambda r: (r["task"], int(r["seed"])))
        write_csv(commit / "chunks.csv", chunks, CHUNK_COLUMNS)
        figure(merged, commit / "mw128.png")
        files = ["results.csv", "chunks.csv", "mw128.png"]  # these only: never other work in DIR
        subprocess.run(["git", "add", *files], cwd=commit, check=False)
        subprocess.run(["git", "commit", "-q", "-m", f"mw128: {task} seed {seed} ({minutes:.0f} min)", "--", *files],
                       cwd=commit, check=False)


@contextlib.contextmanager
def timed(out: Path, task: str, seed: int) -> Iterator[Callable[[], float]]:
    """Time a chunk across the processes that run it: each adds its minutes to OUT/chunk-minutes.json when it ends,
    finished or interrupted (a chunk is resumed in later sessions); yields a function -> the chunk's total so far."""
    from masklam.files import read_json, write_json

    path, key, t0 = out / "chunk-minutes.json", f"{task} seed {seed}", time.time()
    spent = read_json(path) if path.is_file() else {}
    try:
        yield lambda: spent[key]
    finally:
        spent[key] = spent.get(key, 0.0) + (time.time() - t0) / 60
        write_json(path, spent)


def main() -> int:
    try:
        return run(sys.argv[1:])
    except KeyboardInterrupt:
        print("mw128: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except MasklamError as e:  # a missing or corrupt --table, a config the sweep refuses
        print(f"mw128: {e}", file=sys.stderr)
        return 1 if isinstance(e, MasklamRuntimeError) else 2


def run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, metavar="CSV", help="print this results.csv's table (and write its figure "
                    "next to it), then exit")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--tasks", nargs="+", help="the config's tasks by default")
    ap.add_argument("--seeds", type=int, nargs="+", help="the config's seeds by default")
    ap.add_argument("--train-workers", type=int, help="LAMs trained at once (the config's 3 by default; 1 beside "
                    "another one-thread job on 2 cores)")
    ap.add_argument("--commit", type=Path, help="merge each chunk's rows into DIR/results.csv and git-commit DIR")
    args = ap.parse_args(argv)
    if args.table:
        from masklam.downstream.results import read_results

        read_results(args.table)  # one line for a missing or unreadable file, or one without results.csv's columns
        rows = read_csv(args.table)
        figure(rows, args.table.parent / "mw128.png")
        print(markdown(rows))
        return 0
    if args.out is None:
        ap.error("--out is required (or --table CSV)")

    from masklam.downstream.experiment import load_config
    from masklam.downstream.results import merge_rows, write_results

    cfg = load_config(CONFIG)
    tasks, seeds = args.tasks or cfg.tasks, args.seeds or cfg.seeds
    unknown = [t for t in tasks if t not in cfg.tasks]
    if unknown:
        ap.error(f"{unknown[0]!r} is not one of {CONFIG}'s tasks: {', '.join(cfg.tasks)}")
    if args.train_workers is not None and args.train_workers < 1:
        ap.error(f"--train-workers must be >= 1, got {args.train_workers}")
    commit = args.commit.resolve() if args.commit else None
    done = {(r["task"], int(r["seed"])) for r in read_csv(commit / "results.csv", missing_ok=True)} if commit else set()
    for task in tasks:  # task by task: each task's data are collected once per run directory
        for seed in seeds:
            if (task, seed) in done:
                continue
            with timed(args.out, task, seed) as spent:
                rows = chunk(args.out, task, seed, args.train_workers)
            minutes = spent()
            local = renormalized(merge_rows(read_csv(args.out / "mw128.csv", missing_ok=True), rows, row_id))
            write_results(args.out / "mw128.csv", local)
            lam = {r["method"]: r for r in rows if r["method"] in METHODS and r["split"] == "id"}
            print(f"{task} seed {seed}: " + ", ".join(f"{m} probe {float(r['probe_nmse']):.3f} success "
                                                       f"{r['success']}" for m, r in lam.items())
                  + f" ({minutes:.0f} min)", flush=True)
            if commit:
                commit_chunk(commit, rows, task, seed, minutes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
