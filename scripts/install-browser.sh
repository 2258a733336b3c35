#!/usr/bin/env bash
# The browser the gallery's page test opens (tests/test_gallery.py): Debian's chromium package.
# Installed only for the test command (scripts/setup.sh --tests) and only where it is missing. Without
# root and apt-get it says so, and that one test is skipped with the same reason.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: no chromium and no root apt-get to install it: the gallery's browser test will be skipped" \
       "(sudo apt-get install chromium)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "setup: installing Debian's chromium for the gallery's browser test" >&2
apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
