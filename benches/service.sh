#!/usr/bin/env bash
# The service load test (BENCHMARKS.md, "Service: end to end over the bus"). For each
# bus, on the same generated log and in the same run:
#   1. the broker's own produce and consume throughput with the plain client
#      (studio-bus-bench: the baseline);
#   2. `studio run` on a fresh topic and database, fed by `studio loadgen --wait-db` at
#      full speed: the sustained throughput, publish -> view committed;
#   3. the same at RATE records/s (default: half of what step 2 sustained): the
#      end-to-end latency percentiles at a rate the service keeps up with.
# Needs the brokers that .ci/run starts: KAFKA_BROKERS (tansu), NATS_URL (nats-server).
#   DELTAS=1000000 BLOBS=100000 benches/service.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KAFKA_BROKERS:?set KAFKA_BROKERS (see .ci/run)}" "${NATS_URL:?set NATS_URL (see .ci/run)}"
deltas="${DELTAS:-100000}"
blobs="${BLOBS:-10000}"
publish="${PUBLISH:-[]}" # output streams of the service, e.g. '["applied","dead_letters"]'
cargo build --release --locked -p studio -p studio-benches --bin studio --bin studio-bus-bench
bin="${CARGO_TARGET_DIR:-target}/release"
work=$(mktemp -d)
service=""
trap '[ -n "$service" ] && kill "$service" 2>/dev/null; rm -rf "$work"' EXIT

# One service run: a fresh topic/stream and database, loadgen at $3 records/s (0: full
# speed); prints loadgen's JSON line.
run_once() { # bus name rate
  local bus=$1 name=$2 rate=$3 db="$work/$2.sqlite"
  local id; id="$(echo "$name" | tr -c 'A-Za-z0-9\n' '_')"
  export STUDIO_RUN__PUBLISH="$publish" STUDIO_RUN__LISTEN="" STUDIO_RUN__SOURCE="$bus"
  export STUDIO_KAFKA__TOPICS__DELTAS="$name.deltas" STUDIO_KAFKA__GROUP_ID="$name"
  export STUDIO_NATS__STREAM="IN_$id" STUDIO_NATS__OUTPUT_STREAM="OUT_$id" \
    STUDIO_NATS__DURABLE="d_$id" STUDIO_NATS__SUBJECTS__DELTAS="$id.deltas"
  # Idle for 30 s before it stops: loadgen generates the log in memory before its
  # first publish, and the service must still be there then.
  "$bin/studio" run --db "$db" --exit-when-idle 30000 --json >"$work/$name.report" 2>"$work/$name.log" &
  service=$!
  "$bin/studio" loadgen --to "$bus" --deltas "$deltas" --blobs "$blobs" --rate "$rate" \
    --wait-db "$db" --no-progress --json
  wait "$service"
  service=""
}

for bus in kafka nats; do
  echo "== $bus: $deltas deltas, $blobs blobs"
  "$bin/studio-bus-bench" --to "$bus" --deltas "$deltas" --blobs "$blobs"
  full=$(run_once "$bus" "svc$$full$bus" 0)
  echo "studio run, full speed: $full"
  sustained=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["end_to_end"]["records_per_second"])' "$full")
  rate="${RATE:-$(python3 -c "print(int(float('$sustained') / 2))")}"
  paced=$(run_once "$bus" "svc$$paced$bus" "$rate")
  echo "studio run, at $rate/s: $paced"
done
