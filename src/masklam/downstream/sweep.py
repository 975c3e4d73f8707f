"""The methods made of stages, and the sweep that runs them: per task and seed, each method's stages -> rows.

Registered here (masklam.methods; the LAM methods lapo, masklam, laom, laom-sup are registered with their model,
in masklam.models.lam):

- `lapo-clean`: LAPO's LAM, latent BC and decoder on the distractor-free data, evaluated without distractors
  (the upper bound);
- `bc`: BC on the N labeled trajectories; `idm`: an IDM on N labeled, relabel all data, BC on the relabels;
- `bc-full`, `bc-full-clean` (always run): BC on all data with true actions, the normalisers of the distracted
  and of the distractor-free methods.

Every LAM method runs LAM -> latent BC on all data -> a decoder per label budget; a LAM is trained once per
method, latent dim and seed and shared across budgets, except laom-sup's, one per budget. Each raw row records
the stage directories it came from (`stages`), which the run's manifest (`write_manifest`) lists for the report.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import masklam.models.lam  # noqa: F401  (registers the LAM methods this sweep runs)
from masklam import methods
from masklam.devices import resolve_device
from masklam.downstream.cache import dry_run, stage_context
from masklam.downstream.plan import is_pending, stage_pool
from masklam.downstream.stages import (bc_stage, decode_stage, eval_stage, expert_return, pretrain_stage,
                                       recipe_label)
from masklam.errors import MasklamError, MasklamRuntimeError
from masklam.files import read_json, write_json
from masklam.metrics import standard_error
from masklam.methods import Method

for _method in (
    Method("lapo-clean", "LAPO distractor-free (upper bound)", "lam", order=0, trainer="lapo", variant="clean"),
    Method("bc", "BC (labelled only)", "baseline", order=5),
    Method("idm", "IDM baseline", "baseline", order=6),
    Method("bc-full", "BC, all data, true actions (normaliser)", "normaliser", order=7),
    Method("bc-full-clean", "BC, clean data (normaliser)", "normaliser", order=8, variant="clean"),
):
    methods.register(_method)


def sweep_methods() -> tuple[str, ...]:
    """The methods a sweep's `methods` may name (the normalisers always run)."""
    return tuple(m for m in methods.names() if not methods.is_kind(m, "normaliser"))


def _normaliser(variant: str) -> str:
    """The full-data BC that normalises the methods of one data variant."""
    return next(m for m in methods.names("normaliser") if methods.get(m).variant == variant)


def _num_train_trajectories(conf: dict[str, Any]) -> int:
    """The training trajectories of a BC's data (`conf`: its options), as BC splits them: folders of shards and
    MaskLAM's parquet episodes counted as it reads them."""
    from masklam.data import split_trajectories
    from masklam.data.dataset import data_layouts

    layouts = data_layouts(conf["data"], conf.get("observations"), conf.get("episode_length"))
    n = sum(lay.num_trajectories for lay in layouts)
    return len(split_trajectories(n, float(conf.get("heldout", 0.1)))[0])


