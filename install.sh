#!/usr/bin/env bash
# Installs masklam into ./.venv on a fresh machine (CPU build of PyTorch, no CUDA packages).
#   bash install.sh         the library and its command `masklam`
#   bash install.sh --dev   the same plus the test tools
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: the CPU build 2.13.0. Anything later that asks for torch finds it satisfied.
.venv/bin/python -m pip install -q "torch==2.13.0"
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
.venv/bin/python -m pip install -q -e ".${extras}"
