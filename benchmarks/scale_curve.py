"""At which scale does the paper's method show its effect? LAPO (authors') vs MaskLAM (authors') vs MaskLAM
(mask-target, ours) on the quickstart's data, at several update counts and data sizes.

    .venv/bin/python benchmarks/scale_curve.py --out /work/runs/scale --updates 1000 4000 8000 --seeds 0 1 \
        --variants lapo-authors masklam-authors masklam-mask-target [--episodes 80] [--task cheetah-run] \
        [--commit docs/scale-curve]

Each point (variant, updates, trajectories, seed) is the quickstart's pipeline for one method (`masklam experiment`
stages: collect, pretrain, probe, latent BC, decoders for 4 and 16 labelled trajectories, online evaluation ID and
OOD, 6 episodes each), cached under OUT, so an interrupted curve resumes where it stopped. Everything runs on one
thread (torch threads 1, one evaluation worker) so that the curve can run beside other work on a 2-core machine;
`--threads 2` runs one point at a time faster, on both cores (a LAM of its own: the thread count is in its key).
After every finished point the rows so far are written to OUT/curve.csv and, with --commit DIR, copied with the
figure into DIR of this repository and committed (only DIR's files), so a session that ends loses no point.
"""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from masklam.downstream.bc import AUTHORS_LATENT_BC
from masklam.downstream.decode import AUTHORS_DECODER
from masklam.downstream.results import merge_rows
from masklam.errors import MasklamError
from masklam.files import read_csv, read_json, write_csv
from masklam.locks import queued_lock

# A variant: the method, its pretraining options on top of the quickstart's, and its downstream options.
AUTHORS_DOWNSTREAM = {"bc_latent": AUTHORS_LATENT_BC, "decode": AUTHORS_DECODER}
VARIANTS: dict[str, dict[str, Any]] = {
    "lapo-authors": {"method": "lapo", "pretrain": {"recipe": "authors"}, **AUTHORS_DOWNSTREAM},
    "masklam-authors": {"method": "masklam", "pretrain": {"recipe": "authors"}, **AUTHORS_DOWNSTREAM},
    "masklam-mask-target": {"method": "masklam", "pretrain": {"mask_target": True}},
    # the authors' LAMs under the quickstart's downstream (latent BC on standardised targets, Adam; our decoder):
    # separates what their pretraining does from what their latent BC and decoder do to the return
    "lapo-authors-lam": {"method": "lapo", "pretrain": {"recipe": "authors"}},
    "masklam-authors-lam": {"method": "masklam", "pretrain": {"recipe": "authors"}},
    # their MaskLAM's LAM with one half of their downstream each (which half costs its return at 1000 updates)
    "masklam-authors-bc": {"method": "masklam", "pretrain": {"recipe": "authors"}, "bc_latent": AUTHORS_LATENT_BC},
    "masklam-authors-decoder": {"method": "masklam", "pretrain": {"recipe": "authors"}, "decode": AUTHORS_DECODER},
    # their latent BC with one of its choices undone (our decoder): targets standardised; a hidden layer of 256
    "masklam-authors-bc-std": {"method": "masklam", "pretrain": {"recipe": "authors"},
                               "bc_latent": {**AUTHORS_LATENT_BC, "standardize": True}},
    "masklam-authors-bc-hidden": {"method": "masklam", "pretrain": {"recipe": "authors"},
                                  "bc_latent": {**AUTHORS_LATENT_BC, "hidden": 256}},
    "lapo": {"method": "lapo", "pretrain": {}},
    "lapo-clean": {"method": "lapo-clean", "pretrain": {}},
}
DOWNSTREAM_ABLATIONS = ("masklam-authors-bc", "masklam-authors-decoder", "masklam-authors-bc-std",
                        "masklam-authors-bc-hidden")  # in the table, not in the figure
COLUMNS = ["task", "variant", "updates", "trajectories", "seed", "probe_nmse", "return_id", "return_id_sem",
           "return_ood", "return_ood_sem", "minutes", "precision", "threads"]


def point_config(out: Path, task: str, variant: str, updates: int, episodes: int, seed: int, threads: int = 1) -> Any:
    """The ExperimentConfig of one point: the quickstart's, for one method, its LAM on `threads` torch threads
    (in the LAM's stage key, as its numbers depend on it: a point run with another count trains a LAM of its own)."""
    from masklam.quickstart import QuickstartConfig, experiment_config

    spec = VARIANTS[variant]
    exp = experiment_config(QuickstartConfig(out=out, task=task, seeds=(seed,), progress=False, device="cpu"))
    collect = {**exp.collect, "episodes": episodes, "workers": 1}
    pretrain = {k: v for k, v in exp.pretrain.items() if k != "mask_target"}  # the quickstart's recipe is ours
    exp = dataclasses.replace(
        # data={}: each task's data tables come from `collect` for this method alone (experiment_config.collected_data:
        # the distractor-free twin only for a method that trains on it)
        exp, methods=[spec["method"]], data={}, collect=collect,
        pretrain={**pretrain, **spec["pretrain"], "updates": updates, "threads": threads},
        bc_latent={**exp.bc_latent, **spec.get("bc_latent", {})}, decode={**exp.decode, **spec.get("decode", {})},
        eval={**exp.eval, "workers": 1})
    return exp


