#!/usr/bin/env bash
# End to end: meshtrace loadgen → meshtrace-collector (release) → WAL → sealed segments.
# Prints loadgen's report, then the collector's whole-life CPU seconds, peak RSS, minor page
# faults and voluntary and involuntary context switches (GNU time, Debian package `time`).
# Usage: Benchmarks/ingest_end_to_end.sh grpc|http RATE DURATION after `swift build -c release`.
# BIN=DIR runs the binaries in DIR instead; WAL_SYNC_INTERVAL sets the least time between the
# WAL's syncs (default: the collector's, 0, a sync per group); SPANS_PER_REQUEST sets
# loadgen's batch size (default 200);
# SHARDS the collector's --shards (default: one per core).
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/.build/release}
PROTO=${1:-grpc}; RATE=${2:-50000}; DURATION=${3:-20s}
WAL_SYNC_FLAG=${WAL_SYNC_INTERVAL:+--wal-sync-interval $WAL_SYNC_INTERVAL}
SPANS_PER_REQUEST=${SPANS_PER_REQUEST:-200}
SHARDS_FLAG=${SHARDS:+--shards $SHARDS}
DIR=$(mktemp -d /tmp/e2e.XXXX)
/usr/bin/time -f "collector cpu_user=%U cpu_sys=%S max_rss_kib=%M minor_faults=%R ctx_vol=%w ctx_invol=%c" -o $DIR/time \
  $BIN/meshtrace-collector --data-dir $DIR/data --otlp-grpc 127.0.0.1:34317 --otlp-http 127.0.0.1:34318 \
  --zipkin off --query 127.0.0.1:36686 $WAL_SYNC_FLAG $SHARDS_FLAG > $DIR/out 2>&1 &
PID=$!
sleep 2
if [ "$PROTO" = grpc ]; then TARGET=http://127.0.0.1:34317; else TARGET=http://127.0.0.1:34318; fi
$BIN/meshtrace loadgen --target $TARGET --protocol $PROTO --rate $RATE --duration $DURATION --connections 8 --spans-per-request $SPANS_PER_REQUEST -o json | tee $DIR/report.json
curl -s 127.0.0.1:36686/metrics | grep -E '^meshtrace_(wal_syncs|wal_sync_seconds|wal_records|segments|receiver_spans_total\{receiver="otlp_(grpc|http)",outcome="stored"|wal_written_bytes_total|sampling_decisions_total|sampling_late_spans_total|pairing_total)|^traces_service_graph_unpaired_spans_total' | grep -v ' 0$' || true
pkill -TERM -f "^$BIN/meshtrace-collector --data-dir $DIR/data"   # SIGTERM seals the head block: that encode is counted too
wait $PID || true
cat $DIR/time
echo "segments on disk: $(ls $DIR/data/segments | wc -l)"
