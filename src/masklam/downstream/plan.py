"""Dry runs of a sweep (`masklam experiment --status`): which stages are done, which pending, the time left.

`plan_stages` walks the sweep's own code without running or writing anything: `run_stage`
(masklam.downstream.cache) records each stage as done (its done.json) or pending instead. A stage whose config
names a pending stage's directory waits on it: it is pending, and its key, which hashes its inputs' data files,
is not known yet. `format_plan` turns what it met into the status table.
"""
from __future__ import annotations

import heapq
import os
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from masklam.downstream.cache import (CONTEXT, PLANNER, checkpoint_at, checkpoint_step, done_record,
                                      earlier_runs_s, resumed_s, stage_record)
from masklam.locks import is_held


class Pending(dict):
    """The result a dry run gives for a stage not done yet (empty; `is_pending` tells it apart)."""


def is_pending(result: Any) -> bool:
    """Whether a stage's result is a dry run's placeholder for a stage not done yet."""
    return isinstance(result, Pending)


@dataclass
class PlannedStage:
    """A stage a dry run met."""

    kind: str
    """collect, pretrain, bc, idm, decode, evaluate"""
    key: str | None
    """its key; None while it waits on a pending stage (the key hashes its inputs' files)"""
    done: bool
    """its done.json records its key"""
    context: str
    """what it is for (`stage_context`), e.g. "cheetah-run seed 0 lapo" """
    config: dict[str, Any]
    """its config"""
    wall_s: float | None = None
    """done: its run time (done.json's wall_s, else the time between stage.json and done.json)"""
    started: float | None = None
    """pending with a stage.json: when it last started (time.time(); running now or interrupted)"""
    active: float | None = None
    """pending with a stage.json: when a file of its directory last changed (running if recent: `is_running`)"""
    held: bool = False
    """pending with a stage.json: another process holds its lock (computing it now)"""
    checkpoint: tuple[int, int] | None = None
    """pending with a checkpoint (a LAM's config.json): (its step, the run's total steps)"""
    ran_s: float = 0.0
    """pending with a stage.json: the earlier runs' time its last run resumed (stage.json's resumed_s)"""
    resumes_s: float = 0.0
    """pending with a stage.json: the run time a new run would resume (cache.resumed_s; 0: it starts over)"""
    per_step_s: float | None = None
    """pending with checkpoints written by its last run: that run's seconds per step (`_pace`)"""
    checkpoint_at: float | None = None
    """pending with a checkpoint: when it was written (its RESUME_STATE's time)"""
    pool: tuple[str, int] | None = None
    """run in a pool of workers (`stage_pool`): (the pool's name, how many of its stages run at once)"""

    def is_running(self, now: float) -> bool:
        """Started, and held by another process or wrote a file within RUNNING_WINDOW_S of `now` (a LAM may go an
        hour between checkpoints): running; else interrupted, if started."""
        if self.started is None:
            return False
        return self.held or (self.active is not None and now - self.active <= RUNNING_WINDOW_S)


RUNNING_WINDOW_S = 300.0
"""a started stage whose directory changed no longer ago than this is running; after it, interrupted"""

POOL: ContextVar[tuple[str, int] | None] = ContextVar("masklam_stage_pool", default=None)
"""the pool of workers the stages planned now will share, if any (`stage_pool`)"""


@contextmanager
def stage_pool(name: str, width: int) -> Iterator[None]:
    """In a dry run: the stages planned inside will run `width` at a time in one pool of workers (a task and seed's
    LAMs and full-data BCs on CPU, `Sweep.train_in_parallel`), in the order planned; for the wall-clock estimate."""
    token = POOL.set((name, width))
    try:
        yield
    finally:
        POOL.reset(token)


