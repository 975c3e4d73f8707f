"""Values read from a config file, checked against the types of the dataclass fields they set, before any work.

tyro checks every command line against a config dataclass; a TOML/JSON file (an experiment's tables) is
checked here against the same dataclasses, generically from their annotations, so ``episodes = "ten"`` in
``[data.cheetah-run.collect]`` is one line, ``[data.cheetah-run.collect] episodes = "ten": expected an
integer``, not a TypeError deep in a stage. Understood: bool, int, float, str, Path, Literal, unions (``X |
None``), list/tuple/Sequence (of a type, or fixed-length tuples), dict, Any, and plain classes.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from masklam.errors import MasklamError

_NOUNS = {bool: "boolean (true or false)", int: "integer", float: "number", str: "string", Path: "path (a string)",
          os.PathLike: "path (a string)", dict: "table", type(None): "nothing"}


def field_types(cls: type) -> dict[str, Any]:
    """A dataclass's field name -> resolved annotation."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def _args(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def matches(value: Any, tp: Any) -> bool:
    """Whether `value` (as a TOML/JSON parser gives it) can set a field annotated `tp`."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return True
    if tp is type(None) or tp is None:
        return value is None
    if _is_union(tp):
        return any(matches(value, a) for a in _args(tp))
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in _args(tp))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp in (Path, os.PathLike) or (isinstance(tp, type) and issubclass(tp, os.PathLike)):
        return isinstance(value, (str, os.PathLike))
    if origin in (list, tuple, collections.abc.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = _args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return all(matches(v, args[0]) for v in value) if args else True
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        args = _args(tp)
        return isinstance(value, dict) and (not args or all(matches(v, args[1]) for v in value.values()))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation this checker does not know: the dataclass's own checks decide


def describe(tp: Any) -> str:
    """What a field annotated `tp` expects, in words ("an integer", "a list of integers", "one of 'a', 'b'")."""
    origin = typing.get_origin(tp)
    if _is_union(tp):
        parts = [describe(a) for a in _args(tp) if a is not type(None)]
        return " or ".join(dict.fromkeys(parts)) or "nothing"
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in _args(tp))
    if origin in (list, tuple, collections.abc.Sequence):
        args = _args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)}: " + ", ".join(describe(a) for a in args)
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        return "a table"
    noun = _NOUNS.get(tp, getattr(tp, "__name__", str(tp)))
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _plural(tp: Any) -> str:
    if tp in _NOUNS and tp is not bool:
        return _NOUNS[tp].replace("path (a string)", "paths (strings)") + ("" if tp in (Path, os.PathLike) else "s")
    return describe(tp)


def show(value: Any) -> str:
    """A value as the config file spells it (strings quoted)."""
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def check_values(table: str, values: dict[str, Any], cls: type | dict[str, Any]) -> None:
    """One-line MasklamError for the first value of `values` whose type does not fit `cls`'s field of that name
    (a dataclass, or a dict name -> annotation): ``[TABLE] KEY = VALUE: expected WHAT``. Keys it does not have
    are left to the caller (its unknown-key check)."""
    types_ = cls if isinstance(cls, dict) else field_types(cls)
    for key, value in values.items():
        if key in types_ and not matches(value, types_[key]):
            where = f"[{table}] " if table else ""
            raise MasklamError(f"{where}{key} = {show(value)}: expected {describe(types_[key])}")
