#!/usr/bin/env bash
# Re-lock, deliberately: resolve the newest versions that pyproject.toml allows in a scratch venv
# and write them to requirements.lock. Then run `bash scripts/setup.sh && .venv/bin/python -m pytest`
# and commit the lock only if the tests pass. torch is left out: it comes from the machine's own
# wheel (scripts/install-torch.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"${PYTHON:-python3}" -m venv "$scratch/venv"
PY=$scratch/venv/bin/python
bash scripts/install-torch.sh "$PY"
"$PY" -m pip install -q -e '.[test]'
{
  echo "# Versions the test suite passed with; scripts/setup.sh installs exactly these."
  echo "# Made by scripts/lock.sh on $(date -u +%Y-%m-%d) with Python $("$PY" -c 'import platform; print(platform.python_version())'); torch comes from scripts/install-torch.sh."
  "$PY" -m pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton|cuda-)' | LC_ALL=C sort -f
} > requirements.lock
echo "lock: wrote requirements.lock; now run: bash scripts/setup.sh && .venv/bin/python -m pytest" >&2
