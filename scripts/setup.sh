#!/usr/bin/env bash
# One-step set-up: .venv with torch (a local wheel first, the package index only if none) and
# dreamcli with its test extras, at the versions in requirements.lock (the ones the tests passed
# with). Safe to run again: it installs only what is missing or differs from the lock.
# --tests also installs what only the tests need outside Python (a headless browser).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PY=.venv/bin/python

bash scripts/install-torch.sh "$PY"
# torch is already satisfied, so this brings only dreamcli's other requirements, pinned by the lock.
"$PY" -m pip install -q -c requirements.lock -e '.[test]'
# spandrel (dream upscale --upscaler) without its torchvision requirement: PyPI's torchvision cannot load beside
# a CPU-only torch, and the upscalers need none of it (src/dreamcli/upscalers.py says why).
"$PY" -m pip install -q -c requirements.lock --no-deps spandrel einops
if [ "${1:-}" = "--tests" ]; then bash scripts/install-browser.sh; fi
echo "setup: ready ($("$PY" -c 'import torch, diffusers, transformers, peft; print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'))" >&2
echo "setup: run 'source .venv/bin/activate' to put dream on your PATH (or call .venv/bin/dream)" >&2
