"""Overload: clients sending faster than a collector with a small memory budget get
pushback (HTTP 429 with Retry-After, gRPC RESOURCE_EXHAUSTED with RetryInfo), retry,
and in the end every acknowledged span is stored exactly once."""
import struct
import threading
import time

import grpc
import requests
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from test_grpc_interop import export

SPANS_PER_REQUEST = 200


def big_request(trace_id):
    """About 120 kB: 200 spans with a few hundred bytes of attributes each."""
    spans = [trace_pb2.Span(
        trace_id=trace_id, span_id=struct.pack(">Q", i + 1), name=f"op-{i}",
        start_time_unix_nano=1_700_000_000_000_000_000 + i, end_time_unix_nano=1_700_000_000_000_100_000 + i,
        attributes=[common_pb2.KeyValue(key=f"k{j}", value=common_pb2.AnyValue(string_value="v" * 80)) for j in range(6)])
        for i in range(SPANS_PER_REQUEST)]
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        scope_spans=[trace_pb2.ScopeSpans(spans=spans)])])


def peak_rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def count_spans(c, trace_id):
    body = requests.get(f"{c.query_url}/api/traces/{trace_id.hex()}", timeout=30).json()
    return sum(len(t["spans"]) for t in body["data"])


def test_overload_gets_pushback_retries_and_stores_every_acknowledged_span_once(collector):
    budget = 1_000_000  # each ~120 kB request is charged 4×: about two fit at once
    c = collector(extra_args=["--memory-budget", str(budget)])
    idle_rss = rss_kib(c.proc.pid)
    acknowledged, refusals, failures = [], [], []
    lock = threading.Lock()

    def http_client(n):
        session = requests.Session()
        for i in range(10):
            trace_id = struct.pack(">QQ", 0xA000 + n, i + 1)
            body = big_request(trace_id).SerializeToString()
            while True:
                r = session.post(f"{c.otlp_url}/v1/traces", data=body,
                                 headers={"Content-Type": "application/x-protobuf"}, timeout=30)
                if r.status_code == 200:
                    with lock:
                        acknowledged.append(trace_id)
                    break
                if r.status_code != 429 or r.headers.get("Retry-After") != "1":
                    with lock:
                        failures.append((r.status_code, r.headers.get("Retry-After"), r.content[:200]))
                    return
                with lock:
                    refusals.append("http")
                time.sleep(0.05)  # shorter than Retry-After, to keep the test quick

    def grpc_client(n):
        with grpc.insecure_channel(c.otlp_grpc) as channel:
            for i in range(10):
                trace_id = struct.pack(">QQ", 0xB000 + n, i + 1)
                payload = big_request(trace_id).SerializeToString()
                while True:
                    try:
                        export(channel, payload, timeout=30)
                        with lock:
                            acknowledged.append(trace_id)
                        break
                    except grpc.RpcError as error:
                        details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
                        retry = details and any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)
                                                for d in status_pb2.Status.FromString(details).details)
                        if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or not retry:
                            with lock:
                                failures.append((error.code(), error.details()))
                            return
                        with lock:
                            refusals.append("grpc")
                        time.sleep(0.05)

    threads = [threading.Thread(target=http_client, args=(n,)) for n in range(6)]
    threads += [threading.Thread(target=grpc_client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not failures, failures[:3]
    assert len(acknowledged) == 120
    assert "http" in refusals and "grpc" in refusals, f"expected pushback on both doors, got {len(refusals)} refusals"
    for trace_id in acknowledged:
        assert count_spans(c, trace_id) == SPANS_PER_REQUEST, trace_id.hex()

    # The budget bounds request data in flight; what the process holds beyond its idle
    # size is the budget plus a fixed overhead (the head block of 24,000 stored spans,
    # allocator slack, twelve connections).
    grown_mib = (peak_rss_kib(c.proc.pid) - idle_rss) / 1024
    print(f"idle RSS {idle_rss / 1024:.1f} MiB, peak grew by {grown_mib:.1f} MiB, {len(refusals)} refusals")
    assert grown_mib < budget / 2**20 + 96
