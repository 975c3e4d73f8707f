"""A sweep's results table (results.csv): its schema, writing, normalisation, reading, and the one
aggregation over seeds that every summary uses (the HTML report's curves and tables, the quickstart's).

Columns (`RESULT_COLUMNS`): `method, task, latent_dim, labels, seed, split, probe_nmse, return,
normalized_return, success, recipe, return_sem, expert_fraction, lam_stage`. `normalized_return` divides by full-data
BC on the same data and split (bc-full on the training videos for `id`, the same policy on the held-out
videos for `ood`, bc-full-clean for lapo-clean); `success` is the success rate, empty unless the env
reports success (Meta-World); `recipe` is how the row's LAM was trained ('-' without one); `return_sem`
the standard error over the row's episodes; `expert_fraction` the return over the shipped expert's;
`lam_stage` the pretrain stage (its key: `stages/pretrain/<key>/`) of the row's LAM, empty without one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

import masklam.downstream.sweep  # noqa: F401  (registers the methods of the rows; the LAMs' come with it)
from masklam import methods
from masklam.errors import MasklamError
from masklam.files import read_csv, write_csv
from masklam.metrics import standard_error

REQUIRED_COLUMNS = ["method", "task", "latent_dim", "labels", "seed", "split", "probe_nmse", "return",
                    "normalized_return"]
"""Columns every results.csv has (the report needs them)."""
RESULT_COLUMNS = REQUIRED_COLUMNS + ["success", "recipe", "return_sem", "expert_fraction", "lam_stage"]
"""The columns `write_results` writes, in order."""


@dataclass
class Row:
    """One line of results.csv (numbers parsed; `probe_nmse` is None for methods without latents)."""

    method: str
    """a registered method (masklam.methods): lapo, masklam, laom, laom-sup, lapo-clean, bc, idm, bc-full, ..."""
    task: str
    """environment task"""
    latent_dim: int
    """LAM latent size (0 without a LAM)"""
    labels: int
    """labeled trajectories"""
    seed: int
    """training seed"""
    split: str
    """id (training videos) or ood (held-out videos)"""
    probe_nmse: float | None
    """held-out linear probe NMSE latent -> action (None without a LAM)"""
    ret: float
    """mean online return"""
    normalized_return: float
    """return / full-data BC's (nan without a normaliser)"""
    success: float | None = None
    """success rate (Meta-World), None where the env reports none"""
    extra: dict[str, str] = field(default_factory=dict)
    """the other columns as written, when not empty (recipe, return_sem, expert_fraction, lam_stage)"""


def write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    """results.csv with the fixed columns (RESULT_COLUMNS); empty cells for missing values. Sweeps over other seeds
    may share the run directory: each writes a temporary of its own (the last to finish wins)."""
    write_csv(path, rows, RESULT_COLUMNS, shared=True)


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]
               ) -> list[dict[str, Any]]:
    """`old` with `new`'s rows added (a row in both, by `key`: `new`'s), in the order met; for tables that grow
    over several runs (a sweep's chunks, a curve's points)."""
    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in new})
    return list(merged.values())


def normalize(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add normalized_return: return / mean full-data BC return (over seeds) of the same task, split, data
    (`variant`, dropped from the rows returned)."""
    ref: dict[tuple, list[float]] = {}
    for r in raw:
        if methods.is_kind(r["method"], "normaliser"):  # full-data BC with true actions
            ref.setdefault((r["task"], r["split"], r["variant"]), []).append(r["return"])
    rows = []
    for r in raw:
        base = ref.get((r["task"], r["split"], r["variant"]))
        denom = float(np.mean(base)) if base else float("nan")
        norm = r["return"] / denom if base and denom != 0 else float("nan")
        rows.append({**{k: v for k, v in r.items() if k != "variant"}, "normalized_return": norm})
    return rows


def _num(value: str | None, kind: type, name: str, path: Path, line: int) -> float | int | None:
    if value is None:  # a row shorter than the header
        raise MasklamError(f"{path}:{line}: the row ends before column {name!r}")
    if value.strip() == "":
        return None
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (ValueError, OverflowError):  # OverflowError: int('inf')
        raise MasklamError(f"{path}:{line}: column {name!r} is not a{'n integer' if kind is int else ' number'}: "
                           f"{value!r}") from None


def _row(r: dict[str, str], path: Path, line: int) -> Row:
    ints = {c: _num(r[c], int, c, path, line) for c in ("latent_dim", "labels", "seed")}
    floats = {c: _num(r[c], float, c, path, line) for c in ("probe_nmse", "return", "normalized_return")}
    nan = float("nan")
    return Row(r["method"], r["task"], int(ints["latent_dim"] or 0), int(ints["labels"] or 0), int(ints["seed"] or 0),
               r["split"], floats["probe_nmse"], nan if floats["return"] is None else floats["return"],
               nan if floats["normalized_return"] is None else floats["normalized_return"],
               _num(r.get("success") or "", float, "success", path, line),
               {c: r[c] for c in RESULT_COLUMNS if c not in REQUIRED_COLUMNS and c != "success" and r.get(c)})


def as_rows(rows: list[dict[str, Any]], where: Path) -> list[Row]:
    """The rows a sweep returned (`normalize`'s dicts) as read_results would read them back from results.csv."""
    cells = [{c: "" if r.get(c) is None else str(r[c]) for c in RESULT_COLUMNS} for r in rows]
    return [_row(r, where, line) for line, r in enumerate(cells, start=2)]


def read_results(path: str | Path) -> list[Row]:
    """Parse results.csv into rows; a missing, unreadable or empty file or a missing required column raises
    MasklamError."""
    path = Path(path)
    cells = read_csv(path, "file")
    if not cells:
        raise MasklamError(f"{path}: no result rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in cells[0]]
    if missing:
        raise MasklamError(f"{path}: missing columns {missing}")
    return [_row(r, path, line) for line, r in enumerate(cells, start=2)]


@dataclass
class SeedStats:
    """A value aggregated over seeds: each seed's values averaged first, then mean, std and SE over seeds."""

    mean: float
    """mean over seeds of the per-seed means (nan without values)"""
    std: float
    """population std over seeds of the per-seed means"""
    sem: float
    """standard error over seeds (0 for one seed)"""
    per_seed: dict[int, float]
    """seed -> that seed's mean"""

    @property
    def n(self) -> int:
        """Number of seeds with a value."""
        return len(self.per_seed)

    def format(self, digits: int = 3) -> str:
        """'mean ± standard error' ('' without values; one seed has no standard error: 'mean (n=1)')."""
        if not self.n:
            return ""
        return f"{self.mean:.{digits}f} (n=1)" if self.n == 1 else f"{self.mean:.{digits}f} ± {self.sem:.{digits}f}"


def over_seeds(values: Iterable[tuple[int, float | None]]) -> SeedStats:
    """The one aggregation of results over seeds: (seed, value) pairs -> SeedStats. Missing values (None,
    nan) are skipped; values of one seed (e.g. over tasks, label budgets or dims) are averaged first."""
    by_seed: dict[int, list[float]] = {}
    for seed, v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        by_seed.setdefault(int(seed), []).append(float(v))
    if not by_seed:
        return SeedStats(float("nan"), 0.0, 0.0, {})
    per_seed = {s: float(np.mean(v)) for s, v in by_seed.items()}
    means = np.array(list(per_seed.values()))
    return SeedStats(float(means.mean()), float(means.std()), standard_error(means), per_seed)
