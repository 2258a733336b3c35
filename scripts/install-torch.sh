#!/usr/bin/env bash
# Install torch into the venv whose python is $1, unless it has one: a local wheel from $WHEELS
# (default /opt/wheels) first, the package index only when there is none. The index's default Linux
# torch pulls gigabytes of CUDA libraries; a machine that provides a CPU (or matching GPU) wheel
# locally should use it. The wheel is installed by path so that its small pure-Python dependencies
# still come from the index.
set -euo pipefail
PY=$1
"$PY" -c "import torch" 2>/dev/null && exit 0
for wheel in "${WHEELS:-/opt/wheels}"/torch-*.whl; do
  [ -f "$wheel" ] || continue
  "$PY" -m pip install -q "$wheel" && exit 0
done
echo "setup: no usable local torch wheel; installing torch from the package index" >&2
"$PY" -m pip install -q torch
