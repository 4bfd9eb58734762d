"""Every span acknowledged survives kill -9 of the collector, and a SIGTERM under load,
exactly once, over OTLP/HTTP and OTLP/gRPC."""
import json
import threading
import time

import grpc
import pytest
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from conftest import meshtrace

SPANS_PER_TRACE = 3


def request_for(n):
    trace_id = n.to_bytes(16, "big")
    spans = [trace_pb2.Span(trace_id=trace_id, span_id=(n * 8 + k + 1).to_bytes(8, "big"), name=f"op-{k}",
                            start_time_unix_nano=1_700_000_000_000_000_000 + n * 1000 + k,
                            end_time_unix_nano=1_700_000_000_000_000_500 + n * 1000 + k)
             for k in range(SPANS_PER_TRACE)]
    resource = resource_pb2.Resource(attributes=[common_pb2.KeyValue(
        key="service.name", value=common_pb2.AnyValue(string_value="durable"))])
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        resource=resource, scope_spans=[trace_pb2.ScopeSpans(spans=spans)])])


EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def start_senders(c, protocol, acknowledged, stop, workers=4):
    """Threads that export one trace per request until `stop` is set or the collector
    is gone, appending the number of every trace acknowledged as stored."""

    def send_http(worker):
        session = requests.Session()
        n = worker * 1_000_000 + 1
        while not stop.is_set():
            try:
                response = session.post(f"{c.otlp_url}/v1/traces", data=request_for(n).SerializeToString(),
                                        headers={"Content-Type": "application/x-protobuf"}, timeout=5)
            except requests.RequestException:
                return  # the collector is gone
            if response.status_code == 200:
                acknowledged.append(n)
            n += 1

    def send_grpc(worker):
        with grpc.insecure_channel(c.otlp_grpc) as channel:
            call = channel.unary_unary(EXPORT, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            n = worker * 1_000_000 + 1
            while not stop.is_set():
                try:
                    call(request_for(n).SerializeToString(), timeout=5)
                except grpc.RpcError as error:
                    if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                        grpc.StatusCode.DEADLINE_EXCEEDED):
                        return  # the collector is gone or going
                    raise
                acknowledged.append(n)
                n += 1

    senders = [threading.Thread(target=send_http if protocol == "http" else send_grpc, args=(w,)) for w in range(workers)]
    for s in senders:
        s.start()
    return senders


def assert_all_present(c, acknowledged):
    session = requests.Session()
    for n in acknowledged:
        response = session.get(f"{c.query_url}/api/traces/{n:032x}", timeout=10)
        assert response.status_code == 200, f"acknowledged trace {n:032x} lost"
        spans = response.json()["data"][0]["spans"]
        assert len(spans) == SPANS_PER_TRACE, f"trace {n:032x} has {len(spans)} spans, not {SPANS_PER_TRACE}"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_acknowledged_spans_survive_kill_9(collector, tmp_path, protocol):
    c = collector(tmp_path / "store", extra_args=["--max-head-spans", "600"])
    acknowledged = []
    stop = threading.Event()
    senders = start_senders(c, protocol, acknowledged, stop)
    deadline = time.monotonic() + 30
    sealed = lambda: list((c.data_dir / "segments").glob("*.mts"))
    while (len(acknowledged) < 400 or not sealed()) and time.monotonic() < deadline:
        time.sleep(0.05)
    c.kill()  # SIGKILL while the senders are still sending
    stop.set()
    for s in senders:
        s.join()
    assert len(acknowledged) >= 400, "the collector acknowledged too little before the kill"
    assert sealed(), "some head blocks were sealed before the crash"

    restarted = collector(c.data_dir)
    assert_all_present(restarted, acknowledged)

    # The same answer straight from disk, with the collector stopped and everything sealed.
    assert restarted.stop() == 0
    answer = meshtrace("trace", f"{acknowledged[-1]:032x}", "-o", "json", "--data-dir", c.data_dir)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.count('"spanId"') == SPANS_PER_TRACE


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sigterm_under_load_drains_syncs_and_seals(collector, tmp_path, protocol):
    """SIGTERM while clients keep sending: the collector stops taking requests, answers
    the ones it took once they are durable, seals the head block and exits 0; every
    acknowledged span is then in a segment, and the WAL holds nothing left to replay."""
    c = collector(tmp_path / "store", extra_args=["--wal-sync-interval", "5ms"])
    acknowledged = []
    stop = threading.Event()
    senders = start_senders(c, protocol, acknowledged, stop)
    deadline = time.monotonic() + 30
    while len(acknowledged) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert c.stop() == 0, "graceful shutdown exits 0"
    stop.set()
    for s in senders:
        s.join()
    assert len(acknowledged) >= 300

    segments = list((c.data_dir / "segments").glob("*.mts"))
    assert segments, "SIGTERM sealed the head block"
    stored = meshtrace("segments", "list", "--data-dir", c.data_dir, "-o", "json")
    assert stored.returncode == 0, stored.stderr
    assert sum(s["spans"] for s in json.loads(stored.stdout)) >= len(acknowledged) * SPANS_PER_TRACE

    restarted = collector(c.data_dir)
    head = [line for line in requests.get(f"{restarted.query_url}/metrics", timeout=10).text.splitlines()
            if line.startswith("meshtrace_head_spans ")]
    assert head == ["meshtrace_head_spans 0"], "nothing was left in the WAL to replay"
    assert_all_present(restarted, acknowledged)


def test_a_listener_that_cannot_start_still_seals_what_the_wal_held(collector, tmp_path):
    """A collector whose OTLP/HTTP address is taken exits with an error naming it; the
    spans an earlier run left in the WAL, replayed at start, are sealed on the way out."""
    import socket
    import subprocess
    from conftest import BIN, KEEP_ALL
    c = collector(tmp_path / "store")
    for n in range(1, 21):
        response = requests.post(f"{c.otlp_url}/v1/traces", data=request_for(n).SerializeToString(),
                                 headers={"Content-Type": "application/x-protobuf"}, timeout=10)
        assert response.status_code == 200
    c.kill()
    assert not list((c.data_dir / "segments").glob("*.mts")), "the spans are in the WAL only"

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    try:
        run = subprocess.run([str(BIN / "meshtrace-collector"), "--data-dir", str(c.data_dir), "--policy", str(KEEP_ALL),
                              "--otlp-http", address, "--otlp-grpc", "off", "--zipkin", "off", "--query", "127.0.0.1:0"],
                             capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert run.returncode != 0
    assert address in run.stderr, run.stderr
    assert "sealing at shutdown failed" not in run.stderr, run.stderr
    stored = meshtrace("segments", "list", "--data-dir", c.data_dir, "-o", "json")
    assert stored.returncode == 0, stored.stderr
    assert sum(s["spans"] for s in json.loads(stored.stdout)) == 20 * SPANS_PER_TRACE
