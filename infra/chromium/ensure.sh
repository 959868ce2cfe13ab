#!/usr/bin/env bash
# Make sure a Chromium is there for the browser tests (tests/browser), and print its path.
#
# Order: PODIUM_TEST_CHROMIUM if set (used as it is); else Debian's `chromium` package
# (/usr/bin/chromium), installed with apt-get when we are root on a Debian-like machine
# (CI, a fresh machine), as infra/postgres/ensure.sh installs PostgreSQL. Playwright's
# own browser downloads are never used: the tests drive this executable through
# Playwright's Python API. A machine with none of these prints nothing on stdout and
# says why on stderr: the browser tests then report that they did not run (and fail
# instead under CI=true, where a missing browser is a broken setup).
set -euo pipefail

if [[ -n "${PODIUM_TEST_CHROMIUM:-}" ]]; then
  echo "$PODIUM_TEST_CHROMIUM"
  exit 0
fi

say() { echo "chromium: $*" >&2; }

find_chromium() {
  local c
  for c in /usr/bin/chromium /usr/bin/chromium-browser; do
    [[ -x "$c" ]] && { echo "$c"; return 0; }
  done
  return 1
}

BIN="$(find_chromium || true)"
if [[ -z "$BIN" ]]; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian's chromium package (first run on this machine)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
    BIN="$(find_chromium || true)"
  fi
fi
if [[ -z "$BIN" ]]; then
  say "no chromium and no way to install it (not root, or no apt-get);"
  say "set PODIUM_TEST_CHROMIUM to a Chromium executable to run the browser tests"
  exit 0
fi
echo "$BIN"
