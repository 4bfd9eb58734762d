#!/usr/bin/env bash
# Resident memory of Benchmarks/rss-floor (an HTTP/1.1 server on SwiftNIO with
# swift-nio-ssl, and nothing of meshtrace) after 200 requests: the floor under
# meshtrace-sidecar's RSS. Built twice: Swift's runtime as shared libraries (as the
# sidecar is) and linked in (`--static-swift-stdlib`).
set -euo pipefail
cd "$(dirname "$0")/rss-floor"
port=25500
for linking in shared static; do
    flags=(); [ "$linking" = static ] && flags=(--static-swift-stdlib)
    swift build -c release --scratch-path ".build-$linking" "${flags[@]}" >/dev/null
    binary=".build-$linking/release/rss-floor"
    "$binary" --port "$port" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
    for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$port/"; done
    # As meshtrace-bench sidecar reads the sidecar's: VmRSS, RssAnon, RssFile of /proc/PID/status.
    kb() { awk -v key="$1" '$1 == key {print $2}' "/proc/$pid/status"; }
    printf '%s: RSS %.1f MB (anonymous %.1f MB, file-backed %.1f MB)\n' "$linking" \
        "$(echo "$(kb VmRSS:) * 1024 / 1000000" | bc -l)" "$(echo "$(kb RssAnon:) * 1024 / 1000000" | bc -l)" "$(echo "$(kb RssFile:) * 1024 / 1000000" | bc -l)"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    port=$((port + 1))
done
