# Sourced by lock.sh and check-latest.sh from the repository root: a throwaway venv holding torch
# (scripts/install-torch.sh) and the newest versions pyproject.toml allows, ignoring requirements.lock.
# $PY is its python and $scratch its folder, removed when the calling script exits.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"${PYTHON:-python3}" -m venv "$scratch/venv"
PY=$scratch/venv/bin/python
bash scripts/install-torch.sh "$PY"
"$PY" -m pip install -q -e '.[test]'
"$PY" -m pip install -q --no-deps spandrel einops  # as scripts/setup.sh does

# The venv's versions as lock lines: without dreamcli itself and torch (which comes from the machine).
freeze() {
  "$PY" -m pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton|cuda-)' | LC_ALL=C sort -f
}
