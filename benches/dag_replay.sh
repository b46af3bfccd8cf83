#!/usr/bin/env bash
# Issue #16's whole replay: the DAG graph of `studio-dag-bench --shape issue16` written as
# a delta log (every blob a `create` with its first parent as `parent_id`, each further
# parent an `update` of that parent with `child_ids`), replayed by `studio replay`
# beside the same log without its edges; then `studio query`'s DAG questions timed on
# the database the first replay made (p50/p99 through the library's SQLite reader, with
# SQLite's query plans).
#
#   benches/dag_replay.sh                  # 3 runs of each replay, 1 worker
#   RUNS=5 WORKERS=2 benches/dag_replay.sh
#
# Uses only cargo and GNU time (/usr/bin/time, Debian package `time`).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
WORKERS=${WORKERS:-1}
SHAPE=${SHAPE:-issue16}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
command -v /usr/bin/time >/dev/null || { echo "needs GNU time: apt-get install -y time" >&2; exit 1; }

cargo build --release --locked -q -p studio -p studio-benches --bin studio --bin studio-dag-bench
STUDIO="$CARGO_TARGET_DIR/release/studio"
BENCH="$CARGO_TARGET_DIR/release/studio-dag-bench"
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT

"$BENCH" --shape "$SHAPE" --write-log "$DIR"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; runs: $RUNS; workers: $WORKERS"
printf '%-28s %s\n' log "wall s (each run), peak MiB (last run)"
for log in dag dag-noedges; do
  walls=()
  for _ in $(seq "$RUNS"); do
    out=$( { /usr/bin/time -f "%e %M" "$STUDIO" replay "$DIR/$log.jsonl" --db "$DIR/$log.sqlite" \
      --no-progress -w "$WORKERS" >/dev/null; } 2>&1 | tail -1 )
    walls+=("${out% *}")
  done
  printf '%-28s %s, %.0f MiB\n' "$log.jsonl" "${walls[*]}" "$(awk -v k="${out#* }" 'BEGIN{print k/1024}')"
done
"$STUDIO" replay "$DIR/dag.jsonl" --db "$DIR/dag.sqlite" --no-progress --json -w "$WORKERS" \
  | grep -E '"(records_read|accepted|dead_letters)"' | tr -d ' \n'; echo
"$BENCH" --shape "$SHAPE" --query-db "$DIR/dag.sqlite"
