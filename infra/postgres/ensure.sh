#!/usr/bin/env bash
# Make sure a PostgreSQL server is there for the test suite, and print its admin URL.
#
# Order: PODIUM_TEST_POSTGRES_URL if set (used as it is); else a project-owned cluster
# (initdb'd once under $PODIUM_PG_DIR, trust auth on loopback only, a port of its own)
# started with the machine's PostgreSQL binaries; when there are none and we are root
# with apt-get (CI, a fresh machine of the polyglot kind), Debian's `postgresql` package
# is installed first. A machine with none of these prints nothing on stdout and says
# why on stderr: the tests that need PostgreSQL then report that they did not run
# (and fail instead under CI=true, where a missing server is a broken setup).
#
# A private cluster rather than the distribution's `main` one: its pg_hba and port are
# ours, so nothing depends on how the machine's own cluster was configured.
set -euo pipefail

if [[ -n "${PODIUM_TEST_POSTGRES_URL:-}" ]]; then
  echo "$PODIUM_TEST_POSTGRES_URL"
  exit 0
fi

say() { echo "postgres: $*" >&2; }

find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [[ -x "$d/initdb" && -x "$d/pg_ctl" ]] && { echo "$d"; return 0; }
  done
  if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
    dirname "$(command -v pg_ctl)"; return 0
  fi
  return 1
}

BINDIR="$(find_bindir || true)"
if [[ -z "$BINDIR" ]]; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian's postgresql package (first run on this machine)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    BINDIR="$(find_bindir || true)"
  fi
fi
if [[ -z "$BINDIR" ]]; then
  say "no PostgreSQL server binaries and no way to install them (not root, or no apt-get);"
  say "set PODIUM_TEST_POSTGRES_URL to use an existing server"
  exit 0
fi

PGDIR="${PODIUM_PG_DIR:-${TMPDIR:-/tmp}/podium-postgres-$(id -u)}"
DATA="$PGDIR/data"
# initdb and postgres refuse to run as root: run them as the `postgres` system user.
as_owner() {
  if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$PGDIR" postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

mkdir -p "$PGDIR"
[[ "$(id -u)" == 0 ]] && chown postgres: "$PGDIR" 2>/dev/null || true
if [[ ! -s "$DATA/PG_VERSION" ]]; then
  say "creating a test cluster in $DATA"
  as_owner "$BINDIR/initdb" -D "$DATA" -U postgres -A trust --no-sync -E UTF8 >/dev/null
fi

port_file="$PGDIR/port"
if ! as_owner "$BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  echo "$port" > "$port_file"
  # fsync off: a scratch cluster for tests, rebuilt at will; durability is PostgreSQL's
  # own business, not what these tests check.
  as_owner "$BINDIR/pg_ctl" -D "$DATA" -l "$PGDIR/server.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$PGDIR \
        -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" >&2
fi
port="$(cat "$port_file")"
echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
