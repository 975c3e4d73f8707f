"""Disk space and memory: a shortage that can be foreseen is one line before any work; a disk that fills up
mid-write is one line naming the file, and nothing is left under the final name.

- `check_free_space(path, need, what)` / `check_memory(need, what)` (MemAvailable or, tighter, the memory
  cgroup's limit: `cgroup_available`): before work whose size is known (the merge
  of a dataset's part files, loading a whole dataset into RAM);
- `disk_full(path)` / `raise_if_disk_full(e, path)` / `is_disk_full(e)`: ENOSPC or EDQUOT (also as HDF5 reports
  it) -> `MasklamRuntimeError` (the CLI exits 1): ``no space left on the device of PATH (12.0 MB free) ...``;
- `GuardedFile`: the on-disk file HDF5 writes through (`masklam.data.hdf5.write_atomically`). HDF5 does not
  survive a failed write: it floods stderr and then crashes the process (exit 139). Through a GuardedFile it
  never sees one: writes after ENOSPC are dropped, the writer finishes, and the caller raises `disk_full` and
  deletes the temporary file.

Every resumable writer (collect's part files, masks' parts, checkpoints) keeps what it finished, so the same
command resumes once space is freed.
"""
from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

from masklam.errors import MasklamError, MasklamRuntimeError, one_line

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("errno = 28", "No space left on device", "Disk quota exceeded")


