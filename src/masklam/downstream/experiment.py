"""`masklam experiment CONFIG`: methods x latent dims x label budgets x seeds x tasks, every stage cached.

CONFIG is a file or the name of a shipped config (`masklam experiment --list`: src/masklam/configs/*.toml).
`masklam experiment --status CONFIG [--out DIR]` prints which stages are done and which pending, with an
estimate of the time left, from a dry run of the sweep (masklam.downstream.plan) that runs and writes nothing.

Stages (collect, pretrain, bc, decode, evaluate; masklam.downstream.stages) are cached under
`OUT/stages/` (masklam.downstream.cache). The methods and the stages each runs: masklam.downstream.sweep.

Writes `OUT/results.csv` (schema and normalisation: masklam.downstream.results), `OUT/manifest.json` (each
row's stage directories) and `OUT/experiment.json`, then renders the report. Every table of the config is
checked against its stage's config fields when the config is loaded (masklam.downstream.experiment_config), so
a typo fails at once, before any stage runs. A config, e.g. `sweep.toml`:

    out = "runs/sweep"
    tasks = ["cheetah-run"]
    methods = ["lapo", "masklam", "bc", "idm"]
    latent_dims = [64, 128]
    labels = [2, 8, 32]
    seeds = [0, 1, 2]
    [data.cheetah-run]
    collect = { episodes = 40, steps = 250, policy = "random", action_repeat = 4 }
    [pretrain]              # PretrainConfig fields
    preset = "cpu-small"
    [bc]                    # BCConfig fields
    updates = 2000
    [eval]                  # EvalOptions fields
    episodes = 25
    workers = 2
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from masklam.args import parse
from masklam.downstream.cache import stage_context
from masklam.downstream.experiment_config import (CONFIG_DIR, ExperimentConfig, config_path, describe,
                                                  collections, describe_config, load_config, resolve_config,
                                                  shipped_configs)
from masklam.downstream.plan import StagePlan, format_plan, plan_stages
from masklam.downstream.results import normalize, write_results
from masklam.downstream.stages import collect_stage
from masklam.downstream.sweep import Sweep, write_manifest
from masklam.devices import resolve_device
from masklam.errors import MasklamError
from masklam.files import read_json, write_json
from masklam.resources import ensure_dir, file_in_the_way
from masklam.locks import output_lock

__all__ = ["CONFIG_DIR", "ExperimentConfig", "config_path", "describe_config", "load_config", "resolve_config",
           "run_experiment", "shipped_configs", "sweep_status", "main"]  # the config's names, re-exported


def _datasets(cfg: ExperimentConfig) -> dict[str, dict[str, list[str]]]:
    """Per task, the 'train' (distracted) and 'clean' file lists, collecting where asked."""
    from masklam.data.formats import data_exists

    out: dict[str, dict[str, list[str]]] = {task: {} for task in cfg.tasks}
    for task in cfg.tasks:
        for variant in ("train", "clean"):
            given = cfg.data[task].get(variant)
            if given is not None:
                paths = given if isinstance(given, list) else [given]
                missing = [p for p in paths if not data_exists(p)]
                if missing:
                    raise MasklamError(f"no such file: {missing[0]}")
                out[task][variant] = [str(p) for p in paths]
    for task, variant, table in collections(cfg):
        with stage_context(f"{task} {variant} data"):
            out[task][variant] = collect_stage(cfg.out, task, table, cfg.progress)
    return out


def run_experiment(cfg: ExperimentConfig, render: bool = True, checked: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) the whole sweep; writes results.csv and returns its rows as dicts. One sweep of a set of
    seeds per run directory at a time (masklam.locks); sweeps over other seeds may share the directory and run
    side by side, the stages they share each locked by its own writer. `checked`: check_collections already ran."""
    if not checked:
        check_collections(cfg)  # a misspelled task or preset: one line, before the run directory is made
    ensure_dir(cfg.out)
    seeds = "-".join(str(s) for s in sorted(cfg.seeds))  # --seeds 1 0 is the sweep --seeds 0 1 is
    with output_lock(cfg.out / f"sweep-seeds-{seeds}", ", or use another --out (a sweep over other seeds may share "
                                                        "it)"):
        return _run_locked(cfg, render)


def check_collections(cfg: ExperimentConfig) -> None:
    """Every collection the sweep will run, checked (data.collect.check_collection: a misspelled task in --tasks,
    no expert, a bad distractor preset), as one line before the first one renders anything."""
    from masklam.data.collect import CollectConfig, check_collection

    for task, _, table in collections(cfg):
        check_collection(CollectConfig(**{**table, "task": task, "out": cfg.out / "unused.h5", "progress": False}))


def _run_locked(cfg: ExperimentConfig, render: bool) -> list[dict[str, Any]]:
    datasets = _datasets(cfg)
    write_json(cfg.out / "experiment.json", {"config": dataclasses.asdict(cfg),
                                             "datasets": {t: d["train"] for t, d in datasets.items()},
                                             "clean_datasets": {t: d["clean"] for t, d in datasets.items()
                                                                if "clean" in d}}, indent=1, shared=True)
    raw = Sweep(cfg, datasets).run()
    write_manifest(cfg.out, raw)
    rows = normalize(raw)
    write_results(cfg.out / "results.csv", rows)
    if render:
        from masklam.downstream.report import render_report

        print(f"wrote {cfg.out / 'results.csv'} and {render_report(cfg.out)}")
    return rows


