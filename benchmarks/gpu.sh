#!/usr/bin/env bash
# The whole device run, for a bare CUDA machine without network: wheels in, then dream tune's GPU memory and speed.
# Usage: bash benchmarks/gpu.sh OUTDIR   (BUDGET=seconds after which no new case starts; default 300)
# Missing pure-Python wheels (diffusers, importlib_metadata) travel in .whl/ beside the tree.
set -euo pipefail
out=${1:?usage: benchmarks/gpu.sh OUTDIR}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 benchmarks/tune_gpu.py "$out" --budget "${BUDGET:-300}" 2>&1 | tee "$out/tune_gpu.log"
