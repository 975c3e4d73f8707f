"""Resumable dataset writing: one atomic part file per finished item, merged into the dataset at the end.

A writer that produces a dataset ``OUT`` item by item (`masklam collect`: a trajectory; `masklam import`: a
source file, folder or episode) keeps each finished item ``i`` as ``OUT.parts/00000i.h5``, written through
`write_atomically` (complete or absent), next to ``OUT.parts/config.json`` (the arguments that made them).
A re-run checks its arguments against config.json, keeps every part and writes only the missing ones;
`merge_parts` then copies the parts' trajectory groups into ``OUT`` (again atomically) and the folder goes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

from masklam.data.hdf5 import check_attrs, open_file, plain, trajectory_names, write_atomically
from masklam.errors import MasklamError, note_once
from masklam.files import write_json


def parts_dir(out: Path) -> Path:
    """The folder of ``out``'s part files."""
    return out.with_name(out.name + ".parts")


def part_path(out: Path, index: int) -> Path:
    """Item ``index``'s part file."""
    return parts_dir(out) / f"{index:06d}.h5"


def prepare_parts(out: Path, attrs: dict[str, Any]) -> set[int]:
    """Create or check ``OUT.parts``; delete temporaries of killed writers; return the finished item indices.

    The arguments (``attrs``) must match those of the run that wrote the parts (MasklamError otherwise)."""
    folder = parts_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("*.tmp*"), *folder.glob("*.move")]:  # a killed writer's, a killed move's
        stale.unlink()
    finished = {int(p.stem) for p in folder.glob("[0-9]*.h5") if p.stem.isdigit()}
    config = folder / "config.json"
    if finished and not config.is_file():  # parts whose arguments are unknown: nothing to check them by
        for i in finished:
            part_path(out, i).unlink()
        note_once(("parts-unchecked", str(folder)), f"{folder} holds {len(finished)} finished items but no "
                  "config.json to check their arguments by: written again")
        finished = set()
    if finished:  # the arguments matter only once there are items to keep
        check_attrs(folder, json.loads(config.read_text()), attrs)
    else:
        write_json(config, attrs, indent=1)
    return finished


def merge_parts(out: Path, attrs: dict[str, Any], indices: Iterable[int], keep: int = 0,
                summary: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None) -> int:
    """Write ``out`` (atomically): its own first ``keep`` trajectories, then every trajectory group of the parts
    ``indices`` in order, renumbered ``keep, keep+1, ...``; file attrs ``attrs``, plus ``summary(group attrs of
    every trajectory)`` when given (e.g. the mean return). Returns the number of trajectories written."""
    copied: list[dict[str, Any]] = []
    with write_atomically(out) as dst:
        dst.attrs.update(attrs)
        n = 0
        if keep:
            with open_file(out) as src:
                for name in trajectory_names(src)[:keep]:
                    src.copy(src[name], dst, name=str(n))
                    copied.append(dict(src[name].attrs))
                    n += 1
        for index in indices:
            part = part_path(out, index)
            with open_file(part) as src:
                names = trajectory_names(src)
                if not names:
                    raise MasklamError(f"{part} holds no trajectory; delete it and run again")
                for name in names:
                    src.copy(src[name], dst, name=str(n))
                    copied.append(dict(src[name].attrs))
                    n += 1
        if summary is not None:
            dst.attrs.update(summary([{k: plain(v) for k, v in a.items()} for a in copied]))
    return n


def remove_parts(out: Path) -> None:
    """Delete ``OUT.parts`` (after the merge, or left over by a run killed after its final rename)."""
    if parts_dir(out).exists():
        shutil.rmtree(parts_dir(out))
