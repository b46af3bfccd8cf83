#!/usr/bin/env bash
# Storage benchmarks (BENCHMARKS.md, "Hybrid storage"):
#  1. replay throughput into Postgres vs into SQLite, the same log (farm-bench, paired);
#  2. the Postgres sink's write time vs a plain COPY of the same rows, same run;
#  3. LZ4 on the generated documents (studio-lz4-bench).
# Needs the services: eval "$(bash .ci/services.sh up /tmp/studio-services)".
# BLOBS/DELTAS size the log (default 20,000 blobs, 200,000 deltas); RUNS the repeats.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATABASE_URL:?start the services: eval \"\$(bash .ci/services.sh up /tmp/studio-services)\"}"
BLOBS=${BLOBS:-20000} DELTAS=${DELTAS:-200000} RUNS=${RUNS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --locked -q -p studio -p studio-benches
B=$CARGO_TARGET_DIR/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
log=$work/log.jsonl
"$B/studio" gen --blobs "$BLOBS" --deltas "$DELTAS" --seed 42 -o "$log"
echo "log: $(wc -l <"$log") lines, $(du -m "$log" | cut -f1) MiB"
db() { # a fresh database, its URL
  local name="bench_$1_$$"
  psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $name" -c "CREATE DATABASE $name" >/dev/null
  echo "${DATABASE_URL%/*}/$name"
}
export STUDIO_CONTENT__DIR=$work/large # large documents in a directory (none is large here)

echo "== 1. replay: Postgres (A) vs SQLite (B)"
pg=$(db replay)
farm-bench -n "$RUNS" --timeout 3000 \
  --vs "$B/studio replay $log --db $work/views.sqlite --no-progress" \
  -- "$B/studio" replay "$log" --db "$pg" --no-progress

echo "== 2. the Postgres sink vs COPY of the same rows (one batch: every row written once)"
sink=$(db sink)
for i in $(seq "$RUNS"); do
  "$B/studio" replay "$log" --db "$sink" --batch-records 100000000 --no-progress --json |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("sink busy s", round(r["sink_seconds"],2), "wall s", round(r["wall_seconds"],2))'
done
tables="blobs deltas_applied deltas processed_by dead_letters blob_edges blob_reach blob_depth user_depth rejected_edges"
psql -qtA "$sink" -c "SELECT 'rows', sum(n) FROM (SELECT count(*) n FROM blobs UNION ALL SELECT count(*) FROM deltas_applied UNION ALL SELECT count(*) FROM deltas UNION ALL SELECT count(*) FROM processed_by UNION ALL SELECT count(*) FROM blob_edges UNION ALL SELECT count(*) FROM blob_reach UNION ALL SELECT count(*) FROM blob_depth UNION ALL SELECT count(*) FROM user_depth) s"
: >"$work/copy.sql"
echo "BEGIN;" >>"$work/copy.sql"
for t in $tables; do
  psql -q "$sink" -c "\\copy (SELECT * FROM $t) TO '$work/$t.copy'"
  psql -q "$sink" -c "DROP TABLE IF EXISTS c_$t; CREATE TABLE c_$t (LIKE $t INCLUDING ALL)"
  echo "TRUNCATE c_$t; \\copy c_$t FROM '$work/$t.copy'" >>"$work/copy.sql"
done
echo "COMMIT;" >>"$work/copy.sql"
farm-bench -n "$RUNS" --timeout 600 -- psql -q "$sink" -v ON_ERROR_STOP=1 -f "$work/copy.sql"

echo "== 3. LZ4 on the generated documents"
"$B/studio-lz4-bench" "$log" --rounds 5
