"""The collector's own telemetry at /metrics (Prometheus text format) counts what
each receiver accepted and refused, the WAL's writes and syncs, and the budget."""
import json
import re

import grpc
import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

from test_grpc_interop import export, request_with
from test_sdk_interop import send_trace
from test_zipkin_interop import ENVOY_SPANS

# A sample line: name, optional labels (values are quoted and may hold braces), value.
SAMPLE = re.compile(r'^([a-z_]+)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})? (\S+)$')


def scrape(c):
    response = requests.get(f"{c.query_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for line in response.text.splitlines():
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def test_metrics_count_each_receivers_traffic_and_the_wal(collector):
    c = collector(extra_args=["--memory-budget", "50000000", "--max-grpc-message-bytes", "65536"])
    before = scrape(c)
    assert before['meshtrace_memory_budget_bytes{state="limit"}'] == 50_000_000
    assert before['meshtrace_wal_syncs_total'] == 0

    send_trace(c.otlp_url)  # three spans over OTLP/HTTP
    send_trace(exporter=OTLPSpanExporter(endpoint=f"http://{c.otlp_grpc}", insecure=True, timeout=10))
    assert requests.post(f"{c.zipkin_url}/api/v2/spans", json=ENVOY_SPANS, timeout=10).status_code == 202
    assert requests.post(f"{c.otlp_url}/v1/traces", data=b"\x0a\xff\xff", timeout=10,
                         headers={"Content-Type": "application/x-protobuf"}).status_code == 400
    assert requests.post(f"{c.zipkin_url}/api/v2/spans", data=b"[]", timeout=10,
                         headers={"Content-Type": "text/plain"}).status_code == 415
    with grpc.insecure_channel(c.otlp_grpc) as channel:
        with pytest.raises(grpc.RpcError):
            export(channel, request_with([bytes([9] * 8)], name="x" * 100_000).SerializeToString())
        export(channel, request_with([bytes([7] * 8), b"\x00" * 8]).SerializeToString())

    after = scrape(c)
    spans = 'meshtrace_receiver_spans_total{receiver="%s",outcome="%s"}'
    requests_ = 'meshtrace_receiver_requests_total{receiver="%s",outcome="%s"}'
    assert after[spans % ("otlp_http", "stored")] == 3
    assert after[spans % ("otlp_grpc", "stored")] == 3 + 1
    assert after[spans % ("otlp_grpc", "rejected")] == 1
    assert after[spans % ("zipkin", "stored")] == 2
    assert after[requests_ % ("otlp_http", "invalid")] == 1
    assert after[requests_ % ("zipkin", "unsupported")] == 1
    assert after[requests_ % ("otlp_grpc", "too_large")] == 1
    assert after[requests_ % ("zipkin", "accepted")] == 1
    assert after["meshtrace_wal_records_total"] >= 4
    assert after["meshtrace_wal_written_bytes_total"] > 0
    assert 1 <= after["meshtrace_wal_syncs_total"] <= after["meshtrace_wal_records_total"]
    assert after["meshtrace_head_spans"] == 3 + 3 + 2 + 1
    assert after['meshtrace_memory_budget_bytes{state="in_use"}'] == 0
    assert after["meshtrace_ingest_waiting_requests"] == 0
