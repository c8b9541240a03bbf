#!/usr/bin/env bash
# Set up Cordon in ./.venv (idempotent). Usage: scripts/setup.sh [--test]
#   (no option)  the runtime: Python package, Leaflet for the pages
#   --test       also test tools, Debian's chromium for browser tests, redis-server, PostgreSQL
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "Cordon needs Python 3.11 or newer (found: $("$PY" --version 2>&1))" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ "$want_test" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
else
  .venv/bin/python -m pip install -q -e .
fi

# Leaflet for the pages (from npm; node_modules is not committed).
if command -v npm >/dev/null 2>&1; then
  if [ -f package-lock.json ]; then npm ci --silent --no-audit --no-fund >/dev/null; else npm install --silent --no-audit --no-fund >/dev/null; fi
else
  echo "note: npm not found: the web pages will lack their map library (apt-get install nodejs npm)" >&2
fi

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "please install: $*" >&2
    return 1
  fi
}

if [ "$want_test" = 1 ]; then
  [ -x /usr/bin/chromium ] || apt_install chromium
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  if ! command -v psql >/dev/null 2>&1; then apt_install postgresql; fi
  # PostgreSQL on 127.0.0.1:5432 with trust auth for the audit-trail tests.
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null 2>&1; then
      ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
      [ -n "$ver" ] && pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    fi
  fi
fi

# Compile the core's kernels once (numba; ~20-35 s the first time, then cached in __pycache__), so the
# first server start, demo or test does not pay for it.
.venv/bin/python -c 'from guidance.warmup import warm_up_kernels; warm_up_kernels()'
