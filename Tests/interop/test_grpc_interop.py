"""OTLP/gRPC: the Python OpenTelemetry SDK's gRPC exporter and raw gRPC calls
against a real meshtrace-collector."""
import json
import subprocess

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from conftest import BIN, meshtrace
from test_sdk_interop import check_read_back, send_trace

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def read_back(c, sent):
    trace_id = format(sent[0].context.trace_id, "032x")
    answer = meshtrace("trace", trace_id, "--output", "json", "--server", c.query_url)
    assert answer.returncode == 0, answer.stderr
    check_read_back(json.loads(answer.stdout), sent)


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate])
def test_sdk_grpc_exporter_lands_spans_that_read_back_unchanged(collector, compression):
    c = collector()
    exporter = OTLPSpanExporter(endpoint=f"http://{c.otlp_grpc}", insecure=True, timeout=10, compression=compression)
    read_back(c, send_trace(exporter=exporter))


def export(channel, payload, timeout=10):
    """Calls Export with `payload` as the raw request bytes; returns the raw response."""
    call = channel.unary_unary(EXPORT, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return call(payload, timeout=timeout)


def request_with(span_ids, trace_id=bytes(range(1, 17)), name="op"):
    request = trace_service_pb2.ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for span_id in span_ids:
        scope.spans.add(trace_id=trace_id, span_id=span_id, name=name,
                        start_time_unix_nano=1_700_000_000_000_000_000, end_time_unix_nano=1_700_000_000_000_001_000)
    return request


def test_refusals_follow_the_otlp_specification_and_the_collector_keeps_serving(collector):
    c = collector(extra_args=["--max-grpc-message-bytes", "65536"])
    with grpc.insecure_channel(c.otlp_grpc) as channel:
        # Bad span ids: the rest are stored, the refused ones counted in partial_success.
        good = request_with([bytes([7] * 8)])
        mixed = request_with([bytes([7] * 8), b"\x00" * 8, b"short"])
        response = trace_service_pb2.ExportTraceServiceResponse.FromString(export(channel, mixed.SerializeToString()))
        assert response.partial_success.rejected_spans == 2
        assert "span" in response.partial_success.error_message

        # Bytes that are not an ExportTraceServiceRequest: INVALID_ARGUMENT, not retryable.
        with pytest.raises(grpc.RpcError) as malformed:
            export(channel, b"\x0a\xff\xff\xff\xff\x0f garbage")
        assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Over the size limit: RESOURCE_EXHAUSTED without RetryInfo, so clients do not resend it.
        huge = request_with([bytes([9] * 8)], name="x" * 100_000)
        with pytest.raises(grpc.RpcError) as too_big:
            export(channel, huge.SerializeToString())
        assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = dict(too_big.value.trailing_metadata() or ()).get("grpc-status-details-bin")
        if details:
            status = status_pb2.Status.FromString(details)
            assert not any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)

        # The collector still serves, and stored what it acknowledged.
        response = trace_service_pb2.ExportTraceServiceResponse.FromString(export(channel, good.SerializeToString()))
        assert response.partial_success.rejected_spans == 0
    answer = meshtrace("trace", bytes(range(1, 17)).hex(), "--output", "json", "--server", c.query_url)
    assert answer.returncode == 0, answer.stderr
    spans = [s for rs in json.loads(answer.stdout)["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert [s["spanId"] for s in spans] == ["0707070707070707", "0707070707070707"], "each accepted span, once per export"


def test_each_receiver_can_be_switched_off(collector):
    c = collector(extra_args=["--otlp-grpc", "off"])
    assert c.otlp_grpc is None and c.otlp_url is not None
    d = collector(data_dir=c.data_dir.parent / "other", extra_args=["--otlp-http", "off"])
    assert d.otlp_url is None and d.otlp_grpc is not None
    read_back(d, send_trace(exporter=OTLPSpanExporter(endpoint=f"http://{d.otlp_grpc}", insecure=True, timeout=10)))


def test_a_grpc_port_in_use_refuses_a_second_collector_and_every_connection_reaches_the_first(collector, tmp_path):
    # The receiver listens on its port once per event loop (the sockets share it); a
    # second collector asking for the same port must still be refused, not let in.
    first = collector()
    second = subprocess.run(
        [str(BIN / "meshtrace-collector"), "--data-dir", str(tmp_path / "second"), "--otlp-grpc", first.otlp_grpc,
         "--otlp-http", "127.0.0.1:0", "--zipkin", "off", "--query", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert "otlp-grpc" in second.stderr and "in use" in second.stderr, second.stderr[-400:]

    # Connections opened one after another (the kernel spreads them over the
    # receiver's sockets) are each answered by the first collector, and stored there.
    for n in range(12):
        with grpc.insecure_channel(first.otlp_grpc) as channel:
            request = request_with([bytes([n + 1] * 8)], trace_id=bytes([0xC0, n]) + bytes(14), name=f"connection-{n}")
            response = trace_service_pb2.ExportTraceServiceResponse.FromString(export(channel, request.SerializeToString()))
            assert response.partial_success.rejected_spans == 0
    for n in range(12):
        trace_id = (bytes([0xC0, n]) + bytes(14)).hex()
        answer = meshtrace("trace", trace_id, "--output", "json", "--server", first.query_url)
        assert answer.returncode == 0, answer.stderr
        assert f"connection-{n}" in answer.stdout
