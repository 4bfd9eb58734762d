"""Bad input gets a clear 4xx with a google.rpc.Status body, and the collector keeps serving."""
import json
import random
import socket
import time

import grpc
import pytest
import requests
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from conftest import meshtrace

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def valid_request(trace_byte):
    span = trace_pb2.Span(trace_id=bytes([trace_byte]) * 16, span_id=bytes([trace_byte]) * 8, name="ok",
                          start_time_unix_nano=1_700_000_000_000_000_000, end_time_unix_nano=1_700_000_000_000_001_000)
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        scope_spans=[trace_pb2.ScopeSpans(spans=[span])])])


def assert_still_serving(c, trace_byte):
    response = requests.post(f"{c.otlp_url}/v1/traces", data=valid_request(trace_byte).SerializeToString(),
                             headers=PROTOBUF, timeout=10)
    assert response.status_code == 200
    found = meshtrace("trace", (bytes([trace_byte]) * 16).hex(), "--server", c.query_url)
    assert found.returncode == 0, found.stderr


def protobuf_status(response):
    assert response.headers["Content-Type"].startswith("application/x-protobuf")
    return status_pb2.Status.FromString(response.content)


def test_malformed_protobuf_gets_400_with_status(collector):
    c = collector()
    # Field 1 (resource_spans) claims 2^31 bytes that are not there.
    response = requests.post(f"{c.otlp_url}/v1/traces", data=b"\x0a\xff\xff\xff\xff\x07\x01\x02", headers=PROTOBUF, timeout=10)
    assert response.status_code == 400
    status = protobuf_status(response)
    assert status.code == 3  # INVALID_ARGUMENT
    assert "malformed ExportTraceServiceRequest" in status.message
    assert_still_serving(c, 1)


def test_json_that_is_not_otlp_gets_400_with_status(collector):
    c = collector()
    for body in [b'{"resourceSpans": "nope"}', b"[1, 2, 3]", b"{ not json"]:
        response = requests.post(f"{c.otlp_url}/v1/traces", data=body, headers={"Content-Type": "application/json"}, timeout=10)
        assert response.status_code == 400, body
        status = response.json()
        assert status["code"] == 3
        assert "JSON" in status["message"], status
    assert_still_serving(c, 2)


def test_empty_body_gets_400(collector):
    c = collector()
    response = requests.post(f"{c.otlp_url}/v1/traces", data=b"", headers=PROTOBUF, timeout=10)
    assert response.status_code == 400
    assert "empty request body" in protobuf_status(response).message
    assert_still_serving(c, 3)


def test_wrong_content_type_gets_415(collector):
    c = collector()
    response = requests.post(f"{c.otlp_url}/v1/traces", data=valid_request(4).SerializeToString(),
                             headers={"Content-Type": "text/plain"}, timeout=10)
    assert response.status_code == 415
    status = response.json()
    assert "unsupported content type" in status["message"]
    assert "application/x-protobuf" in status["message"]
    assert_still_serving(c, 5)


def test_invalid_span_ids_are_reported_in_partial_success(collector):
    c = collector()
    request = valid_request(6)
    bad = request.resource_spans[0].scope_spans[0].spans.add()
    bad.CopyFrom(request.resource_spans[0].scope_spans[0].spans[0])
    bad.span_id = b"\x01\x02"
    response = requests.post(f"{c.otlp_url}/v1/traces", data=request.SerializeToString(), headers=PROTOBUF, timeout=10)
    assert response.status_code == 200
    answer = trace_service_pb2.ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 1
    assert "span id" in answer.partial_success.error_message


