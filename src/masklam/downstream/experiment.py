"""`masklam experiment CONFIG`: methods x latent dims x label budgets x seeds x tasks, every stage cached.

CONFIG is a file or the name of a shipped config (`masklam experiment --list`: src/masklam/configs/*.toml).
`masklam experiment --status CONFIG [--out DIR]` prints which stages are done and which pending, with an
estimate of the time left, from a dry run of the sweep (stages.plan_stages) that runs and writes nothing.

Stages (collect, pretrain, bc, decode, evaluate; masklam.downstream.stages) are cached under
`OUT/stages/`. A LAM is trained once per method/dim/seed and shared across label budgets, except
laom-sup, which trains one per budget. Methods:

- `lapo`, `masklam`, `laom`, `laom-sup`: LAM -> latent BC on all data -> decoder on N labeled trajectories;
- `lapo-clean`: the same with LAPO on distractor-free data, evaluated without distractors (upper bound);
- `bc`: BC on the N labeled trajectories; `idm`: IDM on N labeled, relabel all data, BC on the relabels;
- `bc-full` (always): BC on all data with true actions, the normaliser (`bc-full-clean` for lapo-clean).

Writes `OUT/results.csv` (schema and normalisation: masklam.downstream.results) and `OUT/experiment.json`,
then renders the report. Every table of the config is checked against its stage's config fields when the
config is loaded, so a typo fails at once, before any stage runs. A config, e.g. `sweep.toml`:

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
import inspect
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import tyro

from masklam.devices import resolve_device
from masklam.downstream.results import normalize, write_results
from masklam.downstream.stages import (LAM_METHODS, METHODS, EvalOptions, StagePlan, bc_stage, collect_stage,
                                       data_variant, decode_stage, dry_run, eval_stage, expert_return, format_plan,
                                       is_pending, lam_trainer, plan_stages, pretrain_conf, pretrain_stage,
                                       recipe_label, stage_context)
from masklam.args import parse
from masklam.errors import MasklamError
from masklam.files import write_json
from masklam.locks import output_lock
from masklam.metrics import standard_error
from masklam.typecheck import check_values

DATA_KEYS = ("train", "clean", "collect", "collect_clean")
"""keys of a task's [data.TASK] table"""
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
"""the shipped configs: `masklam experiment NAME` runs CONFIG_DIR/NAME.toml"""


