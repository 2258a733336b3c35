#!/usr/bin/env bash
# Re-lock, deliberately: resolve the newest versions that pyproject.toml allows in a scratch venv
# and write them to requirements.lock. Then run `bash scripts/setup.sh && .venv/bin/python -m pytest`
# and commit the lock only if the tests pass. torch is left out: it comes from the machine's own
# wheel (scripts/install-torch.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/scratch-venv.sh
{
  echo "# Versions the test suite passed with; scripts/setup.sh installs exactly these."
  echo "# Made by scripts/lock.sh on $(date -u +%Y-%m-%d) with Python $("$PY" -c 'import platform; print(platform.python_version())'); torch comes from scripts/install-torch.sh."
  freeze
} > requirements.lock
echo "lock: wrote requirements.lock; now run: bash scripts/setup.sh && .venv/bin/python -m pytest" >&2
