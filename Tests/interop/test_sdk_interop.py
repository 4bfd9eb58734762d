"""The Python OpenTelemetry SDK's OTLP/HTTP exporter talks to a real meshtrace-collector,
and what it sent reads back unchanged through `meshtrace trace --output json`."""
import json

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from conftest import meshtrace

T0 = 1_700_000_000_123_456_789  # odd nanoseconds, so any rounding shows

ATTRIBUTES = {
    "str": "héllo",
    "bool": True,
    "int": 9_007_199_254_740_993,  # above 2^53: must not pass through a double
    "float": 0.1,
    "str_list": ["a", "b"],
    "bool_list": [True, False],
    "int_list": [1, -2, 3],
    "float_list": [1.5, -0.25],
}

OTLP_KIND = {SpanKind.INTERNAL: 1, SpanKind.SERVER: 2, SpanKind.CLIENT: 3, SpanKind.PRODUCER: 4, SpanKind.CONSUMER: 5}


def send_trace(otlp_url=None, exporter=None):
    """Sends a three-span trace through `exporter` (by default the SDK's OTLP/HTTP
    exporter to `otlp_url`); returns the spans as the SDK finished them."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({
        "service.name": "checkout", "service.version": "1.2.3", "k8s.pod.name": "checkout-7d9f-x2k4q"}))
    exporter = exporter or OTLPSpanExporter(endpoint=f"{otlp_url}/v1/traces", timeout=10)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("interop-test", "0.9")

    root = tracer.start_span("GET /checkout", kind=SpanKind.SERVER, start_time=T0, attributes=ATTRIBUTES)
    child = tracer.start_span("POST /payments", context=set_span_in_context(root), kind=SpanKind.CLIENT,
                              start_time=T0 + 1_001, attributes={"http.response.status_code": 503})
    child.add_event("retry", attributes={"attempt": 2, "reason": "reset"}, timestamp=T0 + 2_003)
    child.set_status(Status(StatusCode.ERROR, "upstream reset"))
    grandchild = tracer.start_span("encode", context=set_span_in_context(child), start_time=T0 + 3_005)
    grandchild.end(end_time=T0 + 4_007)
    child.end(end_time=T0 + 5_009)
    root.end(end_time=T0 + 6_011)
    provider.shutdown()
    return memory.get_finished_spans()


def otlp_json_value(value):
    """What OTLP/JSON carries for a Python attribute value."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    return {"arrayValue": {"values": [otlp_json_value(v) for v in value]}}


def normalize_value(value):
    if "intValue" in value:
        return {"intValue": str(value["intValue"])}
    if "arrayValue" in value:
        return {"arrayValue": {"values": [normalize_value(v) for v in value["arrayValue"].get("values", [])]}}
    return value


def attributes_of(items):
    return {a["key"]: normalize_value(a["value"]) for a in items or []}


def check_read_back(document, sent):
    # The exact OTLP request the SDK's exporter sent, for the fields the SDK derives (flags).
    encoded = encode_spans(sent)
    sent_flags = {s.span_id.hex(): s.flags for rs in encoded.resource_spans for ss in rs.scope_spans for s in ss.spans}
    spans = {}
    resources = {}
    for rs in document["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            assert ss["scope"]["name"] == "interop-test"
            assert ss["scope"]["version"] == "0.9"
            for span in ss["spans"]:
                spans[span["spanId"]] = span
                resources[span["spanId"]] = attributes_of(rs["resource"]["attributes"])
    assert len(spans) == len(sent) == 3

    for original in sent:
        span_id = format(original.context.span_id, "016x")
        got = spans[span_id]
        assert got["traceId"] == format(original.context.trace_id, "032x")
        assert got["name"] == original.name
        assert got["kind"] == OTLP_KIND[original.kind]
        assert int(got["startTimeUnixNano"]) == original.start_time
        assert int(got["endTimeUnixNano"]) == original.end_time
        expected_parent = format(original.parent.span_id, "016x") if original.parent else ""
        assert got.get("parentSpanId", "") == expected_parent
        assert attributes_of(got.get("attributes")) == {k: otlp_json_value(v) for k, v in original.attributes.items()}
        assert resources[span_id]["service.name"] == {"stringValue": "checkout"}
        assert resources[span_id]["k8s.pod.name"] == {"stringValue": "checkout-7d9f-x2k4q"}
        if original.status.status_code == StatusCode.ERROR:
            assert got["status"] == {"code": 2, "message": "upstream reset"}
        else:
            assert got.get("status", {}).get("code", 0) == 0
        events = got.get("events", [])
        assert [(e["name"], int(e["timeUnixNano"]), attributes_of(e.get("attributes"))) for e in events] == [
            (e.name, e.timestamp, {k: otlp_json_value(v) for k, v in e.attributes.items()}) for e in original.events]
        assert got.get("flags", 0) == sent_flags[span_id]


def test_sdk_trace_reads_back_unchanged_from_server_and_from_disk(collector):
    c = collector()
    sent = send_trace(c.otlp_url)
    trace_id = format(sent[0].context.trace_id, "032x")

    answer = meshtrace("trace", trace_id, "--output", "json", "--server", c.query_url)
    assert answer.returncode == 0, answer.stderr
    check_read_back(json.loads(answer.stdout), sent)

    table = meshtrace("trace", trace_id, "--server", c.query_url)
    assert table.returncode == 0, table.stderr
    assert "GET /checkout" in table.stdout and "ERROR" in table.stdout

    # After a graceful stop the head block is sealed into a segment; read the segment.
    assert c.stop() == 0
    assert list((c.data_dir / "segments").glob("*.mts")), "SIGTERM seals the head block"
    from_disk = meshtrace("trace", trace_id, "--output", "json", "--data-dir", c.data_dir)
    assert from_disk.returncode == 0, from_disk.stderr
    check_read_back(json.loads(from_disk.stdout), sent)


def test_unknown_trace_exits_3(collector):
    c = collector()
    answer = meshtrace("trace", "0123456789abcdef0123456789abcdef", "--server", c.query_url)
    assert answer.returncode == 3
    assert "not found" in answer.stderr
    bad = meshtrace("trace", "not-hex", "--server", c.query_url)
    assert bad.returncode == 1, "a usage error exits 1"
    assert "hex digits" in bad.stderr


def test_jaeger_json_trace_shape(collector):
    import requests
    c = collector()
    sent = send_trace(c.otlp_url)
    trace_id = format(sent[0].context.trace_id, "032x")
    body = requests.get(f"{c.query_url}/api/traces/{trace_id}", timeout=10).json()
    assert body["errors"] is None or body["errors"] == []
    trace = body["data"][0]
    assert trace["traceID"] == trace_id
    by_name = {s["operationName"]: s for s in trace["spans"]}
    child = by_name["POST /payments"]
    assert child["startTime"] == (T0 + 1_001) // 1000  # microseconds
    assert child["duration"] == (5_009 - 1_001) // 1000
    root = next(s for s in sent if s.name == "GET /checkout")
    assert child["references"] == [{"refType": "CHILD_OF", "traceID": trace_id,
                                    "spanID": format(root.context.span_id, "016x")}]
    tags = {t["key"]: t for t in child["tags"]}
    assert tags["error"] == {"key": "error", "type": "bool", "value": True}
    assert tags["span.kind"]["value"] == "client"
    assert trace["processes"][child["processID"]]["serviceName"] == "checkout"
    assert child["logs"][0]["fields"][0] == {"key": "event", "type": "string", "value": "retry"}
    missing = requests.get(f"{c.query_url}/api/traces/0123456789abcdef0123456789abcdef", timeout=10)
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["msg"] == "trace not found"