@dataclass
class ExperimentConfig:
    """A sweep (read from a TOML or JSON file; keys are these fields)."""

    out: Path
    """run directory: results.csv, report.html, experiment.json and every stage under stages/"""
    tasks: list[str]
    """tasks of the sweep (each needs a [data.TASK] table)"""
    methods: list[str]
    """methods to compare: lapo, masklam, laom, laom-sup, lapo-clean, bc, idm (bc-full always runs)"""
    latent_dims: list[int] = field(default_factory=lambda: [128])
    """LAM latent sizes"""
    labels: list[int] = field(default_factory=lambda: [2, 8, 32, 128])
    """label budgets: labeled trajectories for decoders, BC and IDMs"""
    seeds: list[int] = field(default_factory=lambda: [0])
    """training seeds"""
    splits: list[str] = field(default_factory=lambda: ["id", "ood"])
    """evaluation splits: id (training videos), ood (held-out videos)"""
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    """per task: `train` (paths, distracted data) / `clean` (paths, distractor-free), or `collect` /
    `collect_clean` (CollectConfig fields for `masklam collect`)"""
    pretrain: dict[str, Any] = field(default_factory=dict)
    """PretrainConfig fields shared by every LAM (method, data, out, seed, latent_dim, labeled are set here)"""
    bc: dict[str, Any] = field(default_factory=dict)
    """BCConfig fields of every BC stage (latent BC, BC baselines, BC on IDM relabels)"""
    bc_full: dict[str, Any] = field(default_factory=dict)
    """BCConfig fields of the full-data BC normalisers (bc-full, bc-full-clean), on top of `bc`"""
    idm: dict[str, Any] = field(default_factory=dict)
    """BCConfig fields of the IDM baseline's inverse dynamics model"""
    decode: dict[str, Any] = field(default_factory=dict)
    """DecodeConfig fields of the action decoders"""
    eval: dict[str, Any] = field(default_factory=dict)
    """EvalOptions fields: episodes (25), workers (2), seed (0)"""
    env: dict[str, Any] = field(default_factory=dict)
    """extra env kwargs for evaluation (`masklam.envs.make` arguments, e.g. max_episode_steps; factory for tests)"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N"""
    progress: bool = True
    """progress bars"""
    pretrain_workers: int = 1
    """LAMs of a task and seed trained at once, each in its own process with one torch thread (CPU only; 1: one
    after another in this process). On 2 cores, 2 one-thread LAMs finish sooner than the same LAMs one after
    another with 2 threads each; a LAM's numbers depend on its thread count (metrics.json: torch_threads)"""
    description: str = ""
    """one line saying what the sweep compares (`masklam experiment --list`); no stage reads it"""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        check_tables(self)  # a typo first: it may be why a table seems to be missing
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise MasklamError(f"unknown method {bad[0]!r}; one of {', '.join(METHODS)}")
        bad = [s for s in self.splits if s not in ("id", "ood")]
        if bad:
            raise MasklamError(f"unknown split {bad[0]!r}; use 'id' or 'ood'")
        if not self.tasks or not self.methods or not self.seeds:
            raise MasklamError("tasks, methods and seeds must not be empty")
        if any(d < 1 for d in self.latent_dims) or any(n < 1 for n in self.labels):
            raise MasklamError("latent_dims and labels must be >= 1")
        for task in self.tasks:
            spec = self.data.get(task, {})
            if not ({"train", "collect"} & set(spec)):
                raise MasklamError(f"no data for task {task!r}: give data.{task}.train (paths) or .collect")
            if "lapo-clean" in self.methods and not ({"clean", "collect_clean"} & set(spec)):
                raise MasklamError(f"lapo-clean needs distractor-free data: data.{task}.clean or .collect_clean")
            _check_clean_is_one_kind(task, spec.get("clean"))
        check_background_paths(self)


def _check_clean_is_one_kind(task: str, clean: Any) -> None:
    """Data holding both kinds of frame (MaskLAM's parquet data) under `clean`: BC and decoding read their
    distracted frames, so the clean upper bound would silently train on distracted ones."""
    from masklam.data.sources import offers_observations

    for path in [clean] if isinstance(clean, (str, os.PathLike)) else clean or []:
        if offers_observations(path):
            raise MasklamError(f"data.{task}.clean: {path} holds distracted and clean frames (MaskLAM's parquet "
                               f"data), and BC and decoding read the distracted ones; pass the clean frames another "
                               f"way (an HDF5 file, or .collect_clean)")


def check_background_paths(cfg: ExperimentConfig) -> None:
    """A missing or empty `background_path` folder (in a collect table or [env]), or one without the videos a
    split needs, as one line, before any work. Without [env]'s, evaluation plays the folder the data were
    collected with (recorded with the policy): its held-out videos for 'ood'."""
    from masklam.envs.videos import VIDEO_SPLIT_OF, check_background_path

    env_path = cfg.env.get("background_path")
    wanted = []
    for task, spec in cfg.data.items():
        for key in ("collect", "collect_clean"):
            path = spec.get(key, {}).get("background_path")
            if path is not None:
                wanted.append((path, spec[key].get("video_split", "train")))
                if env_path is None and key == "collect":  # the clean data's policies play no videos
                    wanted += [(path, VIDEO_SPLIT_OF[s]) for s in cfg.splits]
    if env_path is not None:
        wanted += [(env_path, VIDEO_SPLIT_OF[s]) for s in cfg.splits]
    for path, split in dict.fromkeys(wanted):
        check_background_path(path, split)


# --- validation of the stage tables ------------------------------------------------------------------
def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _env_names() -> set[str]:
    """Keys an [env] table may hold: `masklam.envs.make`'s arguments and the distractor parameters."""
    from masklam.envs import make
    from masklam.envs.distractors import DistractorConfig

    params = inspect.signature(make).parameters
    named = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD and n != "task"}
    return named | _field_names(DistractorConfig) | {"factory", "mask", "terminate_on_success", "render_mode"}


