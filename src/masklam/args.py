"""Command-line parsing for every `masklam` command: `parse(ConfigClass, argv)`.

One mechanism for all commands: tyro builds the parser from the config dataclass (its field docstrings are
the `--help` text, which stays tyro's full help), and every input tyro rejects (an invalid choice, an unknown
or misspelt option, a missing required option, a value of the wrong type) becomes a `MasklamError` with one
line naming the option, e.g. ``--method: invalid choice 'nope'; one of: lapo, masklam, laom, laom-sup``.
`masklam.cli` prints it as ``masklam: error: ...`` and exits 2, as for any other bad input.
"""
from __future__ import annotations

import contextlib
import dataclasses
import typing
import difflib
import io
import re
import sys
from contextvars import ContextVar
from typing import Any, Iterator, TypeVar

from masklam.errors import MasklamError
from masklam.renames import rename_options

T = TypeVar("T")

PROG: ContextVar[str] = ContextVar("masklam_prog", default="masklam")
"""The command being parsed, as usage lines show it (`masklam.cli` sets e.g. "masklam pretrain")."""


class UsageError(MasklamError):
    """The command line does not parse (a MasklamError: one line, exit 2)."""


def parse(config_cls: type[T], argv: list[str]) -> T:
    """`config_cls` from the command line `argv` (tyro), options renamed since read under their new names
    (masklam.renames); a rejected command line raises UsageError (one line)."""
    import tyro

    argv = rename_options(argv)
    prog = PROG.get()
    hooks = getattr(getattr(tyro, "_errors", None), "on_parse_error", None)
    if hooks is None:  # an older tyro without the parse-error hook: condense its error box instead
        return _parse_condensed(config_cls, argv, prog)
    with hooks(lambda event: _raise_for(event, config_cls)):
        return tyro.cli(config_cls, args=argv, prog=prog)


def _flag(argument: Any) -> str:
    """An argument's flag as the user types it (`--updates`), or its metavar when positional."""
    lowered = argument.lowered
    flags = [f for f in (lowered.name_or_flags or ()) if f.startswith("--")]
    return flags[0] if flags else str(lowered.metavar or argument.display_name())


def known_flags(config_cls: type) -> list[str]:
    """The `--flags` of a (flat) config dataclass as tyro names them (a `tyro.conf.arg(name=...)`'s name; no
    positional), including the `--no-` forms of booleans."""
    if not dataclasses.is_dataclass(config_cls):
        return []
    try:
        hints = typing.get_type_hints(config_cls, include_extras=True)
    except Exception:  # noqa: BLE001 (an annotation that cannot be resolved: the field names as they are)
        hints = {}
    flags = []
    for f in dataclasses.fields(config_cls):
        meta = getattr(hints.get(f.name), "__metadata__", ())
        if any(repr(m) == "Positional" for m in meta):
            continue
        named = [m.name for m in meta if getattr(m, "name", None)]
        name = "--" + (named[0] if named else f.name).replace("_", "-")
        flags.append(name)
        if f.type in (bool, "bool") or hints.get(f.name) is bool:
            flags.append("--no-" + name[2:])
    return flags


def _unknown_message(tokens: list[str], config_cls: type) -> str:
    flags = [t for t in tokens if t.startswith("-")] or tokens
    token = flags[0].split("=", 1)[0]
    close = difflib.get_close_matches(token, known_flags(config_cls), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else "; see --help"
    return f"unrecognized option {token}{hint}" if token.startswith("-") else f"unexpected argument {token!r}{hint}"


def _raise_for(event: Any, config_cls: type) -> None:
    """tyro's parse-error hook: raise a one-line UsageError for every kind of rejected input."""
    from tyro import _errors as e

    if isinstance(event, e.InvalidChoice):
        raise UsageError(f"{_flag(event.argument)}: invalid choice {event.value!r}; one of: "
                         f"{', '.join(map(str, event.choices))}")
    if isinstance(event, e.UnrecognizedArgs):
        raise UsageError(_unknown_message(list(event.tokens), config_cls))
    if isinstance(event, e.MissingArgs):
        missing = [_flag(a.arg) for a in event.missing_arguments]
        raise UsageError(f"missing required option{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    if isinstance(event, e.InstantiationFailure):
        message = " ".join(str(event.message).split("\n\n")[0].split())
        where = f"{_flag(event.argument)}: " if event.argument is not None else ""
        raise UsageError(f"{where}invalid value: {message}")
    if isinstance(event, e.BadValue):
        flag = _flag(event.argument)
        if not flag.startswith("-") and event.offending_value is None:  # a positional argument not given
            prog = getattr(event, "prog", "masklam COMMAND")
            raise UsageError(f"missing {flag} (given without a flag: {prog} {flag} ...)")
        got = f" {event.offending_value!r}" if event.offending_value is not None else ""
        metavar = getattr(getattr(event.argument, "lowered", None), "metavar", None)
        wants = f" (takes {metavar})" if metavar and flag.startswith("-") else ""
        raise UsageError(f"{flag}: bad or missing value{got}{wants}")
    if isinstance(event, e.MutexConflict):
        raise UsageError(f"{event.first_token} and {event.second_token} cannot be used together")
    raise UsageError(f"cannot parse the command line ({type(event).__name__}); see {event.prog} --help")


_BOX = re.compile(r"[│╭╮╰╯─┃━]")


@contextlib.contextmanager
def _stderr_to(buffer: io.StringIO) -> Iterator[None]:
    previous, sys.stderr = sys.stderr, buffer
    try:
        yield
    finally:
        sys.stderr = previous


def _parse_condensed(config_cls: type[T], argv: list[str], prog: str) -> T:
    """Fallback for a tyro without parse-error hooks: capture its error box and keep its first statement."""
    import tyro

    buffer = io.StringIO()
    try:
        with _stderr_to(buffer):
            result = tyro.cli(config_cls, args=argv, prog=prog)
    except SystemExit as exit_:
        if exit_.code in (0, None):
            raise
        lines = [_BOX.sub("", line).strip() for line in buffer.getvalue().splitlines()]
        body = [line for line in lines if line]
        text = " ".join(body[1:3] if len(body) > 1 else body) or "cannot parse the command line"
        raise UsageError(" ".join(text.split())) from None
    sys.stderr.write(buffer.getvalue())  # warnings of a successful parse
    return result