class Sweep:
    """The stages of one sweep (an ExperimentConfig) and the raw result rows (before normalisation) they produce."""

    def __init__(self, cfg: Any, datasets: dict[str, dict[str, list[str]]]) -> None:
        self.cfg, self.datasets, self.raw = cfg, datasets, []
        self.root, self.dev, self.prog = cfg.out, str(resolve_device(cfg.device)), cfg.progress
        # BC and decoders use the LAM's train/held-out split and labeled subsets unless told otherwise
        split = {k: cfg.pretrain[k] for k in ("heldout", "split_seed") if k in cfg.pretrain}
        self.bc_opts, self.dec_opts = {**split, **cfg.bc}, {**split, **cfg.decode}

    def evaluate_all(self, method: str, task: str, dim: int, labels: int, seed: int, probe: float | None,
                     stages: dict[str, Path], variant: str) -> None:
        """Evaluate `stages`' policy (bc) and decoder (decode, if any) on every split of its data variant; one raw
        row per split, recording its stages (the pretrain stage also as the row's lam_stage)."""
        policy, decoder, lam = stages["bc"], stages.get("decode"), stages.get("pretrain")
        for split in (self.cfg.splits if variant == "train" else ["id"]):
            d, res = eval_stage(self.root, policy, decoder, split, self.cfg.env, self.cfg.eval, self.prog)
            if is_pending(res):  # a dry run (sweep_status): nothing measured yet
                continue
            self.raw.append({"method": method, "task": task, "latent_dim": dim, "labels": labels, "seed": seed,
                             "split": split, "probe_nmse": probe, "return": res["mean"], "variant": variant,
                             "success": res.get("success_rate"), "recipe": recipe_label(method, self.cfg.pretrain),
                             "return_sem": standard_error(res["returns"]), "lam_stage": lam.name if lam else None,
                             "expert_fraction": res["mean"] / expert_return(task),
                             "stages": {**stages, "evaluate": d}})

    def bc(self, kind: str, conf: dict[str, Any]) -> Path:
        return bc_stage(self.root, kind, conf, self.dev, self.prog)

    def normaliser_confs(self, task: str, seed: int) -> list[tuple[str, dict[str, Any]]]:
        """(data variant, BCConfig fields) of the full-data BC on each data variant the sweep's methods use."""
        variants = ["train"] + (["clean"] if any(methods.get(m).variant == "clean" for m in self.cfg.methods) else [])
        return [(v, {**self.bc_opts, **self.cfg.bc_full, "data": self.datasets[task][v], "target": "action",
                     "seed": seed}) for v in variants]

    def normalisers(self, task: str, seed: int) -> None:
        """BC on all data with true actions, on each data variant the sweep's methods use."""
        for variant, conf in self.normaliser_confs(task, seed):
            policy = self.bc("bc", conf)
            n_all = 0 if dry_run() else _num_train_trajectories(conf)
            self.evaluate_all(_normaliser(variant), task, 0, n_all, seed, None, {"bc": policy}, variant)

    def lam_method(self, method: str, task: str, seed: int) -> None:
        """LAM -> latent BC (shared across label budgets, unless the LAM learns from the labels) -> a decoder per
        budget."""
        spec = methods.get(method)
        data = self.datasets[task][spec.variant]
        for dim in self.cfg.latent_dims:
            shared = None
            for n in self.cfg.labels:
                if shared is None or spec.supervised:
                    lam_dir, lam_res = pretrain_stage(self.root, spec.trainer, data, dim, seed,
                                                      n if spec.supervised else 0, self.cfg.pretrain,
                                                      self.dev, self.prog)
                    policy = self.bc("bc", {**self.bc_opts, **self.cfg.bc_latent, "data": data, "target": "latent",
                                            "lam": str(lam_dir), "seed": seed})
                    shared = (lam_dir, lam_res, policy)
                lam_dir, lam_res, policy = shared
                dec = decode_stage(self.root, {**self.dec_opts, "policy": str(policy), "data": data, "labels": n,
                                               "seed": seed}, self.dev, self.prog)
                self.evaluate_all(method, task, dim, n, seed, lam_res.get("probe_nmse"),
                                  {"pretrain": lam_dir, "bc": policy, "decode": dec}, spec.variant)

    def bc_method(self, task: str, seed: int) -> None:
        """BC on each label budget's labeled trajectories."""
        data = self.datasets[task]["train"]
        for n in self.cfg.labels:
            policy = self.bc("bc", {**self.bc_opts, "data": data, "target": "action", "labels": n, "seed": seed})
            self.evaluate_all("bc", task, 0, n, seed, None, {"bc": policy}, "train")

    def idm_method(self, task: str, seed: int) -> None:
        """An IDM on each budget's labeled trajectories, then BC on its relabels of all data."""
        data = self.datasets[task]["train"]
        for n in self.cfg.labels:
            idm = self.bc("idm", {**self.bc_opts, **self.cfg.idm, "data": data, "target": "action",
                                  "pair_input": True, "labels": n, "seed": seed})
            policy = self.bc("bc", {**self.bc_opts, "data": data, "target": "idm", "idm": str(idm), "seed": seed})
            self.evaluate_all("idm", task, 0, n, seed, None, {"idm": idm, "bc": policy}, "train")

    def lam_jobs(self, task: str, seed: int) -> list[tuple[tuple, str]]:
        """The distinct pretrain stages of a task and seed, as `pretrain_stage` arguments (no root, device), each
        with the methods it serves (e.g. "lapo-clean", "laom-sup 4 labels")."""
        jobs: list[tuple[tuple, str]] = []
        for method in (m for m in self.cfg.methods if methods.is_kind(m, "lam")):
            spec = methods.get(method)
            for dim in self.cfg.latent_dims:
                for n in (self.cfg.labels if spec.supervised else [0]):
                    job = (spec.trainer, self.datasets[task][spec.variant], dim, seed, n, self.cfg.pretrain)
                    name = method + (f" latent {dim}" if len(self.cfg.latent_dims) > 1 else "") + \
                        (f" {n} labels" if spec.supervised else "")
                    for i, (other, names) in enumerate(jobs):
                        if other == job:  # one LAM serves several methods
                            jobs[i] = (job, f"{names}, {name}")
                            break
                    else:
                        jobs.append((job, name))
        return jobs

    def train_in_parallel(self, task: str, seed: int) -> None:
        """Train the task's and seed's LAMs and normalising BCs (the stages that wait on nothing but the data)
        `train_workers` at a time, each in its own process with its share of the cores (CPU only; one torch
        thread each on 2 cores), LAMs first; the sweep then finds them cached. Each line a worker prints starts
        with what its stage is for. A failed stage is the error of the first failure."""
        lams = self.lam_jobs(task, seed)
        if self.cfg.train_workers < 2 or len(lams) < 2 or self.dev != "cpu":
            return
        bcs = [(_normaliser(variant), conf) for variant, conf in self.normaliser_confs(task, seed)]
        jobs = [(name, pretrain_stage, (self.root, *job, self.dev, False)) for job, name in lams]
        jobs += [(name, bc_stage, (self.root, "bc", conf, self.dev, False)) for name, conf in bcs]
        workers = min(self.cfg.train_workers, len(jobs))
        if dry_run():  # the pool's stages in the order it takes them, each named for what it serves
            with stage_pool(f"{task} seed {seed}", workers):
                for name, fn, args in jobs:
                    with stage_context(f"{task} seed {seed} {name}"):
                        fn(*args)
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        threads = max(1, (os.cpu_count() or 1) // workers)  # the cores shared out (2 cores, 3 workers: 1 each)
        print(f"training {len(lams)} LAMs and {len(bcs)} full-data BCs of {task} seed {seed}, {workers} at a time "
              f"({threads} torch thread{'s' if threads > 1 else ''} each)", flush=True)
        ctx = mp.get_context("spawn")
        stopping = ctx.Event()  # set at Ctrl-C: a stage not begun by then does not begin
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads, stopping))
        try:
            futures = [pool.submit(_labelled, name, fn, *args) for name, fn, args in jobs]
            for f in futures:
                f.result()  # the first failure ends the pass: the stages not started yet are cancelled
        except KeyboardInterrupt:  # the running stages got Ctrl-C too: each stops at a checkpoint
            stopping.set()
            raise
        except BrokenProcessPool:
            raise MasklamRuntimeError(f"a training worker of {task} seed {seed} died (killed, or out of memory); "
                                      "finished stages are kept: run the same command again to resume") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def run(self) -> list[dict[str, Any]]:
        """Every task, seed and method; -> the raw rows."""
        baselines = {"bc": self.bc_method, "idm": self.idm_method}
        for task in self.cfg.tasks:
            for seed in self.cfg.seeds:
                with stage_context(f"{task} seed {seed} LAMs"):
                    self.train_in_parallel(task, seed)
                with stage_context(f"{task} seed {seed} bc-full"):
                    self.normalisers(task, seed)
                for method in self.cfg.methods:
                    with stage_context(f"{task} seed {seed} {method}"):
                        if methods.is_kind(method, "lam"):
                            self.lam_method(method, task, seed)
                        else:
                            baselines[method](task, seed)
        return self.raw