def _check_keys(table: str, given: Any, known: set[str]) -> None:
    if not isinstance(given, dict):
        raise MasklamError(f"[{table}] must be a table, got {type(given).__name__}")
    unknown = sorted(set(given) - known)
    if unknown:
        raise MasklamError(f"unknown key {unknown[0]!r} in [{table}]; known: {', '.join(sorted(known))}")


def _check_table(table: str, given: dict[str, Any], cls: type, placeholders: dict[str, Any]) -> None:
    """Types, then ranges: `cls` built from the table (its `__post_init__` checks) with `placeholders` for the
    fields the sweep sets; either problem as one line naming the table."""
    check_values(table, given, cls)
    try:
        cls(**{**given, **placeholders})
    except MasklamError as e:
        raise MasklamError(f"[{table}] {e}") from None


def check_tables(cfg: ExperimentConfig) -> None:
    """One-line MasklamError naming the first key of a stage table that its stage's config does not have, or
    whose value has the wrong type or is out of range (the stage config's own checks), before any stage runs."""
    from masklam.data.collect import CollectConfig
    from masklam.downstream.bc import BCConfig
    from masklam.downstream.decode import DecodeConfig
    from masklam.train.config import PretrainConfig

    bc = _field_names(BCConfig)
    for table, given, known in (("pretrain", cfg.pretrain, _field_names(PretrainConfig)), ("bc", cfg.bc, bc),
                                ("bc_full", cfg.bc_full, bc), ("idm", cfg.idm, bc),
                                ("decode", cfg.decode, _field_names(DecodeConfig)),
                                ("eval", cfg.eval, _field_names(EvalOptions))):
        _check_keys(table, given, known)
    if "factory" not in cfg.env:  # a test's own factory takes its own arguments
        _check_keys("env", cfg.env, _env_names())
        check_values("env", cfg.env, _env_types())
    collect = _field_names(CollectConfig)
    for task, spec in cfg.data.items():
        _check_keys(f"data.{task}", spec, set(DATA_KEYS))
        for key in ("collect", "collect_clean"):
            if key in spec:
                _check_keys(f"data.{task}.{key}", spec[key], collect)
                _check_table(f"data.{task}.{key}", spec[key], CollectConfig,
                             {"task": "check-task", "out": Path("check.h5")})
    _check_values_of_stages(cfg)


def _check_values_of_stages(cfg: ExperimentConfig) -> None:
    """Types and ranges of the stage tables, each through the config class its stages build."""
    from masklam.downstream.bc import BCConfig
    from masklam.downstream.decode import DecodeConfig
    from masklam.train.config import PretrainConfig

    data, out = ("check.h5",), Path("check")
    for table in ("bc", "bc_full", "idm"):
        _check_table(table, getattr(cfg, table), BCConfig, {"data": data, "out": out, "target": "action"})
    _check_table("decode", cfg.decode, DecodeConfig, {"policy": out, "data": data, "out": out})
    _check_table("eval", cfg.eval, EvalOptions, {})
    check_values("pretrain", cfg.pretrain, PretrainConfig)
    for method in [m for m in cfg.methods if m in LAM_METHODS]:  # as each method's LAM will be configured
        labeled = max(cfg.labels or [1]) if method == "laom-sup" else 0
        conf = pretrain_conf(lam_trainer(method), list(data), cfg.latent_dims[0] if cfg.latent_dims else 1,
                             0, labeled, cfg.pretrain)
        _check_table("pretrain", {}, PretrainConfig, {**conf, "out": out})  # conf: the table's options it uses


def _env_types() -> dict[str, Any]:
    """The types of an [env] table's keys: `masklam.envs.make`'s annotations and DistractorConfig's fields."""
    import typing

    from masklam.envs import make
    from masklam.envs.distractors import DistractorConfig
    from masklam.typecheck import field_types

    return {**field_types(DistractorConfig), **typing.get_type_hints(make)}


def shipped_configs() -> dict[str, Path]:
    """The configs shipped with masklam (package data in masklam/configs/), by name (the file's stem)."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.toml"))}


def config_path(name_or_path: str | Path) -> Path:
    """A config file: `name_or_path` if it is a file, else the shipped config of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_configs()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise MasklamError(f"no such file or shipped config: {name_or_path} (shipped: {', '.join(shipped) or 'none'})")


