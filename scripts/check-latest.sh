#!/usr/bin/env bash
# Drift check: install the newest versions pyproject.toml allows (what `pip install dreamcli` gives
# a user today) into a scratch venv, show how they differ from requirements.lock, and run the tests.
# With --uncapped, the packages that pyproject.toml caps for a known break are upgraded past the cap
# too, to see whether the cap can be lifted. Run it before a release and when a dependency ships a
# new version; a failure here is what users will meet next. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
uncapped=0
if [ "${1:-}" = "--uncapped" ]; then uncapped=1; shift; fi
source scripts/scratch-venv.sh
if [ "$uncapped" = 1 ]; then
  capped=$(grep -oE '"[A-Za-z0-9_.-]+[^"]*,<[^"]*"' pyproject.toml | sed -E 's/^"([A-Za-z0-9_.-]+).*/\1/')
  # shellcheck disable=SC2086
  [ -z "$capped" ] || "$PY" -m pip install -q -U $capped
fi
freeze > "$scratch/latest.txt"
echo "check-latest: versions that differ from requirements.lock (< lock, > newest):" >&2
diff <(grep -v '^#' requirements.lock) "$scratch/latest.txt" >&2 || true
"$PY" -m pytest -q -p no:cacheprovider "$@"
