#!/usr/bin/env bash
# A CPU profile of meshtrace-collector (release) while meshtrace loadgen drives it.
# loadgen builds its MeshSim traffic before it sends anything, for seconds on a slow
# machine; the profile starts only once the collector has used half a second of CPU,
# so it records the collector at work rather than idle.
# Usage: Benchmarks/profile_collector.sh grpc|http RATE SECONDS OUT after `swift build -c release`:
# records SECONDS of the collector (perf record -F 2999 -g) into OUT (default perf.data),
# under loadgen at RATE spans/s for SECONDS + 5 s; then prints loadgen's report.
# BIN=DIR runs the binaries in DIR; SPANS_PER_REQUEST sets loadgen's batch size (default 200).
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/.build/release}
PROTO=${1:-grpc}; RATE=${2:-50000}; SECONDS_PROFILED=${3:-15}; OUT=${4:-perf.data}
SPANS_PER_REQUEST=${SPANS_PER_REQUEST:-200}
DIR=$(mktemp -d /tmp/profile.XXXX)
$BIN/meshtrace-collector --data-dir $DIR/data --otlp-grpc 127.0.0.1:34317 --otlp-http 127.0.0.1:34318 \
  --zipkin off --query 127.0.0.1:36686 > $DIR/out 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null && wait $PID 2>/dev/null; rm -rf $DIR' EXIT
sleep 2
if [ "$PROTO" = grpc ]; then TARGET=http://127.0.0.1:34317; else TARGET=http://127.0.0.1:34318; fi
$BIN/meshtrace loadgen --target $TARGET --protocol $PROTO --rate $RATE --duration $((SECONDS_PROFILED + 5))s \
  --connections 8 --spans-per-request $SPANS_PER_REQUEST -o json > $DIR/report.json &
LOADGEN=$!
# Field 14 of /proc/PID/stat: user time in clock ticks (100 a second).
while [ "$(awk '{print $14}' /proc/$PID/stat)" -lt 50 ]; do
  kill -0 $LOADGEN 2>/dev/null || { echo "loadgen ended before the collector got busy" >&2; cat $DIR/report.json >&2; exit 1; }
  sleep 0.2
done
perf record -F 2999 -g -p $PID -o "$OUT" -- sleep $SECONDS_PROFILED
wait $LOADGEN
cat $DIR/report.json; echo