def _parse(path: Path) -> dict[str, Any]:
    """A config file's keys (.toml, else JSON); one-line MasklamError if it does not parse."""
    try:
        raw = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MasklamError(f"cannot parse {path}: {e}") from None
    if not isinstance(raw, dict):
        raise MasklamError(f"{path}: not a table of keys")
    return raw


def describe(path: Path) -> str:
    """A config file's `description` (empty if it has none or does not parse)."""
    try:
        return str(_parse(path).get("description", ""))
    except MasklamError:
        return ""


def load_config(path: str | Path, **overrides: Any) -> ExperimentConfig:
    """Read an ExperimentConfig from a .toml or .json file, or a shipped config by name (`shipped_configs`).
    Relative paths in it (out, data) are relative to the working directory."""
    path = config_path(path)
    raw = _parse(path)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    names = _field_names(ExperimentConfig)
    unknown = sorted(set(raw) - names)
    if unknown:
        raise MasklamError(f"{path}: unknown key {unknown[0]!r}; known: {', '.join(sorted(names))}")
    for key in ("out", "tasks", "methods"):
        if key not in raw:
            raise MasklamError(f"{path}: missing key {key!r}")
    try:
        check_values("", raw, ExperimentConfig)
        return ExperimentConfig(**raw)
    except MasklamError as e:
        raise MasklamError(f"{path}: {e}") from None


# --- the sweep -----------------------------------------------------------------------------------------
def _datasets(cfg: ExperimentConfig) -> dict[str, dict[str, list[str]]]:
    """Per task, the 'train' (distracted) and 'clean' file lists, collecting where asked."""
    from masklam.data.sources import data_exists

    out: dict[str, dict[str, list[str]]] = {}
    for task in cfg.tasks:
        spec, out[task] = cfg.data[task], {}
        for variant, coll in (("train", "collect"), ("clean", "collect_clean")):
            if variant in spec:
                paths = spec[variant] if isinstance(spec[variant], list) else [spec[variant]]
                missing = [p for p in paths if not data_exists(p)]
                if missing:
                    raise MasklamError(f"no such file: {missing[0]}")
                out[task][variant] = [str(p) for p in paths]
            elif coll in spec:
                with stage_context(f"{task} {variant} data"):
                    out[task][variant] = collect_stage(cfg.out, task, spec[coll], cfg.progress)
    return out


def _num_train_trajectories(paths: list[str], heldout: float) -> int:
    from masklam.data import split_trajectories
    from masklam.data.dataset import data_layout

    n = sum(data_layout(p).num_trajectories for p in paths)
    return len(split_trajectories(n, heldout)[0])


