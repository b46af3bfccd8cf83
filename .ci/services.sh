#!/usr/bin/env bash
# Starts the services that Studio's storage tests need, on 127.0.0.1 only:
#   PostgreSQL (Debian's package)  -> DATABASE_URL
#   moto, an S3-compatible server  -> S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION
# Installs them when missing (idempotent; needs root and the package registries).
#
#   source .ci/services.sh && services_start DIR    # in a script: exports, and records pids
#   services_stop DIR                                # stop them by pid (use in a trap)
#   bash .ci/services.sh up DIR                      # by hand: start, print `export` lines
#   bash .ci/services.sh down DIR                    # by hand: stop
# Each server logs to a file under DIR, never to the caller's stdout.

services_free_port() { # preferred port, or any free one when it is taken
  python3 - "$1" <<'PY'
import socket, sys
p = int(sys.argv[1])
s = socket.socket()
try:
    s.bind(("127.0.0.1", p))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

services_install() {
  local need=()
  ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || need+=(postgresql)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
  if ((${#need[@]})); then
    echo "== installing ${need[*]} (apt)"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
  fi
  STUDIO_MOTO_VENV="${STUDIO_MOTO_VENV:-$HOME/.cache/studio-moto-venv}"
  if [ ! -x "$STUDIO_MOTO_VENV/bin/moto_server" ]; then
    echo "== installing moto[server]==5.2.5 (PyPI) into $STUDIO_MOTO_VENV"
    python3 -m venv "$STUDIO_MOTO_VENV"
    "$STUDIO_MOTO_VENV/bin/pip" install -q "moto[server]==5.2.5"
  fi
}

services_start() {
  local dir="$1"
  mkdir -p "$dir"
  # The postgres user must reach its data directory (mktemp -d makes 0700 dirs).
  chmod 755 "$dir" "$(dirname "$dir")"
  services_install
  # PostgreSQL: initdb as the postgres user, in a directory it owns.
  local pgbin port
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  port=$(services_free_port "${STUDIO_PG_PORT:-15432}")
  install -d -o postgres -g postgres -m 700 "$dir/pg"
  if [ ! -f "$dir/pg/PG_VERSION" ]; then
    runuser -u postgres -- "$pgbin/initdb" -D "$dir/pg" -U postgres --auth=trust --no-sync -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1
  fi
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$dir/pg" -l "$dir/pg/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/pg -c fsync=off -c synchronous_commit=off -c max_connections=200" start >"$dir/pg_ctl.log" 2>&1
  echo "$pgbin" >"$dir/pgbin"
  head -1 "$dir/pg/postmaster.pid" >"$dir/pg.pid"
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  # moto: in-memory S3 (it does not check signatures).
  local s3port
  s3port=$(services_free_port "${STUDIO_S3_PORT:-15000}")
  "$STUDIO_MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$s3port" >"$dir/moto.log" 2>&1 </dev/null &
  echo $! >"$dir/moto.pid"
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$s3port/moto-api/" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fs "http://127.0.0.1:$s3port/moto-api/" >/dev/null || { echo "moto did not start; see $dir/moto.log" >&2; return 1; }
  export S3_ENDPOINT="http://127.0.0.1:$s3port" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
  echo "== services: DATABASE_URL=$DATABASE_URL S3_ENDPOINT=$S3_ENDPOINT (logs in $dir)"
}

services_stop() {
  local dir="$1"
  if [ -f "$dir/moto.pid" ]; then
    kill "$(cat "$dir/moto.pid")" 2>/dev/null || true
    rm -f "$dir/moto.pid"
  fi
  if [ -f "$dir/pg.pid" ] && [ -f "$dir/pgbin" ]; then
    runuser -u postgres -- "$(cat "$dir/pgbin")/pg_ctl" -D "$dir/pg" -m fast -w stop >/dev/null 2>&1 ||
      kill "$(cat "$dir/pg.pid")" 2>/dev/null || true
    rm -f "$dir/pg.pid"
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case "${1:-}" in
    up)
      services_start "${2:?usage: $0 up DIR}" >&2
      echo "export DATABASE_URL=$DATABASE_URL S3_ENDPOINT=$S3_ENDPOINT AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1"
      ;;
    down) services_stop "${2:?usage: $0 down DIR}" ;;
    *) echo "usage: $0 up DIR | down DIR" >&2; exit 2 ;;
  esac
fi
