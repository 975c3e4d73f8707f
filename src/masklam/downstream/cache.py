"""The stage cache: a stage lives in `OUT/stages/<kind>/<key>/` and runs once per key.

The key (`stage_key`) hashes the stage's kind, its config (its inputs included as their directories, so their
keys), the size and mtime of its data files (`fingerprint`), what named values in the config stand for, and the
VERSION of the code that computes it. A stage is skipped when its `done.json` holds the same key, and runs (or
resumes: stages resume from their own checkpoints) otherwise. `done.json` records the stage's result and its run
time (`wall_s`: a resumed stage's counts the earlier runs' time up to their last checkpoint, `resumed_s`).
Inside a dry run (masklam.downstream.plan) `run_stage` hands each stage to the planner instead, and runs or
writes nothing.
"""
from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from masklam.locks import output_lock


def fingerprint(paths: Any) -> list[Any]:
    """(path, size, mtime) of each data file, so a rewritten dataset invalidates the stages built on it; a
    directory of shards (or `DIR/<split>`): (path, its files' (name, size, mtime))."""
    from masklam.data.dataset import fingerprint_files

    out = []
    for p in paths if isinstance(paths, (list, tuple)) else [paths]:
        files = [] if Path(p).is_file() else fingerprint_files(p)
        if files:
            out.append([str(p), [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]])
            continue
        st = Path(p).stat() if Path(p).is_file() else None
        out.append([str(p), st.st_size if st else None, st.st_mtime_ns if st else None])
    return out


def stage_key(kind: str, config: dict[str, Any], meaning: dict[str, Any] | None = None, version: int = 1) -> str:
    """Hash of a stage's kind, config (inputs included as their directories), data files, `meaning` (what named
    values in the config stand for: a recipe's fields, so that a name whose meaning changes never reuses a stage
    computed under the old one) and `version`: the VERSION of the code that computes the stage (its trainer's,
    whatever the kind's name: BC and IDM stages share the BC trainer's). Version 1 is left out of the hash."""
    files = fingerprint(config["data"]) if "data" in config else None
    key = {"kind": kind, "config": config, "files": files}
    if meaning:
        key["meaning"] = meaning
    if version > 1:
        key["version"] = version
    blob = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def done_record(d: Path, key: str) -> dict[str, Any] | None:
    """`d/done.json` if it records this key (then the stage is done: its result and wall_s), else None."""
    done = d / "done.json"
    if not done.is_file():
        return None
    try:
        rec = json.loads(done.read_text())
    except json.JSONDecodeError:
        return None
    return rec if rec.get("hash") == key else None


CONTEXT: ContextVar[str] = ContextVar("masklam_stage_context", default="")
"""what the stages run now are for (`stage_context`)"""


@contextmanager
def stage_context(label: str) -> Iterator[None]:
    """Name what the stages run inside are for (e.g. "cheetah-run seed 0 lapo"), for logs and dry runs."""
    token = CONTEXT.set(label)
    try:
        yield
    finally:
        CONTEXT.reset(token)


class Planner(Protocol):
    """What a dry run does with each stage instead of running it (masklam.downstream.plan.StagePlan)."""

    def visit(self, d: Path, kind: str, key: str, config: dict[str, Any]) -> dict[str, Any]: ...


PLANNER: ContextVar[Planner | None] = ContextVar("masklam_stage_planner", default=None)
"""the dry run in progress, if any (set by masklam.downstream.plan.plan_stages)"""


def dry_run() -> bool:
    """Whether stages are being planned rather than run."""
    return PLANNER.get() is not None


RESUME_STATE = "train_state.pt"
"""the file a resumable stage checkpoints to, anywhere in its directory (masklam.train.checkpoint.TRAIN_STATE)"""


def stage_record(d: Path) -> dict[str, Any]:
    """The stage.json of the last run of the stage in `d` ({} without one, or while it is being rewritten)."""
    from masklam.files import read_record

    return read_record(d / "stage.json")


def earlier_runs_s(d: Path) -> float:
    """The earlier runs' time that the last run of the stage in `d` resumed (its stage.json's `resumed_s`; 0 without
    one, or written before it was recorded)."""
    try:
        return float(stage_record(d).get("resumed_s", 0.0))
    except (ValueError, TypeError):
        return 0.0


def checkpoint_step(d: Path) -> tuple[int, int] | None:
    """(step, total steps) of the last checkpoint a training stage wrote in `d` (a LAM's config.json), if any."""
    try:
        config = json.loads((d / "config.json").read_text())
        return int(config["step"]), int(config["total_steps"])
    except (OSError, ValueError, KeyError, TypeError):  # none yet, being rewritten, or not a LAM's
        return None


def checkpoint_at(d: Path) -> float | None:
    """When the stage in `d` last checkpointed (its newest `RESUME_STATE`'s time), None without a checkpoint."""
    return max((p.stat().st_mtime for p in d.rglob(RESUME_STATE)), default=None)


def resumed_s(d: Path) -> float:
    """The run time a new run of the stage in `d` resumes: 0 without a checkpoint (`RESUME_STATE`: it starts over),
    else the earlier runs' (`earlier_runs_s`) plus the last run's, from its start (stage.json written) to its last
    checkpoint; the time after that checkpoint is lost work and not counted."""
    started = d / "stage.json"
    at = checkpoint_at(d) if started.is_file() else None
    if at is None:
        return 0.0
    return earlier_runs_s(d) + max(at - started.stat().st_mtime, 0.0)


def run_stage(root: Path, kind: str, config: dict[str, Any], fn: Callable[[Path], dict[str, Any]],
              log: Callable[[str], None] = print, meaning: dict[str, Any] | None = None,
              version: int = 1) -> tuple[Path, dict[str, Any]]:
    """Run `fn(stage_dir) -> result` unless `stage_dir/done.json` records this config's hash (`stage_key`);
    -> (dir, result). The stage's lock (masklam.locks) is held while it runs: another process that reaches the
    same stage then gets one line naming this one, and `--status` shows it running however long it goes silent.

    In a dry run only hands the stage to the planner: -> (dir, its result, or the planner's placeholder)."""
    from masklam.files import write_json

    key = stage_key(kind, config, meaning, version)
    d = root / "stages" / kind / key
    planner = PLANNER.get()
    if planner is not None:
        return d, planner.visit(d, kind, key, config)
    rec = done_record(d, key)
    if rec is not None:
        return d, rec["result"]
    with output_lock(d, ", or use another --out"):  # held while it computes: `--status` shows it running
        rec = done_record(d, key)  # another process may have finished it meanwhile
        if rec is not None:
            return d, rec["result"]
        d.mkdir(parents=True, exist_ok=True)
        resumed, step = resumed_s(d), checkpoint_step(d)
        record = {"kind": kind, "config": config, "resumed_s": resumed, "resumed_step": step[0] if step else 0}
        write_json(d / "stage.json", record, indent=1)  # its mtime: when this run started
        context = CONTEXT.get()
        log(f"[{kind} {key}] running" + (f" ({context})" if context else ""))
        t0 = time.perf_counter()
        result = fn(d)
        wall_s = resumed + time.perf_counter() - t0
        write_json(d / "done.json", {"hash": key, "result": result, "wall_s": wall_s}, indent=1)
    return d, result
