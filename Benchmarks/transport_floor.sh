#!/usr/bin/env bash
# The transport's own cost: meshtrace loadgen against `meshtrace-bench transport-floor`, an
# OTLP endpoint served as the collector serves it (for gRPC, through the receiver's lanes)
# that stores nothing, then the same load against the collector. Prints, for each,
# loadgen's report and the server's CPU time while the load ran (from /proc/PID/stat),
# per span acknowledged.
# Usage: Benchmarks/transport_floor.sh grpc|http RATE DURATION after `swift build -c release`.
# BIN=DIR runs the binaries in DIR; SPANS_PER_REQUEST sets loadgen's batch size (default 200).
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/.build/release}
PROTO=${1:-grpc}; RATE=${2:-50000}; DURATION=${3:-20s}
SPANS_PER_REQUEST=${SPANS_PER_REQUEST:-200}
DIR=$(mktemp -d /tmp/floor.XXXX)
trap 'rm -rf "$DIR"' EXIT
if [ "$PROTO" = grpc ]; then PORT=34317; else PORT=34318; fi
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
measure() {  # NAME PID
  local before after
  before=$(ticks "$2")
  "$BIN/meshtrace" loadgen --target "http://127.0.0.1:$PORT" --protocol "$PROTO" --rate "$RATE" --duration "$DURATION" \
    --connections 8 --spans-per-request "$SPANS_PER_REQUEST" -o json > "$DIR/report.json"
  after=$(ticks "$2")
  python3 - "$1" "$before" "$after" "$(getconf CLK_TCK)" "$DIR/report.json" <<'PY'
import json, sys
name, before, after, hz, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
report = json.load(open(path))
spans = report["spans_acknowledged"]
cpu = (after - before) / hz
print(f"{name}: {spans} spans acknowledged in {report['requests']} requests, p50 {report['latency_ms']['p50']:.2f} ms; "
      f"server CPU {cpu:.2f} s while loaded: {cpu * 1e6 / max(spans, 1):.2f} us per span")
PY
}
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

"$BIN/meshtrace-bench" transport-floor --protocol "$PROTO" --port "$PORT" > "$DIR/floor.out" 2>&1 &
FLOOR=$!
wait_port $PORT
measure "transport alone (meshtrace-bench transport-floor)" $FLOOR
kill $FLOOR; wait $FLOOR 2>/dev/null || true

"$BIN/meshtrace-collector" --data-dir "$DIR/data" --otlp-grpc 127.0.0.1:34317 --otlp-http 127.0.0.1:34318 \
  --zipkin off --query 127.0.0.1:36686 > "$DIR/collector.out" 2>&1 &
COLLECTOR=$!
wait_port $PORT
measure "collector (meshtrace-collector, defaults)" $COLLECTOR
kill -TERM $COLLECTOR; wait $COLLECTOR 2>/dev/null || true