_STOPPING: Any = None
"""in a training worker process: the pool's event, set once Ctrl-C has stopped a stage"""


def _init_worker(threads: int, stopping: Any) -> None:
    """A training worker process computes with `threads` torch threads and knows the pool's stop event."""
    import torch

    global _STOPPING
    _STOPPING = stopping
    torch.set_num_threads(threads)


class _Prefixed:
    """A text stream that starts every line written to it with `prefix`."""

    def __init__(self, stream: Any, prefix: str) -> None:
        self.stream, self.prefix, self.at_line_start = stream, prefix, True

    def write(self, text: str) -> int:
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if line and self.at_line_start:
                self.stream.write(self.prefix)
            last = i == len(lines) - 1
            self.stream.write(line if last else line + "\n")
            self.at_line_start = not last or (self.at_line_start and not line)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno, ...: the stream's
        return getattr(self.stream, name)


def _labelled(name: str, fn: Any, *args: Any) -> Any:
    """fn(*args) in a worker process, each line it prints to stdout starting with "name: "; after Ctrl-C (the
    pool's stop event) it does not begin."""
    import sys

    if _STOPPING is not None and _STOPPING.is_set():  # interrupted before this stage began: it does not begin
        raise KeyboardInterrupt
    stdout, sys.stdout = sys.stdout, _Prefixed(sys.stdout, f"{name}: ")
    try:
        return fn(*args)
    except KeyboardInterrupt:  # this stage stopped at Ctrl-C (at a checkpoint): none after it begins
        if _STOPPING is not None:
            _STOPPING.set()
        raise
    finally:
        sys.stdout.flush()
        sys.stdout = stdout