def test_otlp_json_with_hex_ids_is_accepted(collector):
    c = collector()
    body = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-svc"}}]},
            "scopeSpans": [{"spans": [{"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
                                        "name": "from-json", "kind": 2, "startTimeUnixNano": "1700000000000000001",
                                        "endTimeUnixNano": "1700000000000000999",
                                        "attributes": [{"key": "n", "value": {"intValue": "42"}}]}]}]}]}
    response = requests.post(f"{c.otlp_url}/v1/traces", data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    got = json.loads(meshtrace("trace", "0af7651916cd43dd8448eb211c80319c", "-o", "json", "--server", c.query_url).stdout)
    span = got["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["spanId"] == "b7ad6b7169203331"
    assert span["startTimeUnixNano"] == "1700000000000000001"
    assert span["attributes"] == [{"key": "n", "value": {"intValue": "42"}}]


def test_random_garbage_never_crashes_the_collector(collector):
    c = collector()
    rng = random.Random(1234)
    seed = valid_request(7).SerializeToString()
    for i in range(300):
        if i % 2:
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))
        else:
            body = bytearray(seed)
            for _ in range(rng.randint(1, 6)):
                body[rng.randrange(len(body))] = rng.getrandbits(8)
            body = bytes(body)
        response = requests.post(f"{c.otlp_url}/v1/traces", data=body, headers=PROTOBUF, timeout=10)
        assert response.status_code in (200, 400), (response.status_code, body)
    assert c.alive()
    assert_still_serving(c, 8)


def test_oversized_body_gets_413(collector):
    c = collector(extra_args=["--max-request-bytes", "1000"])
    big = valid_request(9)
    big.resource_spans[0].scope_spans[0].spans[0].name = "x" * 5000
    response = requests.post(f"{c.otlp_url}/v1/traces", data=big.SerializeToString(), headers=PROTOBUF, timeout=10)
    assert response.status_code == 413
    assert "exceeds the limit of 1000 bytes" in protobuf_status(response).message
    assert_still_serving(c, 10)


def test_a_client_that_never_finishes_its_body_is_cut_off_and_others_are_served(collector):
    c = collector(extra_args=["--read-timeout", "2s"])
    host, port = c.otlp_url.removeprefix("http://").split(":")
    stalled = socket.create_connection((host, int(port)), timeout=30)
    stalled.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                    b"Content-Length: 100000\r\n\r\n" + b"\x0a" * 10)
    trickling = socket.create_connection((host, int(port)), timeout=30)
    trickling.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                      b"Content-Length: 100000\r\n\r\n")
    started = time.monotonic()
    # Meanwhile other clients are served.
    assert_still_serving(c, 11)
    # The trickling client keeps the connection busy, one byte a second, past the read timeout.
    answer = b""
    while time.monotonic() - started < 10 and not answer:
        try:
            trickling.sendall(b"\x0a")
        except OSError:
            break
        trickling.settimeout(1.0)
        try:
            answer = trickling.recv(4096)
        except socket.timeout:
            pass
    assert answer.startswith(b"HTTP/1.1 408"), answer
    # The silent one is closed by the idle timeout: recv returns end of stream.
    stalled.settimeout(10)
    assert stalled.recv(4096) == b""
    assert time.monotonic() - started < 10
    assert c.alive()
    assert_still_serving(c, 12)


def test_a_span_with_a_million_attributes_gets_an_answer_and_others_are_served(collector):
    c = collector()
    request = valid_request(13)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    for i in range(1_000_000):
        span.attributes.add(key="k", value=common_pb2.AnyValue(int_value=i))
    body = request.SerializeToString()
    assert len(body) > 4 << 20
    response = requests.post(f"{c.otlp_url}/v1/traces", data=body, headers=PROTOBUF, timeout=120)
    assert response.status_code == 200, response.content[:200]
    assert not trace_service_pb2.ExportTraceServiceResponse.FromString(response.content).HasField("partial_success")
    assert_still_serving(c, 14)
    # Over gRPC the same message is past the 4 MiB limit: RESOURCE_EXHAUSTED, and the channel keeps working.
    with grpc.insecure_channel(c.otlp_grpc, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as refused:
            call(body, timeout=60)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        call(valid_request(15).SerializeToString(), timeout=10)
    # The huge span is sealed into a segment with the rest.
    assert c.stop() == 0
    found = meshtrace("trace", (bytes([13]) * 16).hex(), "-o", "json", "--data-dir", c.data_dir)
    assert found.returncode == 0, found.stderr
    assert found.stdout.count('"key"') >= 1_000_000
