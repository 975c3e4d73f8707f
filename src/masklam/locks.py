"""One writer per output: an advisory lock that a second command writing the same file or directory meets at
once, as one line naming the process that holds it, instead of two writers corrupting each other's files.

`with output_lock(path):` locks ``<path>.lock`` (a sibling of the output, so it works for a file or a
directory not yet created) with `flock`: the kernel releases it when the holder exits, however it exits, so a
killed run never leaves a stale lock, and the next run simply takes it. The holder writes its pid and command
line into the lock file for the refusal message, and removes the file when done. Within one process the lock
is re-entrant (an experiment holding its run directory runs the collect stage that locks its own file).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from masklam.errors import MasklamError, MasklamRuntimeError
from masklam.resources import ensure_dir

SUFFIX = ".lock"
PROBE_RETRIES = 10
"""tries (50 ms apart) to take a held lock before saying who holds it: a reader's probe holds it for microseconds"""
_HELD: dict[Path, int] = {}
"""outputs this process holds, with their nesting depth"""


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of an output: ``<output>.lock`` beside it."""
    output = Path(output)
    return output.with_name(output.name + SUFFIX)


def _holder(fd: int) -> str:
    """What the holding process wrote into the lock file ('pid N: command'), or 'pid unknown'."""
    try:
        text = os.pread(fd, 512, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "pid unknown"


def _busy(output: str | os.PathLike, fd: int, hint: str) -> MasklamRuntimeError:
    """The one line for an output whose lock (open as `fd`) another process holds, naming that process."""
    return MasklamRuntimeError(f"{output} is being written by another masklam process ({_holder(fd)}); wait for it "
                               f"to finish{hint}")


def _acquire(lock: Path, output: Path, hint: str) -> int:
    """An open descriptor of `lock` holding its exclusive flock; one line naming the holder if another has it."""
    ensure_dir(lock.parent)
    tries = 0
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError as e:  # its folder, just made, taken back by a refused run that had made it too
            tries += 1
            if tries < PROBE_RETRIES:
                ensure_dir(lock.parent)
                continue
            raise MasklamError(f"cannot write beside {output}: {lock} ({e.strerror})") from None
        except OSError as e:  # no permission, a folder in the way
            raise MasklamError(f"cannot write beside {output}: {lock} ({e.strerror or type(e).__name__})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            tries += 1
            if tries < PROBE_RETRIES:  # perhaps only a reader's probe (`is_held`, `check_free`): it lets go at once
                os.close(fd)
                time.sleep(0.05)
                continue
            busy = _busy(output, fd, hint)
            os.close(fd)
            raise busy from None
        try:  # the previous holder may have removed the file between our open and our flock: lock the new one
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, hint: str = ", or write elsewhere") -> Iterator[None]:
    """Hold the lock of `output` (a file or directory this block writes); if another process holds it, raise
    MasklamRuntimeError at once: ``OUT is being written by another masklam process (pid N: masklam collect
    ...); wait for it to finish, or write elsewhere`` (`hint`: the end of that line, e.g. ", or use another
    --out")."""
    key = Path(output).resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    lock = lock_path(key)
    made = [d for d in (lock.parent, *lock.parent.parents) if not d.exists()]  # deepest first
    fd = _acquire(lock, Path(output), hint)
    try:
        command = " ".join(["masklam"] + sys.argv[1:]) if sys.argv and "masklam" in sys.argv[0] else " ".join(sys.argv)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {command[:200]}\n".encode(), 0)
    except OSError:
        pass  # a full disk: the lock holds all the same, only the message lacks the command
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        lock.unlink(missing_ok=True)
        os.close(fd)
        for d in made:  # folders made for the lock alone (a run refused before writing anything): gone again
            try:
                d.rmdir()
            except OSError:  # holds the output, or something else
                break


def _held_elsewhere(output: str | os.PathLike) -> int | None:
    """An open descriptor of `output`'s lock file while another process holds the lock (the caller closes it);
    None when nobody else does. Takes nothing."""
    lock = lock_path(Path(output).resolve())
    if Path(output).resolve() in _HELD or not lock.is_file():
        return None
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return fd
    except OSError:  # a file system without locks (NFS without lockd): nothing known of a holder
        os.close(fd)
        return None
    os.close(fd)  # closing the descriptor drops the shared lock just taken
    return None


def check_free(output: str | os.PathLike, hint: str = "") -> None:
    """One line naming the holder if another process holds `output`'s lock now (a reader that must not run beside
    its writer: a report beside the sweep that writes the run directory); takes nothing."""
    fd = _held_elsewhere(output)
    if fd is not None:
        try:
            raise _busy(output, fd, hint)
        finally:
            os.close(fd)


def is_held(output: str | os.PathLike) -> bool:
    """True while another process holds `output`'s lock: it is computing that output now (a stage of a running
    sweep, however long since it last wrote a file)."""
    fd = _held_elsewhere(output)
    if fd is not None:
        os.close(fd)
    return fd is not None


@contextlib.contextmanager
def queued_lock(output: str | os.PathLike) -> Iterator[None]:
    """Hold a lock on `output`, waiting while another process holds it: for short read-merge-write sections that
    processes take in turn (two benchmark runs committing their points into one csv). Its file lies in the temporary
    directory, named for `output`'s path, so it is never staged beside a committed file, and is removed when
    released."""
    lock = queued_lock_path(output)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel releases it when the holder exits, however it exits
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:  # still the file at that name: ours
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed it while this process waited: take the file there now
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while held: a waiter on it finds it gone and takes the next one
        os.close(fd)


def queued_lock_path(output: str | os.PathLike) -> Path:
    """The lock file of `queued_lock`: in the temporary directory, named for `output`'s path."""
    import hashlib
    import tempfile

    key = str(Path(output).resolve())
    return Path(tempfile.gettempdir()) / f"masklam-{hashlib.sha1(key.encode()).hexdigest()[:16]}{SUFFIX}"