def human(n: float) -> str:
    """Bytes as a short human size (``12.0 MB``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # unreachable


def _existing(path: str | os.PathLike) -> Path:
    """`path` or its nearest existing ancestor (where a not-yet-created output's space is)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free to this user on the file system that holds (or will hold) `path`."""
    return shutil.disk_usage(_existing(path)).free


NEARLY_FULL = 1 << 20
"""a failed write with less than this free (1 MiB) is a full disk, whatever the writer said (torch.save's
"file write failed" and safetensors' errors name no errno)"""


def is_disk_full(e: BaseException, path: str | os.PathLike | None = None) -> bool:
    """Whether an exception is a full disk or an exceeded quota (as the OS or HDF5 reports it; given the `path`
    written, also any error of its writer while its file system is nearly full)."""
    if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
        return True
    if not isinstance(e, Exception) or isinstance(e, MasklamError):  # an interrupt; a one-line error of ours, which
        return False  # names its cause (a bad value, a missing file, a full disk already) however full the disk is
    return any(t in str(e) for t in _DISK_FULL_TEXT) or (path is not None and free_bytes(path) < NEARLY_FULL)


def disk_full(path: str | os.PathLike, need: int | None = None) -> MasklamRuntimeError:
    """The one-line error for a full disk while writing `path` (`need`: bytes it needed, where known)."""
    needed = f", needs about {human(need)}" if need else ""
    return MasklamRuntimeError(f"no space left on the device of {path} ({human(free_bytes(path))} free{needed}); "
                               "free some space and run the same command again to resume")


def raise_if_disk_full(e: BaseException, path: str | os.PathLike, need: int | None = None) -> None:
    """Raise `disk_full(path)` instead of `e` if it is a full disk (in an ``except`` clause, before ``raise``)."""
    if is_disk_full(e, path):
        raise disk_full(path, need) from None


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The file (not a folder) at `path` or at one of its parents, which keeps `path` from being a folder; None."""
    return next((p for p in (Path(path), *Path(path).parents) if p.exists() and not p.is_dir()), None)


def ensure_dir(path: str | os.PathLike) -> None:
    """``mkdir -p path``; a full disk, or a path that cannot be a folder (a file in the way, no permission), as
    one line naming it."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise_if_disk_full(e, path)
        blocker = file_in_the_way(path)
        if blocker is not None:
            raise MasklamError(f"cannot create the folder {path}: {blocker} is a file, where a folder is needed") \
                from None
        raise MasklamError(f"cannot create the folder {path} ({one_line(e)})") from None


def check_free_space(path: str | os.PathLike, need: int, what: str) -> None:
    """One line before work if the file system of `path` has less than `need` bytes free for `what`."""
    free = free_bytes(path)
    if free < need:
        raise MasklamRuntimeError(f"not enough disk space for {what}: {path} needs about {human(need)}, "
                                  f"{human(free)} free; free some space and run the same command again to resume")


_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge number (2**63 rounded to pages)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # v2 writes "max" for no limit


def _page_cache(stat: Path, keys: tuple[str, ...]) -> int:
    """File pages (active and inactive) the kernel reclaims before it kills anything, which the cgroup's usage
    counts as used: the sum of memory.stat's `keys`."""
    total = 0
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name in keys and value.strip().isdigit():
                total += int(value)
    except OSError:
        pass
    return total


def cgroup_available(proc_cgroup: str | os.PathLike = "/proc/self/cgroup",
                     root: str | os.PathLike = "/sys/fs/cgroup") -> int | None:
    """Bytes this process's memory cgroup still allows (its limit or any ancestor's, minus what is in use
    and not reclaimable), v1 or v2; None when no limit is set or the cgroup cannot be read. A container's
    limit is often far below the host's MemAvailable, and crossing it gets the process OOM-killed."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    root = Path(root)
    for line in lines:  # "ID:CONTROLLERS:PATH"; v2 is "0::PATH", v1's memory line names "memory"
        _, controllers, rel = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "" and (root / "cgroup.controllers").exists():
            base, files = root, ("memory.max", "memory.current", ("active_file", "inactive_file"))
            break
        if "memory" in controllers.split(","):
            base, files = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                            ("total_active_file", "total_inactive_file"))
            break
    else:
        return None
    chain = [base / rel.strip("/"), *(base / rel.strip("/")).parents]  # its own cgroup, then each ancestor
    dirs = [d for d in chain[:chain.index(base) + 1] if d.is_dir()]  # ... up to the mount (each limit applies)
    best = None
    for d in dirs:
        limit, usage = _read_int(d / files[0]), _read_int(d / files[1])
        if limit is None or usage is None or limit >= _UNLIMITED:
            continue
        left = max(0, limit - max(0, usage - _page_cache(d / "memory.stat", files[2])))
        best = left if best is None else min(best, left)
    return best


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation: Linux MemAvailable, or less where the process's memory
    cgroup (a container's limit) allows less; None where neither is known."""
    host = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    host = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if host is None:
        try:
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    known = [v for v in (host, cgroup_available()) if v is not None]
    return min(known) if known else None


def check_memory(need: int, what: str) -> None:
    """One line before work if `what` needs more memory than is available (instead of the OOM killer later)."""
    free = available_memory()
    if free is not None and need > free:
        raise MasklamRuntimeError(f"not enough memory for {what}: needs {human(need)}, {human(free)} available; "
                                  "use fewer trajectories or files, or a machine with more memory")


class GuardedFile(io.RawIOBase):
    """An unbuffered on-disk file that never fails a write for lack of space: the first ENOSPC/EDQUOT is kept
    in `.full` and every later write is dropped (reported as done). Check `.full` after closing the writer;
    the file's content is then incomplete and must be deleted (`write_atomically` does)."""

    def __init__(self, path: str | os.PathLike, mode: str = "w+b") -> None:
        super().__init__()
        self.path = Path(path)
        self._f = open(path, mode, buffering=0)  # noqa: SIM115 (closed in close())
        self.full: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 (a writable buffer)
        return self._f.readinto(buffer)

    def _guard(self, e: OSError) -> None:
        if e.errno not in DISK_FULL_ERRNOS:
            raise e
        self.full = self.full or e

    def write(self, data) -> int:  # noqa: ANN001 (a bytes-like object)
        view = memoryview(data).cast("B")
        if self.full is None:
            try:
                done = 0
                while done < len(view):
                    done += self._f.write(view[done:])
            except OSError as e:
                self._guard(e)
        return len(view)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def truncate(self, size: int | None = None) -> int:
        try:
            return self._f.truncate(size)
        except OSError as e:
            self._guard(e)
            return self._f.tell() if size is None else size

    def flush(self) -> None:
        pass  # unbuffered: nothing to flush

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        if not self.closed:
            try:
                self._f.close()
            except OSError as e:
                self._guard(e)
        super().close()
