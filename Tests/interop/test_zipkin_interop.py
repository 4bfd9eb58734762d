"""Zipkin v2: the Python OpenTelemetry SDK's Zipkin JSON exporter, Envoy-style spans
(64-bit trace ids, a CLIENT and a SERVER span sharing one id), proto3 bodies and
bad input, against a real meshtrace-collector."""
import gzip
import json
import struct

import requests
from opentelemetry.exporter.zipkin.json import ZipkinExporter

from conftest import meshtrace
from test_sdk_interop import send_trace

KINDS = {"CLIENT": 3, "SERVER": 2, "PRODUCER": 4, "CONSUMER": 5, None: 1}


def stored_spans(c, trace_id_hex):
    answer = meshtrace("trace", trace_id_hex, "--output", "json", "--server", c.query_url)
    assert answer.returncode == 0, answer.stderr
    document = json.loads(answer.stdout)
    spans = {}
    for rs in document["resourceSpans"]:
        service = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}["service.name"]["stringValue"]
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                spans[span["spanId"]] = (service, ss.get("scope", {}), span)
    return spans


def test_sdk_zipkin_json_exporter_lands_what_it_sent(collector):
    c = collector()
    exporter = ZipkinExporter(endpoint=f"{c.zipkin_url}/api/v2/spans", timeout=10)
    sent = send_trace(exporter=exporter)
    # What the exporter put on the wire, to compare field by field.
    wire = json.loads(exporter.encoder.serialize(sent, exporter.local_node))
    stored = stored_spans(c, format(sent[0].context.trace_id, "032x"))
    assert len(stored) == len(wire) == 3
    for zipkin in wire:
        service, scope, span = stored[zipkin["id"]]
        assert service == zipkin["localEndpoint"]["serviceName"] == "checkout"
        assert span["traceId"] == zipkin["traceId"]
        assert span.get("parentSpanId", "") == zipkin.get("parentId", "")
        assert span["name"] == zipkin["name"]
        assert span["kind"] == KINDS[zipkin.get("kind")]
        assert int(span["startTimeUnixNano"]) == zipkin["timestamp"] * 1000
        assert int(span["endTimeUnixNano"]) == (zipkin["timestamp"] + zipkin["duration"]) * 1000
        tags = dict(zipkin.get("tags", {}))
        assert scope.get("name") == tags.pop("otel.scope.name") == "interop-test"
        assert scope.get("version") == tags.pop("otel.scope.version") == "0.9"
        if tags.pop("otel.status_code", None) == "ERROR":
            assert span["status"] == {"code": 2, "message": tags.pop("error")}
        attributes = {a["key"]: a["value"]["stringValue"] for a in span.get("attributes", [])}
        assert attributes == tags
        assert [(e["name"], int(e["timeUnixNano"])) for e in span.get("events", [])] == [
            (a["value"], a["timestamp"] * 1000) for a in zipkin.get("annotations", [])]


ENVOY_SPANS = [
    {"traceId": "463ac35c9f6413ad", "id": "a2fb4a1d1a96d312", "parentId": "0020000000000001", "kind": "CLIENT",
     "name": "checkout.default.svc.cluster.local:8080/*", "timestamp": 1700000000123456, "duration": 2300,
     "localEndpoint": {"serviceName": "frontend", "ipv4": "10.1.0.7"},
     "remoteEndpoint": {"serviceName": "checkout", "ipv4": "10.1.0.9", "port": 8080},
     "tags": {"upstream_cluster": "outbound|8080||checkout.default.svc.cluster.local", "http.status_code": "200",
              "response_flags": "-"}},
    {"traceId": "463ac35c9f6413ad", "id": "a2fb4a1d1a96d312", "parentId": "0020000000000001", "kind": "SERVER",
     "shared": True, "name": "checkout.default.svc.cluster.local:8080/*", "timestamp": 1700000000123900,
     "duration": 1500, "localEndpoint": {"serviceName": "checkout", "ipv4": "10.1.0.9"},
     "tags": {"upstream_cluster": "inbound|8080||", "http.status_code": "200"},
     "annotations": [{"timestamp": 1700000000124000, "value": "wr"}]},
]


