#!/usr/bin/env bash
# The query API load test (BENCHMARKS.md, "The query API and its Redis cache", issue 17):
# GET /v1/blobs/{id} on a hot set with wrk, `studio serve` without and with the Redis
# cache, in the same run, each while idle and while a `studio replay` of the log is
# writing (the replay invalidates the cache as the service's writer does: it changes
# every blob of the hot set several times a second).
#
#   benches/api.sh                                   # 100,000 blobs, 1,000,000 deltas
#   DELTAS=200000 BLOBS=20000 HOT=1000 SECONDS_PER_RUN=10 benches/api.sh
#
# Needs wrk (Debian `wrk`) and redis-server (started here through .ci/services.sh, on a
# free loopback port); installs neither when present.
set -euo pipefail
cd "$(dirname "$0")/.."
DELTAS=${DELTAS:-1000000}
BLOBS=${BLOBS:-100000}
HOT=${HOT:-1000}                       # blobs in the hot set
CONNECTIONS=${CONNECTIONS:-8 32}      # wrk connections: one row per value
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
DATA=${DATA:-benches/data}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null

cargo build --release --locked -q -p studio
STUDIO="$CARGO_TARGET_DIR/release/studio"
mkdir -p "$DATA"
LOG="$DATA/log-$BLOBS-$DELTAS.jsonl"
[ -s "$LOG" ] || "$STUDIO" gen --blobs "$BLOBS" --deltas "$DELTAS" --seed 42 -o "$LOG"

work=$(mktemp -d)
pids=()
# shellcheck source=../.ci/services.sh
source .ci/services.sh
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  services_stop "$work/services" redis || true
  rm -rf "$work"
}
trap cleanup EXIT
CI_REDIS_PORT=0 services_start "$work/services" redis

SECRET=bench-secret
export STUDIO_API__JWT_SECRET=$SECRET STUDIO_REDIS__KEY_PREFIX="bench$$"
echo "== serving database: replay of $LOG"
"$STUDIO" replay "$LOG" --db "$work/served.sqlite" --no-progress >/dev/null

# The hot set: HOT blobs, each asked by its owner (an HS256 token made here).
HOT_SET="$work/hot.txt" python3 - "$work/served.sqlite" "$HOT" "$SECRET" <<'PY'
import base64, hashlib, hmac, json, os, sqlite3, sys, time
db, hot, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
rows = sqlite3.connect(db).execute(
    "SELECT blob_id, user_id FROM blobs ORDER BY blob_id LIMIT ?", (hot,)).fetchall()
with open(os.environ["HOT_SET"], "w") as out:
    for blob, user in rows:
        head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = b64(json.dumps({"sub": user, "exp": int(time.time()) + 86400}).encode())
        sig = b64(hmac.new(secret, f"{head}.{claims}".encode(), hashlib.sha256).digest())
        out.write(f"/v1/blobs/{blob} {head}.{claims}.{sig}\n")
PY
export HOT_SET="$work/hot.txt"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# serve NAME [--redis URL]: starts `studio serve` on the served database; sets $base.
serve() {
  local name=$1 p; shift
  p=$(port)
  "$STUDIO" serve --db "$work/served.sqlite" --listen "127.0.0.1:$p" "$@" >"$work/$name.log" 2>&1 &
  server=$!
  pids+=("$server")
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$p/v1/openapi.json" >/dev/null && break; sleep 0.1; done
  base="http://127.0.0.1:$p"
}

counter() { curl -fs "$1/metrics" | awk -v n="$2" '$1 == n {v = $2} END {print v + 0}'; }

# load NAME WHILE CONNECTIONS: wrk on $base; with WHILE=replay a replay (into a database
# of its own, invalidating this run's cache) runs during the measurement.
load() {
  local name=$1 while=$2 connections=$3 replay=""
  if [ "$while" = replay ]; then
    "$STUDIO" replay "$LOG" --db "$work/writer-$name.sqlite" --no-progress --redis "$REDIS_URL" \
      >"$work/replay-$name.log" 2>&1 &
    replay=$!
    pids+=("$replay")
    sleep 3 # past the first batch's fold: the writer is committing
  fi
  local hits0 misses0
  hits0=$(counter "$base" studio_api_cache_hits_total); misses0=$(counter "$base" studio_api_cache_misses_total)
  wrk -t1 -c"$connections" -d"${SECONDS_PER_RUN}s" --latency -s benches/api_hot_set.lua "$base" >"$work/wrk-$name-$while.txt"
  local hits misses
  hits=$(($(counter "$base" studio_api_cache_hits_total) - hits0))
  misses=$(($(counter "$base" studio_api_cache_misses_total) - misses0))
  local still="no"
  if [ -n "$replay" ]; then
    kill -0 "$replay" 2>/dev/null && still="yes"
    wait "$replay" || { echo "the replay failed:" >&2; tail "$work/replay-$name.log" >&2; exit 1; }
  fi
  awk -v name="$name" -v during="$while" -v c="$connections" -v hits="$hits" -v misses="$misses" -v still="$still" '
    /Requests\/sec/ {rps = $2}
    $1 == "50%" {p50 = $2} $1 == "99%" {p99 = $2}
    /non-200/ {bad += $NF}
    END {printf "%-7s %-7s %5s %10s %9s %9s %8s %9s %9s %8s\n", name, during, c, rps, p50, p99, bad, hits, misses, still}' \
    "$work/wrk-$name-$while.txt"
}

echo "== $HOT hot blobs of $BLOBS, wrk -t1 -d${SECONDS_PER_RUN}s; machine: $(nproc) cores (wrk, studio serve, redis-server and the replay share them); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-7s %-7s %5s %10s %9s %9s %8s %9s %9s %8s\n' server while conns "req/s" p50 p99 non-200 hits misses "replay on"
for name in plain redis; do
  if [ "$name" = redis ]; then serve redis --redis "$REDIS_URL"; else serve plain; fi
  for while in idle replay; do
    for connections in $CONNECTIONS; do load "$name" "$while" "$connections"; done
  done
  kill "$server"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