# --- status of a sweep: a dry run ----------------------------------------------------------------------
def sweep_status(cfg: ExperimentConfig, checked: bool = False) -> StagePlan:
    """Every stage of the sweep, done or pending, without running or writing any (plan.plan_stages). A collection
    the run would refuse (check_collections) is one line here too (`checked`: it already ran)."""
    if not checked:
        check_collections(cfg)
    # the device is in no stage's key: plan on the CPU, with the LAMs in a pool as the run trains them (on the CPU
    # only, train_workers at once), as the run directory's last run was started (its experiment.json), else as
    # `cfg` says; an unavailable CUDA device is the run's error, not the dry run's
    ran = _last_run(cfg.out)
    device, workers = ran.get("device", cfg.device), ran.get("train_workers", cfg.train_workers)
    on_cpu = device == "cpu" or (device == "auto" and str(resolve_device("auto")) == "cpu")
    with plan_stages() as plan:
        Sweep(dataclasses.replace(cfg, device="cpu", train_workers=workers if on_cpu else 1), _datasets(cfg)).run()
    return plan


def _last_run(out: Path) -> dict[str, Any]:
    """The device and train_workers the last run in `out` was started with (its experiment.json), if any."""
    path = out / "experiment.json"
    try:
        config = read_json(path, "run record")["config"] if path.is_file() else {}
    except (MasklamError, KeyError, TypeError):  # unreadable: the config's settings
        return {}
    ran = {k: config.get(k) for k in ("device", "train_workers") if isinstance(config, dict)}
    ok = isinstance(ran.get("device"), str) and isinstance(ran.get("train_workers"), int)
    return ran if ok else {}


def list_configs() -> str:
    """One line per shipped config: its name and description."""
    shipped = shipped_configs()
    width = max(map(len, shipped), default=0)
    return "\n".join(f"{name:<{width}}  {describe(path)}" for name, path in shipped.items())


@dataclass
class ExperimentArgs:
    """Run a cached, resumable sweep from a TOML/JSON config; writes results.csv and report.html."""

    config: Annotated[str | None, tyro.conf.Positional, tyro.conf.arg(metavar="CONFIG")] = None
    """a shipped config's name (see --list) or a sweep config file (.toml or .json)"""
    out: Path | None = None
    """run directory (overrides the file's `out`)"""
    device: str | None = None
    """auto, cpu, cuda, cuda:N (overrides the file's `device`, whose default is auto)"""
    tasks: list[str] | None = None
    """run these tasks instead of the file's `tasks` (e.g. one at a time); their data come from the file's
    `data` table, or its `collect` table"""
    seeds: list[int] | None = None
    """run these seeds instead of the file's `seeds` (sweeps over other seeds may share the run directory).
    results.csv then holds these tasks and seeds only: run without --tasks/--seeds once all are done to gather every
    row (the stages are cached)"""
    no_report: bool = False
    """skip rendering report.html"""
    list_configs: Annotated[bool, tyro.conf.arg(name="list")] = False
    """list the shipped configs (name and description) and exit"""
    status: bool = False
    """print which stages are done and which pending, with an estimate of the time left; runs and writes nothing"""
    print_config: bool = False
    """print every field the config sets, with the config it came from (it and those it `extends`), and exit"""


def main(argv: list[str]) -> int:
    """`masklam experiment CONFIG`, `masklam experiment --list`, `masklam experiment --status CONFIG`."""
    args = parse(ExperimentArgs, argv)
    if args.list_configs:
        print(list_configs())
        return 0
    if args.config is None:
        raise MasklamError("give a config: a shipped config's name (masklam experiment --list) or a file")
    overrides = dict(out=args.out, device=args.device, tasks=args.tasks, seeds=args.seeds)
    cfg = load_config(args.config, **overrides)  # checked first: --print-config shows only a config that loads
    if args.print_config:
        print(describe_config(args.config, **overrides))
        return 0
    try:
        check_collections(cfg)  # before anything is printed or made
    except MasklamError as e:
        raise MasklamError(f"{args.config}: {e}") from None
    if args.status:
        blocker = file_in_the_way(cfg.out)
        if blocker is not None:  # a run would fail to make it: the dry run says so instead of "nothing done"
            raise MasklamError(f"{cfg.out} cannot be a run directory: {blocker} is a file")
        print(f"{args.config}: {cfg.out}")
        if not cfg.out.exists():
            print(f"{cfg.out} does not exist yet: nothing done")
        print(format_plan(sweep_status(cfg, checked=True)))
        return 0
    rows = run_experiment(cfg, render=not args.no_report, checked=True)
    print(f"{len(rows)} result rows in {cfg.out / 'results.csv'}")
    return 0
