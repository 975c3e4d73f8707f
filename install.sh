#!/usr/bin/env bash
# Installs masklam into ./.venv on a fresh machine (CPU build of PyTorch, no CUDA packages).
#   bash install.sh               the library and its command `masklam`
#   bash install.sh --dev         the same plus the test tools (and Meta-World, whose tests CI runs)
#   bash install.sh --metaworld   the library plus Meta-World (the mw-* tasks); may be combined with --dev
#   bash install.sh --sam2        the library plus transformers, for SAM 2 masks (`masklam masks --weights ...`; in --dev)
set -euo pipefail
cd "$(dirname "$0")"
extras=()
for arg in "$@"; do
  case "$arg" in
    --dev) extras+=(dev) ;;
    --metaworld) extras+=(metaworld) ;;
    --sam2) extras+=(sam2) ;;
    --papers) echo "install.sh: note: --papers is no longer needed (pyarrow, for parquet data, is always installed)" >&2 ;;
    *) echo "install.sh: unknown option $arg (use --dev, --metaworld and/or --sam2)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: the CPU build 2.13.0. Anything later that asks for torch finds it satisfied. A local wheel
# where pip's find-links has one (no index asked), else PyTorch's CPU index: PyPI's torch is a CUDA build (GBs).
if .venv/bin/python -m pip install -q --no-index --no-deps "torch==2.13.0+cpu" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0"  # its dependencies, from the registry
else
  .venv/bin/python -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi
spec="."
[ ${#extras[@]} -gt 0 ] && spec=".[$(IFS=,; echo "${extras[*]}")]"
.venv/bin/python -m pip install -q -e "$spec"