# --- the manifest: which stages each row came from -----------------------------------------------------------
MANIFEST = "manifest.json"
"""OUT/manifest.json: per result row (in results.csv's order) its method, task, latent dim, labels, seed,
split, data variant, recipe and stage directories (relative to OUT): pretrain, bc, decode, idm, evaluate"""
ROW_KEYS = ("method", "task", "latent_dim", "labels", "seed", "split", "variant", "recipe")


def write_manifest(run_dir: Path, raw: list[dict[str, Any]]) -> Path:
    """OUT/manifest.json of a sweep's raw rows."""
    def rel(p: Path) -> str:
        p = Path(p)
        return p.relative_to(run_dir).as_posix() if p.is_relative_to(run_dir) else str(p)

    rows = [{**{k: r[k] for k in ROW_KEYS}, "stages": {kind: rel(d) for kind, d in r["stages"].items()}}
            for r in raw]
    write_json(run_dir / MANIFEST, {"rows": rows}, indent=1, shared=True)  # sweeps may share the run directory
    return run_dir / MANIFEST


def read_manifest(run_dir: Path) -> list[dict[str, Any]] | None:
    """The rows of OUT/manifest.json (stage directories as paths under `run_dir`); None for a run directory
    without one (written before manifests: `masklam experiment` again writes it, reusing every stage)."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        rows = read_json(path, "manifest")["rows"]
    except (KeyError, TypeError):
        raise MasklamError(f"{path}: not a manifest written by `masklam experiment`") from None
    return [{**r, "stages": {k: Path(run_dir) / v for k, v in r["stages"].items()}} for r in rows]