class _Sweep:
    """The stages of one sweep and the raw result rows (before normalisation) they produce."""

    def __init__(self, cfg: ExperimentConfig, datasets: dict[str, dict[str, list[str]]]) -> None:
        self.cfg, self.datasets, self.raw = cfg, datasets, []
        self.root, self.dev, self.prog = cfg.out, str(resolve_device(cfg.device)), cfg.progress
        # BC and decoders use the LAM's train/held-out split and labeled subsets unless told otherwise
        split = {k: cfg.pretrain[k] for k in ("heldout", "split_seed") if k in cfg.pretrain}
        self.bc_opts, self.dec_opts = {**split, **cfg.bc}, {**split, **cfg.decode}

    def evaluate_all(self, method: str, task: str, dim: int, labels: int, seed: int, probe: float | None,
                     policy: Path, decoder: Path | None, variant: str, lam: Path | None = None) -> None:
        """Evaluate a policy on every split of its data variant; one raw row per split (`lam`: the pretrain
        stage behind it, recorded as the row's lam_stage)."""
        for split in (self.cfg.splits if variant == "train" else ["id"]):
            res = eval_stage(self.root, policy, decoder, split, self.cfg.env, self.cfg.eval, self.prog)
            if is_pending(res):  # a dry run (sweep_status): nothing measured yet
                continue
            self.raw.append({"method": method, "task": task, "latent_dim": dim, "labels": labels, "seed": seed,
                             "split": split, "probe_nmse": probe, "return": res["mean"], "variant": variant,
                             "success": res.get("success_rate"), "recipe": recipe_label(method, self.cfg.pretrain),
                             "return_sem": standard_error(res["returns"]), "lam_stage": lam.name if lam else None,
                             "expert_fraction": res["mean"] / expert_return(task)})

    def bc(self, kind: str, conf: dict[str, Any]) -> Path:
        return bc_stage(self.root, kind, conf, self.dev, self.prog)

    def normalisers(self, task: str, seed: int) -> None:
        """BC on all data with true actions (bc-full; bc-full-clean on the clean data for lapo-clean)."""
        for variant in ["train"] + (["clean"] if any(data_variant(m) == "clean" for m in self.cfg.methods) else []):
            data = self.datasets[task][variant]
            conf = {**self.bc_opts, **self.cfg.bc_full, "data": data, "target": "action", "seed": seed}
            policy = self.bc("bc", conf)
            n_all = 0 if dry_run() else _num_train_trajectories(data, float(conf.get("heldout", 0.1)))
            self.evaluate_all("bc-full" if variant == "train" else "bc-full-clean", task, 0, n_all, seed, None,
                              policy, None, variant)

    def lam_method(self, method: str, task: str, seed: int) -> None:
        """LAM -> latent BC (shared across label budgets, except laom-sup's) -> a decoder per budget."""
        variant = data_variant(method)
        data = self.datasets[task][variant]
        for dim in self.cfg.latent_dims:
            shared = None
            for n in self.cfg.labels:
                if shared is None or method == "laom-sup":
                    lam_dir, lam_res = pretrain_stage(self.root, lam_trainer(method), data, dim, seed,
                                                      n if method == "laom-sup" else 0, self.cfg.pretrain,
                                                      self.dev, self.prog)
                    policy = self.bc("bc", {**self.bc_opts, "data": data, "target": "latent", "lam": str(lam_dir),
                                            "seed": seed})
                    shared = (lam_dir, lam_res, policy)
                lam_dir, lam_res, policy = shared
                dec = decode_stage(self.root, {**self.dec_opts, "policy": str(policy), "data": data, "labels": n,
                                               "seed": seed}, self.dev, self.prog)
                self.evaluate_all(method, task, dim, n, seed, lam_res.get("probe_nmse"), policy, dec, variant,
                                  lam_dir)

    def bc_method(self, task: str, seed: int) -> None:
        """BC on each label budget's labeled trajectories."""
        data = self.datasets[task]["train"]
        for n in self.cfg.labels:
            policy = self.bc("bc", {**self.bc_opts, "data": data, "target": "action", "labels": n, "seed": seed})
            self.evaluate_all("bc", task, 0, n, seed, None, policy, None, "train")

    def idm_method(self, task: str, seed: int) -> None:
        """An IDM on each budget's labeled trajectories, then BC on its relabels of all data."""
        data = self.datasets[task]["train"]
        for n in self.cfg.labels:
            idm = self.bc("idm", {**self.bc_opts, **self.cfg.idm, "data": data, "target": "action",
                                  "pair_input": True, "labels": n, "seed": seed})
            policy = self.bc("bc", {**self.bc_opts, "data": data, "target": "idm", "idm": str(idm), "seed": seed})
            self.evaluate_all("idm", task, 0, n, seed, None, policy, None, "train")

    def lam_jobs(self, task: str, seed: int) -> list[tuple]:
        """The distinct pretrain stages of a task and seed, as `pretrain_stage` arguments (no root, device)."""
        jobs = []
        for method in (m for m in self.cfg.methods if m in LAM_METHODS):
            data = self.datasets[task][data_variant(method)]
            for dim in self.cfg.latent_dims:
                for n in (self.cfg.labels if method == "laom-sup" else [0]):
                    job = (lam_trainer(method), data, dim, seed, n, self.cfg.pretrain)
                    if job not in jobs:
                        jobs.append(job)
        return jobs

    def pretrain_in_parallel(self, task: str, seed: int) -> None:
        """Train the task's and seed's LAMs `pretrain_workers` at a time, one torch thread each, each in its own
        process (CPU only); the sweep then finds them cached. A failed LAM is the error of the first failure."""
        jobs = self.lam_jobs(task, seed)
        if self.cfg.pretrain_workers < 2 or len(jobs) < 2 or self.dev != "cpu" or dry_run():
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        workers = min(self.cfg.pretrain_workers, len(jobs))
        print(f"training {len(jobs)} LAMs of {task} seed {seed}, {workers} at a time (one thread each)", flush=True)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_one_thread) as pool:
            futures = [pool.submit(pretrain_stage, self.root, *job[:5], job[5], self.dev, False) for job in jobs]
            for f in futures:
                f.result()

    def run(self) -> list[dict[str, Any]]:
        """Every task, seed and method; -> the raw rows."""
        for task in self.cfg.tasks:
            for seed in self.cfg.seeds:
                with stage_context(f"{task} seed {seed} LAMs"):
                    self.pretrain_in_parallel(task, seed)
                with stage_context(f"{task} seed {seed} bc-full"):
                    self.normalisers(task, seed)
                for method in self.cfg.methods:
                    with stage_context(f"{task} seed {seed} {method}"):
                        if method in LAM_METHODS:
                            self.lam_method(method, task, seed)
                        elif method == "bc":
                            self.bc_method(task, seed)
                        elif method == "idm":
                            self.idm_method(task, seed)
        return self.raw


