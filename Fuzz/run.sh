#!/usr/bin/env bash
# Differential fuzzing of the direct OTLP decoder against swift-protobuf with libFuzzer.
# Usage: Fuzz/run.sh [SECONDS]   (default 300). Crashing inputs land in Fuzz/artifacts/;
# replay one with: swift run meshtrace-fuzz-otlp Fuzz/artifacts/crash-…
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-300}
swift build --build-path .build/fuzz --product meshtrace-fuzz-otlp \
  -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xswiftc -use-ld=lld
mkdir -p Fuzz/corpus Fuzz/artifacts
cp -n Tests/MeshtraceTests/Fixtures/wire/trace_export_request.binpb Tests/MeshtraceTests/Fixtures/wire/traces_data.binpb Fuzz/corpus/ 2>/dev/null || true
.build/fuzz/debug/meshtrace-fuzz-otlp Fuzz/corpus -artifact_prefix=Fuzz/artifacts/ -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -print_final_stats=1
