#!/usr/bin/env bash
# The bus baselines (BENCHMARKS.md, "Bus throughput"): for each bus, the broker's own
# produce and consume rate with the plain client, beside Studio's connectors and
# `studio loadgen`, on the same generated log. Needs the brokers that .ci/run starts:
# KAFKA_BROKERS (tansu) and NATS_URL (nats-server -js).
#   DELTAS=1000000 BLOBS=100000 benches/bus.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KAFKA_BROKERS:?set KAFKA_BROKERS (see .ci/run)}" "${NATS_URL:?set NATS_URL (see .ci/run)}"
deltas="${DELTAS:-100000}"
blobs="${BLOBS:-10000}"
cargo build --release --locked -p studio -p studio-benches --bin studio --bin studio-bus-bench
bin="${CARGO_TARGET_DIR:-target}/release"
for bus in kafka nats; do
  echo "== $bus: $deltas deltas, $blobs blobs"
  "$bin/studio-bus-bench" --to "$bus" --deltas "$deltas" --blobs "$blobs"
  "$bin/studio" loadgen --to "$bus" --deltas "$deltas" --blobs "$blobs" --no-progress \
    --topic "loadgen$$.$bus" --stream "LOADGEN$$"
done