def lam_cached(out: Path, task: str, variant: str, updates: int, episodes: int, seed: int, threads: int = 1) -> bool:
    """Whether the point's LAM, on `threads` torch threads, is done under `out` (a dry run of its sweep: runs and
    writes nothing)."""
    from masklam.downstream.experiment import sweep_status

    plan = sweep_status(point_config(out, task, variant, updates, episodes, seed, threads))
    lams = [s for s in plan.stages if s.kind == "pretrain"]
    return bool(lams) and all(s.done for s in lams)


def point(out: Path, task: str, variant: str, updates: int, episodes: int, seed: int,
          threads: int = 1) -> dict[str, Any]:
    """Run (or reuse) one point of the curve -> one row of curve.csv (returns averaged over label budgets)."""
    from masklam.downstream.experiment import run_experiment

    spec = VARIANTS[variant]
    exp = point_config(out, task, variant, updates, episodes, seed, threads)
    t0 = time.time()
    rows = [r for r in run_experiment(exp, render=False) if r["method"] == spec["method"]]

    def mean(split: str) -> tuple[float, float]:
        vals = [float(r["return"]) for r in rows if r["split"] == split]
        sems = [float(r["return_sem"]) for r in rows if r["split"] == split]
        return (float(np.mean(vals)), float(np.sqrt(np.square(sems).sum()) / len(sems))) if vals else (np.nan, np.nan)

    rid, rid_se = mean("id")
    rood, rood_se = mean("ood")
    return {"task": task, "variant": variant, "updates": updates, "trajectories": episodes, "seed": seed,
            "probe_nmse": float(rows[0]["probe_nmse"]), "return_id": rid, "return_id_sem": rid_se,
            "return_ood": rood, "return_ood_sem": rood_se, "minutes": (time.time() - t0) / 60,
            **lam_run(out, rows[0]["lam_stage"])}


def lam_run(out: Path, lam_stage: str) -> dict[str, Any]:
    """How a point's LAM ran, from its metrics.json: precision (bf16 autocast or fp32, as the CPU allowed) and torch
    threads. Both change its numbers' rounding (the thread count is in its stage key), not the science
    (docs/quickstart-science.md, item 13)."""
    m = read_json(out / "stages" / "pretrain" / lam_stage / "metrics.json", "LAM metrics")
    return {"precision": m.get("precision", ""), "threads": m.get("torch_threads", "")}


def read_rows(path: Path, missing_ok: bool = True) -> list[dict[str, Any]]:
    """A curve.csv's points ([] without the file, with `missing_ok`); rows written before the task column are
    cheetah-run's."""
    return [{"task": "cheetah-run", **{k: v for k, v in r.items() if v is not None}}
            for r in read_csv(path, "curve", missing_ok=missing_ok)]


def point_id(r: dict[str, Any]) -> tuple[str, str, int, int, int]:
    """What identifies a point: (task, variant, updates, trajectories, seed)."""
    return r["task"], r["variant"], int(r["updates"]), int(r["trajectories"]), int(r["seed"])


