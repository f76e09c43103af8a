#!/usr/bin/env bash
# Install everything tune_distill needs into ./.venv, from scratch or on top of what is there.
# torch is installed first and pinned here (a CPU wheel), so pip never resolves a CUDA build on
# its own; the project itself only asks for a range.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
python -m pip install -q -e ".[dev]"
python scripts/install_minkowski.py || echo "setup: MinkowskiEngine (optional backend) not installed; its tests will be skipped" >&2
