#!/usr/bin/env bash
# Regenerates Sources/OTLPWire/Generated from the .proto files in this folder.
# Builds the protoc plugins in proto/tools (a separate package, so that building
# or testing meshtrace never does) and needs protoc (Debian: protobuf-compiler).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out="$root/Sources/OTLPWire/Generated"

command -v protoc >/dev/null || { echo "protoc not found: apt-get install protobuf-compiler" >&2; exit 1; }
(cd "$here/tools" && swift build -c release --product protoc-gen-swift && swift build -c release --product protoc-gen-grpc-swift-2)
bin=$(cd "$here/tools" && swift build -c release --show-bin-path)

protos=(
  opentelemetry/proto/common/v1/common.proto
  opentelemetry/proto/resource/v1/resource.proto
  opentelemetry/proto/trace/v1/trace.proto
  opentelemetry/proto/metrics/v1/metrics.proto
  opentelemetry/proto/collector/trace/v1/trace_service.proto
  opentelemetry/proto/collector/metrics/v1/metrics_service.proto
  google/rpc/status.proto
  google/rpc/error_details.proto
)
services=(
  opentelemetry/proto/collector/trace/v1/trace_service.proto
  opentelemetry/proto/collector/metrics/v1/metrics_service.proto
)

rm -rf "$out" && mkdir -p "$out"
cd "$here"
protoc -I . \
  --plugin=protoc-gen-swift="$bin/protoc-gen-swift" \
  --swift_out="$out" --swift_opt=Visibility=Public --swift_opt=FileNaming=PathToUnderscores \
  "${protos[@]}"
protoc -I . \
  --plugin=protoc-gen-grpc-swift="$bin/protoc-gen-grpc-swift-2" \
  --grpc-swift_out="$out" --grpc-swift_opt=Visibility=Public --grpc-swift_opt=FileNaming=PathToUnderscores \
  --grpc-swift_opt=Server=true --grpc-swift_opt=Client=true \
  "${services[@]}"
echo "generated into $out"
