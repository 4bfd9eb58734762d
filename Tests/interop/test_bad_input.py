"""Bad input gets a clear 4xx with a google.rpc.Status body, and the collector keeps serving."""
import json
import random

import requests
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
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