def test_envoy_spans_with_64_bit_ids_and_a_shared_span_id_become_a_client_and_its_server_child(collector):
    c = collector()
    body = gzip.compress(json.dumps(ENVOY_SPANS).encode())
    response = requests.post(f"{c.zipkin_url}/api/v2/spans", data=body,
                             headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}, timeout=10)
    assert response.status_code == 202, response.text
    stored = stored_spans(c, "0000000000000000463ac35c9f6413ad")
    assert len(stored) == 2
    client = next(s for s in stored.values() if s[2]["kind"] == 3)
    server = next(s for s in stored.values() if s[2]["kind"] == 2)
    assert client[0] == "frontend" and server[0] == "checkout"
    assert client[2]["spanId"] == "a2fb4a1d1a96d312" and client[2]["parentSpanId"] == "0020000000000001"
    assert server[2]["spanId"] != "a2fb4a1d1a96d312", "the shared SERVER span gets an id of its own"
    assert server[2]["parentSpanId"] == "a2fb4a1d1a96d312", "… and the CLIENT span as its parent"
    client_attributes = {a["key"]: a["value"] for a in client[2]["attributes"]}
    assert client_attributes["peer.service"] == {"stringValue": "checkout"}
    assert client_attributes["network.peer.address"] == {"stringValue": "10.1.0.9"}
    assert client_attributes["network.peer.port"] in ({"intValue": "8080"}, {"intValue": 8080})
    assert [e["name"] for e in server[2]["events"]] == ["wr"]
    # Sent again (a retry), the same spans are stored again under the same ids, not new ones.
    assert requests.post(f"{c.zipkin_url}/api/v2/spans", json=ENVOY_SPANS, timeout=10).status_code == 202
    assert set(stored_spans(c, "0000000000000000463ac35c9f6413ad")) == set(stored)


def proto3_list_of_spans(spans):
    """Encodes Zipkin v2 spans as zipkin.proto3 ListOfSpans, by hand (no generated code)."""
    def varint(n):
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    def field(number, wire_type, payload):
        key = varint(number << 3 | wire_type)
        return key + (varint(len(payload)) + payload if wire_type == 2 else payload)

    kinds = {"CLIENT": 1, "SERVER": 2}
    out = b""
    for s in spans:
        body = field(1, 2, bytes.fromhex(s["traceId"])) + field(3, 2, bytes.fromhex(s["id"]))
        if "parentId" in s:
            body += field(2, 2, bytes.fromhex(s["parentId"]))
        body += field(4, 0, varint(kinds[s["kind"]])) + field(5, 2, s["name"].encode())
        body += field(6, 1, struct.pack("<Q", s["timestamp"])) + field(7, 0, varint(s["duration"]))
        endpoint = field(1, 2, s["localEndpoint"]["serviceName"].encode()) + field(2, 2, bytes(map(int, s["localEndpoint"]["ipv4"].split("."))))
        body += field(8, 2, endpoint)
        for key, value in s["tags"].items():
            body += field(11, 2, field(1, 2, key.encode()) + field(2, 2, value.encode()))
        if s.get("shared"):
            body += field(13, 0, varint(1))
        out += field(1, 2, body)
    return out


def test_proto3_bodies_land_like_json_ones(collector):
    c = collector()
    spans = [dict(s, traceId="463ac35c9f6413ad463ac35c9f6413ae") for s in ENVOY_SPANS]
    response = requests.post(f"{c.zipkin_url}/api/v2/spans", data=proto3_list_of_spans(spans),
                             headers={"Content-Type": "application/x-protobuf"}, timeout=10)
    assert response.status_code == 202, response.text
    stored = stored_spans(c, "463ac35c9f6413ad463ac35c9f6413ae")
    assert sorted((s[0], s[2]["kind"], s[2].get("parentSpanId")) for s in stored.values()) == [
        ("checkout", 2, "a2fb4a1d1a96d312"), ("frontend", 3, "0020000000000001")]


def test_bad_zipkin_input_gets_a_clear_error_and_the_collector_keeps_serving(collector):
    c = collector()
    url = f"{c.zipkin_url}/api/v2/spans"
    for body, content_type, status, text in [
        (b"{not json", "application/json", 400, "not a JSON array of Zipkin v2 spans"),
        (json.dumps([dict(ENVOY_SPANS[0], traceId="xyz")]).encode(), "application/json", 400, "traceId"),
        (b"\x0a\xff\xff\xff\x0f", "application/x-protobuf", 400, "cannot decode Zipkin v2 spans"),
        (b"[]", "text/plain", 415, "unsupported content type"),
    ]:
        response = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=10)
        assert response.status_code == status, (body, response.text)
        assert text in response.text
    assert requests.post(url, json=ENVOY_SPANS, timeout=10).status_code == 202