def _strings(obj: Any) -> Iterator[str]:
    """Every string (or path) value in a nested config."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, (str, Path)):
        yield str(obj)


def _pace(d: Path, started: float, checkpoint: tuple[int, int] | None) -> tuple[float | None, float | None]:
    """(seconds per step, when its last checkpoint was written) of the stage's last run, from its start (stage.json)
    and the step it resumed from (stage.json's `resumed_step`) to its last checkpoint (`RESUME_STATE`'s time, the
    checkpoint's step); no pace before that run's first checkpoint, or for a run that did not record its start step."""
    resumed, at = stage_record(d).get("resumed_step"), checkpoint_at(d)
    if checkpoint is None or not isinstance(resumed, int) or checkpoint[0] <= resumed or at is None or at <= started:
        return None, at
    return (at - started) / (checkpoint[0] - resumed), at


def _newest_mtime(d: Path) -> float:
    """When a file in `d` (or below) last changed."""
    return max((p.stat().st_mtime for p in d.rglob("*") if p.is_file()), default=d.stat().st_mtime)


@dataclass
class StagePlan:
    """What a dry run of a sweep met (`plan_stages`), in order."""

    stages: list[PlannedStage] = field(default_factory=list)
    """each stage met, once"""
    pending_dirs: list[str] = field(default_factory=list)
    """directories of the pending stages (a config naming one waits on it)"""
    seen: set[str] = field(default_factory=set)
    """directories of the stages met"""
    kind_dirs: dict[str, Path] = field(default_factory=dict)
    """per kind, the folder of its stages in the run directory (`OUT/stages/<kind>`)"""

    def visit(self, d: Path, kind: str, key: str, config: dict[str, Any]) -> dict[str, Any]:
        """Record one stage; -> its result if done, else a `Pending` one."""
        pending = self.pending_dirs
        self.kind_dirs.setdefault(kind, d.parent)
        waits = any(v == p or v.startswith(p + os.sep) for v in _strings(config) for p in pending)
        rec = None if waits else done_record(d, key)
        stage = PlannedStage(kind, None if waits else key, rec is not None, CONTEXT.get(), config, pool=POOL.get())
        if str(d) not in self.seen:  # a stage two parts of the sweep share runs once
            self.seen.add(str(d))
            self.stages.append(stage)
        started = d / "stage.json"
        if rec is not None:
            stage.wall_s = _wall_s(d, rec)
            return rec["result"]
        if not waits and started.is_file():
            stage.started, stage.active, stage.held = started.stat().st_mtime, _newest_mtime(d), is_held(d)
            stage.checkpoint = checkpoint_step(d)
            stage.ran_s, stage.resumes_s = earlier_runs_s(d), resumed_s(d)
            stage.per_step_s, stage.checkpoint_at = _pace(d, stage.started, stage.checkpoint)
        self.pending_dirs.append(str(d))
        return Pending()


@contextmanager
def plan_stages() -> Iterator[StagePlan]:
    """A dry run: inside it, `run_stage` records stages in the StagePlan yielded and runs or writes nothing."""
    plan = StagePlan()
    token = PLANNER.set(plan)
    try:
        yield plan
    finally:
        PLANNER.reset(token)


def _wall_s(d: Path, rec: dict[str, Any]) -> float | None:
    """A done stage's run time: its done.json's wall_s, or (done before run_stage recorded it) the time between
    its stage.json and done.json."""
    if rec.get("wall_s") is not None:
        return float(rec["wall_s"])
    started = d / "stage.json"
    return max((d / "done.json").stat().st_mtime - started.stat().st_mtime, 0.0) if started.is_file() else None


def _done_walls(folder: Path) -> list[float]:
    """The run times of every done stage in `folder` (`OUT/stages/<kind>`; a stage's directory is named for its
    key)."""
    dirs = sorted(folder.iterdir()) if folder.is_dir() else []  # a dry run of a fresh run directory: none yet
    walls = [_wall_s(d, rec) for d in dirs if (rec := done_record(d, d.name)) is not None]
    return [w for w in walls if w is not None]


def _by_pace(s: PlannedStage, now: float) -> float:
    """A checkpointing stage's time left at its last run's pace: its steps left after the last checkpoint, less the
    time since that checkpoint while it runs (an interrupted one resumes from the checkpoint)."""
    assert s.per_step_s is not None and s.checkpoint is not None and s.checkpoint_at is not None
    step, total = s.checkpoint
    since = now - s.checkpoint_at if s.is_running(now) else 0.0
    return max(s.per_step_s * (total - step) - since, 0.0)


def _wall_clock(stages: list[PlannedStage], lefts: dict[int, float]) -> float:
    """The time left on the wall clock, from each pending stage's time left (`lefts`, by id; none for a stage
    without an estimate): a pool's stages (`stage_pool`) go in the order planned each to the worker free first, and
    the pool ends when its last stage does; every other stage runs alone, after the one before it."""
    total, i = 0.0, 0
    while i < len(stages):
        pool, j = stages[i].pool, i + 1
        if pool is None:
            total += lefts.get(id(stages[i]), 0.0)
            i = j
            continue
        while j < len(stages) and stages[j].pool == pool:
            j += 1
        workers = [0.0] * pool[1]  # a heap of when each worker is free
        for s in stages[i:j]:
            heapq.heapreplace(workers, workers[0] + lefts.get(id(s), 0.0))
        total += max(workers)
        i = j
    return total


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _brief(stage: PlannedStage) -> str:
    """What tells a stage from its siblings: its context and the options that vary within one."""
    c = stage.config
    parts = [f"{k} {c[k]}" for k in ("target", "latent_dim", "labels", "split") if c.get(k) is not None]
    return ", ".join([stage.context] + parts) if stage.context else ", ".join(parts)


def format_plan(plan: StagePlan, now: float | None = None) -> str:
    """Per stage kind: done and pending counts, mean run time and time left; the started stages; what is left.

    A pending stage is estimated by the mean run time of the done stages of its kind, less the time it has run:
    running (started, and held or wrote a file recently), this run's time and the earlier runs' it resumed;
    interrupted, the time a new run would resume (`cache.resumed_s`: none without a checkpoint); a kind with none
    done in the plan by the run directory's other done stages of that kind (another part of the sweep, other
    settings: marked *); a kind with none done there either has no estimate. Where done stages of its kind ran as
    it will (in a pool, or alone) it takes their mean instead; a stage whose last run checkpointed, its own pace
    (`_by_pace`).
    The time left is on the wall clock: stages planned in a pool (`stage_pool`) share its workers (their run times
    were measured sharing the cores), every other stage runs after the one before it; the table sums each kind's
    stages one by one (stage time)."""
    now = time.time() if now is None else now
    kinds = list(dict.fromkeys(s.kind for s in plan.stages))
    lines = [f"{'stage':<10}{'done':>6}{'pending':>9}{'mean time':>12}{'time left':>13}"]
    total, unknown, elsewhere, lefts = 0.0, [], False, {}
    for kind in kinds:
        done = [s for s in plan.stages if s.kind == kind and s.done]
        pending = [s for s in plan.stages if s.kind == kind and not s.done]
        walls = [s.wall_s for s in done if s.wall_s is not None]
        mark = ""
        if not walls and kind in plan.kind_dirs:
            walls = _done_walls(plan.kind_dirs[kind])
            mark = "*" if walls else ""
            elsewhere = elsewhere or bool(walls and pending)
        mean = sum(walls) / len(walls) if walls else None
        # a pool's stages ran on a share of the cores, the others on all: each pending stage takes the mean of the
        # done ones of its kind that ran as it will, where there are some; a stage with checkpoints, its own pace
        alike = {pooled: [s.wall_s for s in done if s.wall_s is not None and (s.pool is not None) == pooled]
                 for pooled in (True, False)}
        for s in pending:
            same = alike[s.pool is not None]
            if s.per_step_s is not None:
                lefts[id(s)] = _by_pace(s, now)
            elif same or mean is not None:
                ran = s.ran_s + now - s.started if s.is_running(now) else s.resumes_s
                lefts[id(s)] = max((sum(same) / len(same) if same else mean) - ran, 0.0)
        if any(id(s) not in lefts for s in pending):
            unknown.append(kind)
            left = "no estimate"
            for s in pending:  # the kind counts in no total
                lefts.pop(id(s), None)
        else:
            secs = sum(lefts[id(s)] for s in pending)
            total += secs
            left = _duration(secs)
        lines.append(f"{kind:<10}{len(done):>6}{len(pending):>9}"
                     f"{_duration(mean) + mark if mean is not None else '-':>12}{left:>13}")
    n_done = sum(s.done for s in plan.stages)
    n_pending = len(plan.stages) - n_done
    if not n_pending:
        lines.append(f"all {n_done} stages done")
        return "\n".join(lines)
    if unknown and not total:
        estimate = "no estimate yet (no stage of a pending kind is done)"
    else:
        wall = _wall_clock(plan.stages, lefts)
        widths = sorted({s.pool[1] for s in plan.stages if s.pool is not None and id(s) in lefts})
        pooled = (f" on the wall clock ({_duration(total)} of stage time: a task and seed's LAMs and full-data BCs "
                  f"train {'/'.join(map(str, widths))} at once)") if widths and wall < total else ""
        estimate = f"about {_duration(wall if pooled else total)} left{pooled}" + (
            f", plus the {', '.join(unknown)} stages (no estimate: none of their kind done yet)" if unknown else "")
    lines.append(f"{n_done} done, {n_pending} pending: {estimate}")
    if elsewhere:
        lines.append("* none of this kind done here: the mean of the run directory's other done stages of its kind")
    for s in plan.stages:
        if s.started is not None:
            state = "running" if s.is_running(now) else "interrupted"
            last = f", last write {_duration(now - s.active)} ago" if s.active is not None else ""
            last += f", checkpoint at step {s.checkpoint[0]} of {s.checkpoint[1]}" if s.checkpoint else ""
            last += f", {s.per_step_s:.1f} s per step" if s.per_step_s is not None else ""
            lines.append(f"started {_duration(now - s.started)} ago ({state}{last}): {s.kind} {s.key} ({_brief(s)})")
    lines.append("left (stages waiting on pending inputs have no key yet):")
    left: dict[str, dict[str, int]] = {}
    for s in plan.stages:
        if not s.done:
            counts = left.setdefault(s.context, {})
            counts[s.kind] = counts.get(s.kind, 0) + 1
    for context, counts in left.items():
        lines.append(f"  {context or '-'}: " + ", ".join(f"{kind} {n}" for kind, n in counts.items()))
    return "\n".join(lines)
