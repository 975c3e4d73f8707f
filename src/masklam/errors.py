"""One exception type for bad input: the CLI prints its message as a single line and exits 2; its subclass
MasklamRuntimeError for faults met while working (exit 1). And `note_once`, the one-line notice that is not an
error (a renamed option, a file read with a correction), said once per process. And `check_at_least`, the range
check of a config's numbers that names each value it refuses.

It deliberately is not a ValueError: tyro turns ValueErrors raised in a config's `__post_init__` into
a multi-line box; a MasklamError passes through tyro to `masklam.cli.main`, which prints one line.
"""
from __future__ import annotations

import sys
from typing import Hashable

_said: set[Hashable] = set()
"""the keys of the notices this process has written"""


class MasklamError(Exception):
    """Bad input or state the user can fix (missing file, unknown task, bad config value, ...).

    The message must name the problem in one line, e.g. ``"no such file: data/x.h5"``.
    """


class MasklamRuntimeError(MasklamError):
    """A fault met while working, not a bad input: a full disk, another process writing the same output, a
    crashed worker. One line like any MasklamError; the CLI exits 1 for it (2 is for bad input)."""


def one_line(e: BaseException) -> str:
    """An exception as one line: ``Type: first line of its message`` (a MasklamError: its message)."""
    if isinstance(e, MasklamError):
        return str(e)
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def note_once(key: Hashable, message: str) -> None:
    """``masklam: note: <message>`` on stderr, the first time this process meets ``key``; written around any
    progress bar on the screen, not through it."""
    if key in _said:
        return
    _said.add(key)
    from tqdm.auto import tqdm

    tqdm.write(f"masklam: note: {message}", file=sys.stderr)
    sys.stderr.flush()


def check_at_least(minimum: float, strictly: bool = False, **values: float) -> None:
    """One MasklamError naming every value below `minimum` (at or below it when `strictly`; NaN always fails), e.g.
    ``check_at_least(1, labels=n, updates=u)`` -> "labels must be >= 1, got 0"."""
    bad = [f"{name} must be {'>' if strictly else '>='} {minimum:g}, got {value}" for name, value in values.items()
           if not (value > minimum if strictly else value >= minimum)]
    if bad:
        raise MasklamError("; ".join(bad))
