#!/usr/bin/env bash
# The replay load test: `studio replay` against its baselines, on the same generated log,
# on this machine, in the same run. Prints one row per command: median wall seconds over
# RUNS runs, records/s, peak RSS, and the ratio of its throughput to parse-only.
#
#   benches/replay.sh                      # 1,000,000 deltas on 100,000 blobs, 3 runs
#   DELTAS=200000 BLOBS=20000 RUNS=5 benches/replay.sh
#
# Uses only cargo and GNU time (/usr/bin/time, Debian package `time`).
set -euo pipefail
cd "$(dirname "$0")/.."
DELTAS=${DELTAS:-1000000}
BLOBS=${BLOBS:-100000}
RUNS=${RUNS:-3}
DATA=${DATA:-benches/data}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
command -v /usr/bin/time >/dev/null || { echo "needs GNU time: apt-get install -y time" >&2; exit 1; }

cargo build --release --locked -q -p studio -p studio-benches
STUDIO="$CARGO_TARGET_DIR/release/studio"
BENCH="$CARGO_TARGET_DIR/release/studio-bench"
mkdir -p "$DATA"
LOG="$DATA/log-$BLOBS-$DELTAS.jsonl"
[ -s "$LOG" ] || "$STUDIO" gen --blobs "$BLOBS" --deltas "$DELTAS" --seed 42 -o "$LOG"
DB=$(mktemp -d)/bench.sqlite
trap 'rm -rf "$(dirname "$DB")"' EXIT

echo "log: $LOG ($(du -hL "$LOG" | cut -f1), $DELTAS deltas, $BLOBS blobs); machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; runs: $RUNS"
printf '%-44s %9s %12s %10s %9s\n' command "wall s" "records/s" "peak MiB" "vs parse"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
parse_rate=""
run() {
  local name=$1; shift
  local walls=() rss=()
  for _ in $(seq "$RUNS"); do
    out=$( { /usr/bin/time -f "%e %M" "$@" >/dev/null; } 2>&1 | tail -1 )
    walls+=("${out% *}"); rss+=("${out#* }")
  done
  local wall; wall=$(printf '%s\n' "${walls[@]}" | median)
  local mem; mem=$(printf '%s\n' "${rss[@]}" | median)
  local rate; rate=$(awk -v n="$DELTAS" -v s="$wall" 'BEGIN{printf "%.0f", n/s}')
  [ -n "$parse_rate" ] || parse_rate=$rate
  printf '%-44s %9.2f %12s %10.0f %9.2f\n' "$name" "$wall" "$rate" "$(awk -v k="$mem" 'BEGIN{print k/1024}')" \
    "$(awk -v a="$rate" -v b="$parse_rate" 'BEGIN{print a/b}')"
}

run "parse-only (serde_json::Value per line)" "$BENCH" serde-parse "$LOG"
run "parse-only (Studio's S1 parser)" "$BENCH" parse "$LOG"
run "sequential fold (BlobLedger, no sink)" "$BENCH" fold "$LOG"
run "studio replay -w 1 (SQLite)" "$STUDIO" replay "$LOG" --db "$DB" --no-progress
run "studio replay -w 2 (SQLite)" "$STUDIO" replay "$LOG" --db "$DB" --no-progress -w 2
