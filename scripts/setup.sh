#!/usr/bin/env bash
# One-step set-up: .venv with torch (a local wheel first, the package index only if none) and
# dreamcli with its test extras. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PY=.venv/bin/python

if ! "$PY" -c "import torch" 2>/dev/null; then
  # The index's default Linux torch pulls gigabytes of CUDA libraries; a machine that provides a
  # CPU (or matching GPU) wheel locally should use it. WHEELS names the folder (default /opt/wheels).
  # The wheel is installed by path so that its small pure-Python dependencies still come from the index.
  installed=""
  for wheel in "${WHEELS:-/opt/wheels}"/torch-*.whl; do
    [ -f "$wheel" ] || continue
    if "$PY" -m pip install -q "$wheel"; then installed="$wheel"; break; fi
  done
  if [ -z "$installed" ]; then
    echo "setup: no usable local torch wheel; installing torch from the package index" >&2
    "$PY" -m pip install -q torch
  fi
fi

# torch is already satisfied, so this brings only dreamcli's other requirements.
"$PY" -m pip install -q -e '.[test]'
echo "setup: ready ($("$PY" -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)'))" >&2