def _one_thread() -> None:
    """A pretraining worker process computes with one torch thread."""
    import torch

    torch.set_num_threads(1)


def run_experiment(cfg: ExperimentConfig, render: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) the whole sweep; writes results.csv and returns its rows as dicts. One sweep per run
    directory at a time (masklam.locks)."""
    with output_lock(cfg.out, ", or use another --out"):
        return _run_locked(cfg, render)


def _run_locked(cfg: ExperimentConfig, render: bool) -> list[dict[str, Any]]:
    cfg.out.mkdir(parents=True, exist_ok=True)
    datasets = _datasets(cfg)
    write_json(cfg.out / "experiment.json", {"config": dataclasses.asdict(cfg),
                                             "datasets": {t: d["train"] for t, d in datasets.items()},
                                             "clean_datasets": {t: d["clean"] for t, d in datasets.items()
                                                                if "clean" in d}}, indent=1)
    rows = normalize(_Sweep(cfg, datasets).run())
    write_results(cfg.out / "results.csv", rows)
    if render:
        from masklam.downstream.report import render_report

        print(f"wrote {cfg.out / 'results.csv'} and {render_report(cfg.out)}")
    return rows


# --- status of a sweep: a dry run ----------------------------------------------------------------------
def sweep_status(cfg: ExperimentConfig) -> StagePlan:
    """Every stage of the sweep, done or pending, without running or writing any (stages.plan_stages)."""
    with plan_stages() as plan:  # the device is in no stage's key: do not ask for one
        _Sweep(dataclasses.replace(cfg, device="cpu"), _datasets(cfg)).run()
    return plan


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
    no_report: bool = False
    """skip rendering report.html"""
    list_configs: Annotated[bool, tyro.conf.arg(name="list")] = False
    """list the shipped configs (name and description) and exit"""
    status: bool = False
    """print which stages are done and which pending, with an estimate of the time left; runs and writes nothing"""


def main(argv: list[str]) -> int:
    """`masklam experiment CONFIG`, `masklam experiment --list`, `masklam experiment --status CONFIG`."""
    args = parse(ExperimentArgs, argv)
    if args.list_configs:
        print(list_configs())
        return 0
    if args.config is None:
        raise MasklamError("give a config: a shipped config's name (masklam experiment --list) or a file")
    cfg = load_config(args.config, out=args.out, device=args.device)
    if args.status:
        print(f"{args.config}: {cfg.out}")
        if not cfg.out.exists():
            print(f"{cfg.out} does not exist yet: nothing done")
        print(format_plan(sweep_status(cfg)))
        return 0
    rows = run_experiment(cfg, render=not args.no_report)
    print(f"{len(rows)} result rows in {cfg.out / 'results.csv'}")
    return 0