def to_commit(committed: list[dict[str, Any]], local: list[dict[str, Any]],
              fresh: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The committed points with the one this command just finished (`fresh`, which wins) and the run directory's
    (`local`) points the committed file lacks (run without --commit, or stopped before it). Any other local copy of
    a committed point never replaces it: another command may have redone it since (curves run in parallel)."""
    known = {point_id(r) for r in committed}
    return merge_rows(committed, [r for r in local if point_id(r) not in known] + fresh, point_id)


def commit_point(commit: Path, local: list[dict[str, Any]], row: dict[str, Any], message: str) -> None:
    """Merge the point just finished into COMMIT/curve.csv (and its figure) and git-commit those two files; two
    curves committing at once take turns (locks.queued_lock), so neither point is lost."""
    commit.mkdir(parents=True, exist_ok=True)
    with queued_lock(commit / "curve.csv"):
        merged = to_commit(read_rows(commit / "curve.csv"), local, [row])
        write_rows(commit / "curve.csv", merged)
        figure(merged, commit / "curve.png")
        subprocess.run(["git", "add", "--", "curve.csv", "curve.png"], cwd=commit, check=False)
        subprocess.run(["git", "commit", "-q", "-m", message, "--", "curve.csv", "curve.png"], cwd=commit, check=False)


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    write_csv(path, [{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows], COLUMNS,
              shared=True)


def _mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and standard error over seeds (0 for one seed)."""
    return float(np.mean(xs)), float(np.std(xs, ddof=1) / np.sqrt(len(xs))) if len(xs) > 1 else 0.0


def _color(variant: str) -> str:
    """A variant's colour in the figure: the -lam variants share their base variant's (dashed)."""
    return f"C{list(VARIANTS).index(variant.removesuffix('-lam'))}"


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    """Probe NMSE and ID return against updates (cheetah-run, 80 trajectories), one line per variant, and the probe
    NMSE of the other settings (other tasks, other data sizes; cheetah-run's 4000/80 beside its 4000/320) as bars;
    mean ± s.e. over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def main_curve(r: dict[str, Any]) -> bool:
        return r["task"] == "cheetah-run" and int(r["trajectories"]) == 80

    others = sorted({(r["task"], int(r["updates"]), int(r["trajectories"])) for r in rows if not main_curve(r)})
    if any(task == "cheetah-run" for task, _, _ in others):  # a data-size point: its 80-trajectory reference too
        others = sorted(set(others) | {("cheetah-run", u, 80) for task, u, _ in others if task == "cheetah-run"})
    fig, axes = plt.subplots(1, 3 if others else 2, figsize=(15 if others else 10, 4))
    for variant in (v for v in VARIANTS if v not in DOWNSTREAM_ABLATIONS):
        for ax, key in zip(axes, ("probe_nmse", "return_id")):
            if key == "probe_nmse" and variant.endswith("-lam"):  # the same LAMs' probe as their base variant
                continue
            pts: dict[int, list[float]] = {}
            for r in rows:
                if r["variant"] == variant and main_curve(r):
                    pts.setdefault(int(r["updates"]), []).append(float(r[key]))
            if not pts:
                continue
            xs = sorted(pts)
            m, e = zip(*(_mean_se(pts[x]) for x in xs))
            ax.errorbar(xs, m, yerr=e, marker="o", capsize=3, label=variant, color=_color(variant),
                        linestyle="--" if variant.endswith("-lam") else "-")
    axes[0].set(xscale="log", xlabel="updates (batch 64)", ylabel="held-out probe NMSE (lower is better)")
    axes[1].set(xscale="log", xlabel="updates (batch 64)", ylabel="return ID, raw (6 episodes x 2 label budgets)")
    measured = sorted({int(r["updates"]) for r in rows if main_curve(r)})
    for ax in axes[:2]:  # the measured update counts as plain numbers, not log-axis powers of ten
        ax.set_xticks(measured, [str(u) for u in measured])
        ax.minorticks_off()
    if axes[1].get_legend_handles_labels()[0]:  # a run directory may hold no point of the main curve
        axes[1].legend(fontsize=8)
    if others:
        bars = ["lapo-authors", "masklam-authors", "masklam-mask-target"]
        width = 0.8 / len(bars)
        for i, variant in enumerate(bars):
            labelled = False  # the first bar drawn of each variant carries its label (not only at setting 0)
            for j, setting in enumerate(others):
                vals = [float(r["probe_nmse"]) for r in rows if r["variant"] == variant
                        and (r["task"], int(r["updates"]), int(r["trajectories"])) == setting]
                if vals:
                    m, e = _mean_se(vals)
                    axes[2].bar(j + (i - (len(bars) - 1) / 2) * width, m, width, yerr=e, capsize=2,
                                color=_color(variant), label=None if labelled else variant)
                    labelled = True
        axes[2].set_xticks(range(len(others)), [f"{t}\n{u} upd, {n} traj" for t, u, n in others], fontsize=7)
        axes[2].set(ylabel="held-out probe NMSE", title="other tasks and data sizes")
        if axes[2].get_legend_handles_labels()[0]:
            axes[2].legend(fontsize=8)
    fig.suptitle("scale curve: cheetah-run, the quickstart's data (80 x 125 frames) and settings; mean ± s.e. over "
                 "seeds (-lam: the authors' LAMs under our downstream)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The curve as a markdown table: per task, variant, updates and trajectories, mean ± s.e. over seeds."""
    groups: dict[tuple[str, str, int, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["variant"], int(r["updates"]), int(r["trajectories"])), []).append(r)

    def cell(rs: list[dict[str, Any]], key: str, nd: int) -> str:
        m, e = _mean_se([float(r[key]) for r in rs])
        return f"{m:.{nd}f} ± {e:.{nd}f}" if len(rs) > 1 else f"{m:.{nd}f}"

    def run(rs: list[dict[str, Any]]) -> str:  # how the LAMs ran; "-" where curve.csv did not record it
        ran = [(r.get("precision") or "", str(r.get("threads") or "")) for r in rs]
        return ", ".join(sorted({f"{p} x{t}" if p and t else "-" for p, t in ran}))

    order = list(VARIANTS)
    lines = ["| task | variant | updates | trajectories | seeds | held-out probe NMSE | return ID (raw) | "
             "return OOD (raw) | LAM run |", "|---|---|---|---|---|---|---|---|---|"]
    for (task, variant, updates, trajs), rs in sorted(groups.items(), key=lambda kv: (
            kv[0][0] != "cheetah-run", kv[0][0], kv[0][2], kv[0][3], order.index(kv[0][1]))):
        seeds = ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: int(r["seed"])))
        lines.append(f"| {task} | {variant} | {updates} | {trajs} | {seeds} | {cell(rs, 'probe_nmse', 3)} | "
                     f"{cell(rs, 'return_id', 0)} | {cell(rs, 'return_ood', 0)} | {run(rs)} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, nargs="+", metavar="CSV",
                    help="print the markdown table of these curve.csv files (and write their joint figure next to "
                         "the first), then exit")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--task", default="cheetah-run", help="a dm_control task with a shipped expert")
    ap.add_argument("--updates", type=int, nargs="+", default=[1000, 4000, 8000])
    ap.add_argument("--episodes", type=int, nargs="+", default=[80], help="collected trajectories (125 frames)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=["masklam-mask-target", "lapo-authors", "masklam-authors"],
                    choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: one curve per core; 2: one point at a "
                    "time on 2 cores, for the points a one-thread run cannot finish within a session)")
    ap.add_argument("--commit", type=Path, help="copy curve.csv and curve.png here and git-commit them per point")
    ap.add_argument("--redo", action="store_true",
                    help="run points already in curve.csv again and replace their rows (after a change to a variant's "
                         "downstream: the LAM is found cached, and its probe NMSE must come out the same)")
    args = ap.parse_args()
    if args.table:
        rows: list[dict[str, Any]] = []
        for path in args.table:  # a point in several files counts once (the later file's row)
            rows = merge_rows(rows, read_rows(path, missing_ok=False), point_id)
        figure(rows, args.table[0].parent / "curve.png")
        print(markdown(rows))
        return 0
    if args.out is None:
        ap.error("--out is required (or --table CSV ...)")

    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "curve.csv"
    rows = read_rows(csv_path)
    # done: this run directory's points and, with --commit, the committed ones (another curve may have run them)
    committed = read_rows(args.commit / "curve.csv") if args.commit else []
    done = {point_id(r): r for r in merge_rows(committed, rows, point_id)}
    for updates in args.updates:
        for episodes in args.episodes:
            for seed in args.seeds:
                for variant in args.variants:
                    old = done.get(point_id(dict(task=args.task, variant=variant, updates=updates,
                                                 trajectories=episodes, seed=seed)))
                    if old is not None and not args.redo:
                        continue
                    where = (args.out, args.task, variant, updates, episodes, seed)
                    if old is not None and not lam_cached(*where, int(old.get("threads") or args.threads)):
                        raise SystemExit(f"--redo: no cached LAM for {point_id(old)} under {args.out}; give the --out "
                                         "that holds it (a redo re-runs the downstream only)")
                    row = point(*where, threads=args.threads)
                    if old is not None:  # a redo: the same LAM (so its probe), its first run's time
                        if abs(float(old["probe_nmse"]) - row["probe_nmse"]) >= 5e-4:
                            raise SystemExit(f"--redo of {point_id(old)}: probe {row['probe_nmse']:.4f}, was "
                                             f"{old['probe_nmse']}: not the same LAM; nothing committed")
                        row["minutes"] = float(old["minutes"])
                    rows = merge_rows(rows, [row], point_id)
                    write_rows(csv_path, rows)
                    figure(rows, args.out / "curve.png")
                    print(f"{args.task} {variant:<22} updates {updates:>5} trajectories {episodes:>4} seed {seed}: "
                          f"probe {row['probe_nmse']:.3f} return ID {row['return_id']:.0f} OOD {row['return_ood']:.0f} "
                          f"({row['minutes']:.1f} min)", flush=True)
                    if args.commit:
                        commit_point(args.commit.resolve(), rows, row, f"scale curve: {args.task} {variant} "
                                     f"{updates} updates {episodes} trajectories seed {seed}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except MasklamError as e:  # a corrupt curve.csv, a config the pipeline refuses: one line
        raise SystemExit(f"scale_curve: {e}") from None
