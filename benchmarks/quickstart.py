"""Time and peak memory of `masklam quickstart`, end to end, in a fresh run directory.

    .venv/bin/python benchmarks/quickstart.py [--preset cpu] [--out runs/quickstart_bench] [--keep]

Peak memory is the largest sum of resident memory over the quickstart's whole process tree (the main
process and its collection/evaluation workers), sampled every 0.2 s from /proc.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
        todo += children.get(p, [])
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--out", default="runs/quickstart_bench")
    ap.add_argument("--keep", action="store_true", help="keep an existing run directory (measures a resumed run)")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "masklam", "quickstart", "--preset", args.preset, "--out", str(out), "--no-progress"]
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.2)
    seconds = time.time() - t0
    print("\n| measure | value |\n|---|---|")
    print(f"| command | `masklam quickstart --preset {args.preset}` |")
    print(f"| exit code | {proc.returncode} |")
    print(f"| wall time | {seconds / 60:.1f} min ({seconds:.0f} s) |")
    print(f"| peak memory (process tree) | {peak / 2**30:.2f} GiB |")
    print(f"| machine | {os.cpu_count()} cores, {platform.machine()}, {date.today().isoformat()} |")
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
