"""Renamed user-facing names keep working for a while: an old command-line option or config key is read as its
new name, with a one-line notice on stderr, so a user's script or config does not break (silently or loudly)
the day a name changes.

One table per kind of name, each entry dated so that it can be dropped a few releases later:
- OPTIONS: `--old-flag` -> `--new-flag`, for every command (`masklam.args.parse` rewrites the command line
  before tyro reads it; `--old=value` and a boolean's `--no-old` too);
- CONFIG_KEYS: a top-level key of an experiment config (`masklam experiment`; each file of an `extends` chain
  is read through `rename_keys`).
Giving both the old and the new name is one line of error, not a guess at which one was meant.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from masklam.errors import MasklamError, note_once


class Renamed(NamedTuple):
    """The new name of an old one, and the date it was renamed."""

    new: str
    since: str


OPTIONS: dict[str, Renamed] = {}
"""Command-line options, hyphenated: {"--old-name": Renamed("--new-name", "YYYY-MM-DD")}. One table for every
command: an option renamed in one command is renamed in all that have it."""
CONFIG_KEYS: dict[str, Renamed] = {
    "pretrain_workers": Renamed("train_workers", "2026-12-05"),  # it schedules the full-data BCs too
}
"""Top-level keys of experiment configs."""


def notice(old: str, new: Renamed, where: str = "") -> None:
    """The one-line deprecation notice on stderr, once per process for each name and place."""
    at = f"{where}: " if where else ""
    note_once(("renamed", where, old),
              f"{at}{old} is now {new.new} (renamed {new.since}); the old name still works for a while")


def rename_keys(table: dict[str, Any], where: str, renamed: dict[str, Renamed] | None = None) -> dict[str, Any]:
    """`table` with each old key under its new name (a copy; the order of the keys is kept), after a notice;
    one-line MasklamError naming `where` when it gives a key under both names."""
    renamed = CONFIG_KEYS if renamed is None else renamed
    if not any(k in renamed for k in table):
        return table
    out: dict[str, Any] = {}
    for key, value in table.items():
        new = renamed.get(key)
        if new is None:
            out[key] = value
            continue
        if new.new in table:
            raise MasklamError(f"{where}: {key} and {new.new} are one setting ({key} is its old name): keep "
                               f"{new.new} only")
        notice(key, new, where)
        out[new.new] = value
    return out


def _split(token: str) -> tuple[str, str]:
    """`--name=value` -> ("--name", "=value"); `--name` -> ("--name", "")."""
    name, eq, value = token.partition("=")
    return name, eq + value


def _canonical(name: str) -> str:
    """An option as the tables spell it: `--old_name` -> `--old-name` (tyro takes both spellings)."""
    return "--" + name[2:].replace("_", "-") if name.startswith("--") else name


def _positive(name: str) -> str:
    """A boolean's two forms as one: `--no-flag` -> `--flag`."""
    return "--" + name[5:] if name.startswith("--no-") else name


def rename_options(argv: list[str], renamed: dict[str, Renamed] | None = None) -> list[str]:
    """The command line with each old option under its new name (`--old`, `--old=value`, `--no-old`), after a
    notice; one-line MasklamError when an option is given under both names. Tokens after `--` stay as they are."""
    renamed = OPTIONS if renamed is None else renamed
    if not renamed:
        return argv
    negated = {"--no-" + old[2:]: Renamed("--no-" + new.new[2:], new.since) for old, new in renamed.items()}
    table = {**renamed, **negated}
    end = argv.index("--") if "--" in argv else len(argv)
    names = [_canonical(_split(t)[0]) for t in argv[:end]]
    given = {_positive(n) for n in names}
    out: list[str] = []
    for token, name in zip(argv[:end], names):
        new = table.get(name)
        if new is None:
            out.append(token)
            continue
        if _positive(new.new) in given:
            raise MasklamError(f"{name} and {new.new} are one option ({name} is its old name): give {new.new} only")
        notice(name, new)
        out.append(new.new + _split(token)[1])
    return out + argv[end:]
