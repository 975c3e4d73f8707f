"""Crash-safe files: every write goes to a temporary name and is renamed into place, so an
interrupted run never leaves a half-written JSON, checkpoint or dataset part behind; a disk that fills up
during a write is one line naming the file (`masklam.resources.disk_full`); every read of a missing or
corrupt file is one line naming the file (MasklamError).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from masklam.errors import MasklamError
from masklam.resources import disk_full, ensure_dir, is_disk_full


@contextlib.contextmanager
def atomic_path(path: str | Path, shared: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; on success rename it to `path`, on error remove it (a full
    disk: one-line MasklamRuntimeError naming `path`). `shared`: processes that hold no lock may write `path` at
    once (a cache every run fills), so each writes a temporary of its own (`path`.PID-RANDOM.tmp)."""
    path = Path(path)
    ensure_dir(path.parent)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp" if shared else path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        full = is_disk_full(e, tmp)  # before the temporary's space is freed
        tmp.unlink(missing_ok=True)
        if full:
            raise disk_full(path) from None
        raise


def write_json(path: str | Path, obj: Any, indent: int = 2, shared: bool = False) -> None:
    """Atomically write `obj` as indented JSON (non-JSON values as str); `shared`: as `atomic_path`'s."""
    write_text(path, json.dumps(obj, indent=indent, default=str), shared)


def write_text(path: str | Path, text: str, shared: bool = False) -> None:
    """Atomically write a text file; `shared`: as `atomic_path`'s."""
    with atomic_path(path, shared) as tmp:
        tmp.write_text(text)


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read a JSON file; one-line MasklamError if it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MasklamError(f"no such {what}: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MasklamError(f"{path} is not valid JSON ({e})") from None
    except OSError as e:  # a folder, no permission
        raise MasklamError(f"cannot read the {what} {path} ({e.strerror or type(e).__name__})") from None


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]], columns: list[str], shared: bool = False) -> None:
    """Atomically write `rows` under a header of `columns`: a missing or None cell is empty, keys outside `columns`
    are left out; `shared`: as `atomic_path`'s."""
    with atomic_path(path, shared) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows({c: ("" if r.get(c) is None else r[c]) for c in columns} for r in rows)


def read_csv(path: str | Path, what: str = "table", missing_ok: bool = False) -> list[dict[str, str]]:
    """A csv file's rows as header -> cell (str); a missing file is [] with `missing_ok`, else, like an unreadable
    or malformed one, a one-line MasklamError naming it."""
    path = Path(path)
    if missing_ok and not path.exists():
        return []
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        raise MasklamError(f"no such {what}: {path}") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise MasklamError(f"{path} is not a valid csv file ({e})") from None
    except OSError as e:
        raise MasklamError(f"cannot read the {what} {path} ({e.strerror or type(e).__name__})") from None


def config_record(cfg: Any) -> dict[str, Any]:
    """A command's config dataclass as JSON values (paths as text): every option, defaults included, as the run
    that wrote it resolved them."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def read_record(path: str | Path) -> dict[str, Any]:
    """A JSON object a run keeps beside its work (a stage's stage.json, a parts folder's config.json); {} without
    one, or while it is being rewritten (a kill mid-write leaves nothing to trust)."""
    try:
        found = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
