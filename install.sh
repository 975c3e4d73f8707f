#!/usr/bin/env bash
# Installs masklam into ./.venv on a fresh machine (CPU build of PyTorch, no CUDA packages).
#   bash install.sh               the library and its command `masklam`
#   bash install.sh --dev         the same plus the test tools (and Meta-World, whose tests CI runs)
#   bash install.sh --metaworld   the library plus Meta-World (the mw-* tasks); may be combined with --dev
#   bash install.sh --papers      the library plus pyarrow, to read MaskLAM's published parquet data (in --dev too)
set -euo pipefail
cd "$(dirname "$0")"
extras=()
for arg in "$@"; do
  case "$arg" in
    --dev) extras+=(dev) ;;
    --metaworld) extras+=(metaworld) ;;
    --papers) extras+=(papers) ;;
    *) echo "install.sh: unknown option $arg (use --dev, --metaworld and/or --papers)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: the CPU build 2.13.0. Anything later that asks for torch finds it satisfied.
.venv/bin/python -m pip install -q "torch==2.13.0"
spec="."
[ ${#extras[@]} -gt 0 ] && spec=".[$(IFS=,; echo "${extras[*]}")]"
.venv/bin/python -m pip install -q -e "$spec"
