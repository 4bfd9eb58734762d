"""The query API as Grafana's Jaeger and Tempo data sources call it, the native
JSON API, and the CLI, against a collector fed by the Python OpenTelemetry SDK.

The requests replay what Grafana sends (paths, parameter names and units,
`Accept` headers, double-encoded tag names); the checks are on field names,
units and shapes, and on the answers being the right traces."""
import json
import os
import pty
import subprocess
import time
import urllib.parse

import pytest
import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from conftest import BIN, Collector, meshtrace

MS = 1_000_000
NOW = time.time_ns()
# Traces start a minute ago, 100 ms apart: trace i starts at T0 + i * 100 ms.
T0 = NOW - 60_000 * MS
SLOW = {3, 7}  # cart answers 503 after 400 ms in these traces
CANARY = {5, 6, 7, 8, 9}  # cart v2 serves these
TRACES = 10


def providers(otlp_url):
    def provider(service, version="1.0", namespace="shop"):
        p = TracerProvider(resource=Resource.create({
            "service.name": service, "service.version": version, "k8s.namespace.name": namespace}))
        p.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{otlp_url}/v1/traces", timeout=10)))
        return p
    return {"frontend": provider("frontend", namespace="edge"), "cart": provider("cart", "v1"),
            "cart-v2": provider("cart", "v2")}


def send_traces(otlp_url):
    """Ten requests frontend → cart → redis; returns each trace's spans by name."""
    ps = providers(otlp_url)
    tracers = {name: p.get_tracer("contract-test") for name, p in ps.items()}
    traces = []
    for i in range(TRACES):
        t0 = T0 + i * 100 * MS
        slow = i in SLOW
        status = 503 if slow else 200
        took = 400 * MS if slow else 5 * MS
        cart = tracers["cart-v2" if i in CANARY else "cart"]
        security = {"connection_security_policy": "none" if i == 9 else "mutual_tls"}
        root = tracers["frontend"].start_span("GET /", kind=SpanKind.SERVER, start_time=t0,
                                              attributes={"http.response.status_code": status})
        call = tracers["frontend"].start_span("GET /api/cart", context=set_span_in_context(root), kind=SpanKind.CLIENT,
                                              start_time=t0 + MS, attributes={"http.response.status_code": status, **security})
        serve = cart.start_span("GET /api/cart", context=set_span_in_context(call), kind=SpanKind.SERVER, start_time=t0 + 2 * MS,
                                attributes={"http.response.status_code": status, "cart.items": i, **security})
        db = cart.start_span("HGETALL", context=set_span_in_context(serve), kind=SpanKind.CLIENT, start_time=t0 + 3 * MS,
                             attributes={"db.system": "redis", "server.address": "redis"})
        db.end(end_time=t0 + 4 * MS)
        if slow:
            serve.set_status(Status(StatusCode.ERROR, "upstream timeout"))
            call.set_status(Status(StatusCode.ERROR))
        serve.end(end_time=t0 + 2 * MS + took)
        call.end(end_time=t0 + 3 * MS + took)
        root.end(end_time=t0 + 4 * MS + took)
        traces.append({"root": root, "call": call, "serve": serve, "db": db})
    for p in ps.values():
        p.shutdown()
    return traces


def trace_hex(span):
    return format(span.get_span_context().trace_id, "032x")


def span_hex(span):
    return format(span.get_span_context().span_id, "016x")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    c = Collector(tmp_path_factory.mktemp("query") / "data").start()
    traces = send_traces(c.otlp_url)
    # A CLIENT span with no SERVER span becomes an edge to an uninstrumented callee
    # once its pairing window (at least 10 s) has passed.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        edges = get(c, "/api/v1/edges", {"since": "15m"}).json()["edges"]
        if any(e["target"] == "redis" and e["figures"]["requests"] == TRACES for e in edges):
            break
        time.sleep(0.5)
    yield c, traces
    c.kill()


def get(c, path, params=None, accept="application/json"):
    return requests.get(c.query_url + path, params=params, headers={"Accept": accept}, timeout=30)


def micros(ns):
    return ns // 1000


# --- Jaeger, as Grafana's Jaeger data source calls it ---------------------------------

def test_jaeger_health_check_services_and_operations(mesh):
    c, _ = mesh
    body = get(c, "/api/services").json()
    assert set(body) == {"data", "total", "limit", "offset", "errors"}
    assert body["data"] == ["cart", "frontend"] and body["total"] == 2 and body["errors"] is None
    ops = get(c, "/api/services/cart/operations").json()
    assert ops["data"] == ["GET /api/cart", "HGETALL"] and ops["total"] == 2
    kinds = get(c, "/api/operations", {"service": "cart", "spanKind": "server"}).json()
    assert kinds["data"] == [{"name": "GET /api/cart", "spanKind": "server"}]


def test_jaeger_search_matches_one_span_on_every_filter_and_returns_whole_traces(mesh):
    c, traces = mesh
    # Grafana turns its logfmt tag field into a JSON object, and sends start/end in µs.
    params = {"service": "cart", "operation": "GET /api/cart", "tags": json.dumps({"http.response.status_code": "503"}),
              "minDuration": "100ms", "maxDuration": "", "limit": "20",
              "start": str(micros(T0 - 1000 * MS)), "end": str(micros(NOW))}
    body = get(c, "/api/traces", params).json()
    assert body["errors"] is None
    found = sorted(t["traceID"] for t in body["data"])
    assert found == sorted(trace_hex(traces[i]["root"]) for i in SLOW)
    trace = next(t for t in body["data"] if t["traceID"] == trace_hex(traces[3]["root"]))
    assert set(trace) == {"traceID", "spans", "processes", "warnings"}
    assert len(trace["spans"]) == 4  # the whole trace, not only the matching span
    serve = next(s for s in trace["spans"] if s["spanID"] == span_hex(traces[3]["serve"]))
    assert serve["operationName"] == "GET /api/cart"
    assert serve["startTime"] == micros(traces[3]["serve"].start_time)  # µs since the epoch
    assert serve["duration"] == 400_000  # µs
    assert serve["references"] == [{"refType": "CHILD_OF", "traceID": trace_hex(traces[3]["root"]),
                                     "spanID": span_hex(traces[3]["call"])}]
    tags = {t["key"]: (t["type"], t["value"]) for t in serve["tags"]}
    assert tags["span.kind"] == ("string", "server")
    assert tags["error"] == ("bool", True)
    assert tags["http.response.status_code"] == ("int64", 503)
    assert trace["processes"][serve["processID"]]["serviceName"] == "cart"

    # Each filter narrows: the same search below 100 ms, or for another operation, finds nothing.
    assert get(c, "/api/traces", {**params, "minDuration": "", "maxDuration": "100ms"}).json()["data"] == []
    assert get(c, "/api/traces", {**params, "operation": "HGETALL"}).json()["data"] == []
    # The window bounds span start times.
    late = {**params, "start": str(micros(T0 + 500 * MS)), "end": str(micros(NOW))}
    assert [t["traceID"] for t in get(c, "/api/traces", late).json()["data"]] == [trace_hex(traces[7]["root"])]


def test_jaeger_search_limit_returns_the_newest(mesh):
    c, traces = mesh
    body = get(c, "/api/traces", {"service": "frontend", "limit": "3", "start": str(micros(T0 - MS)), "end": str(micros(NOW))}).json()
    assert [t["traceID"] for t in body["data"]] == [trace_hex(traces[i]["root"]) for i in (9, 8, 7)]


def test_jaeger_trace_by_id_and_not_found(mesh):
    c, traces = mesh
    tid = trace_hex(traces[0]["root"])
    body = get(c, f"/api/traces/{tid}").json()
    assert len(body["data"]) == 1 and len(body["data"][0]["spans"]) == 4
    missing = get(c, "/api/traces/0123456789abcdef0123456789abcdef")
    assert missing.status_code == 404
    assert missing.json() == {"data": None, "total": 0, "limit": 0, "offset": 0,
                              "errors": [{"code": 404, "msg": "trace not found"}]}


def test_jaeger_dependencies_in_milliseconds(mesh):
    c, _ = mesh
    now_ms = NOW // MS + 1000
    body = get(c, "/api/dependencies", {"endTs": str(now_ms), "lookback": str(3_600_000)}).json()
    links = {(d["parent"], d["child"]): d["callCount"] for d in body["data"]}
    assert links[("frontend", "cart")] == TRACES
    assert links[("cart", "redis")] == TRACES
    assert all(set(d) == {"parent", "child", "callCount"} for d in body["data"])
    # A window that ends before the traffic began holds no edge.
    assert get(c, "/api/dependencies", {"endTs": str(T0 // MS - 600_000), "lookback": "60000"}).json()["data"] == []


@pytest.mark.parametrize("params, named", [
    ({}, "service"),
    ({"service": "cart", "minDuration": "fast"}, "minDuration"),
    ({"service": "cart", "minDuration": "2s", "maxDuration": "1s"}, "maxDuration"),
    ({"service": "cart", "start": "yesterday"}, "start"),
    ({"service": "cart", "tags": "{not json"}, "tags"),
    ({"service": "cart", "limit": "-1"}, "limit"),
])
def test_jaeger_bad_parameters_are_400s_that_name_them(mesh, params, named):
    c, _ = mesh
    response = get(c, "/api/traces", params)
    assert response.status_code == 400
    body = response.json()
    assert body["data"] is None and body["errors"][0]["code"] == 400
    assert f"'{named}'" in body["errors"][0]["msg"]


def test_jaeger_api_v3_as_grafana_calls_it_behind_its_grpc_toggle(mesh):
    c, traces = mesh
    assert get(c, "/api/v3/services").json() == {"services": ["cart", "frontend"]}
    assert get(c, "/api/v3/operations", {"service": "cart", "span_kind": "client"}).json() == {
        "operations": [{"name": "HGETALL", "spanKind": "client"}]}
    tid = trace_hex(traces[3]["root"])
    result = get(c, f"/api/v3/traces/{tid}").json()["result"]
    spans = [s for rs in result["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert {s["traceId"] for s in spans} == {tid} and len(spans) == 4  # hex ids, as OTLP/JSON
    rfc3339 = lambda ns: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + ".%09dZ" % (ns % 10**9)
    window = {"query.start_time_min": rfc3339(T0 - 10**9), "query.start_time_max": rfc3339(NOW)}
    found = get(c, "/api/v3/traces", {"query.service_name": "cart", "query.duration_min": "100ms", **window}).json()["result"]
    assert {s["traceId"] for rs in found["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]} == {
        trace_hex(traces[i]["root"]) for i in SLOW}
    none = get(c, "/api/v3/traces", {"query.service_name": "nobody", **window})
    assert none.status_code == 404 and none.json()["error"]["httpCode"] == 404
    missing = get(c, "/api/v3/traces", {"query.service_name": "cart"})
    assert missing.status_code == 400 and "query.start_time_min" in missing.json()["error"]["message"]


# --- Tempo, as Grafana's Tempo data source calls it ----------------------------------

def test_tempo_echo_is_the_health_check(mesh):
    c, _ = mesh
    response = get(c, "/api/echo")
    assert response.status_code == 200 and response.text == "echo"


def read_varint(data, at):
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def test_tempo_trace_by_id_v2_protobuf_and_v1_fallback(mesh):
    c, traces = mesh
    tid = trace_hex(traces[3]["root"])
    response = get(c, f"/api/v2/traces/{tid}", {"start": str(T0 // 10**9 - 10), "end": str(NOW // 10**9)},
                   accept="application/protobuf")
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/protobuf"
    # TraceByIDResponse: field 1 (the trace) and nothing else for a complete trace.
    data = response.content
    assert data[0] == 0x0A
    length, at = read_varint(data, 1)
    assert at + length == len(data)
    trace = trace_pb2.TracesData.FromString(data[at:])
    spans = [s for rs in trace.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert sorted(s.span_id.hex() for s in spans) == sorted(span_hex(traces[3][k]) for k in ("root", "call", "serve", "db"))
    # JSON: {"trace": OTLP/JSON}.
    body = get(c, f"/api/v2/traces/{tid}").json()
    assert len(body["trace"]["resourceSpans"]) == 2
    # v1: tempopb.Trace, wire-identical to TracesData.
    v1 = get(c, f"/api/traces/{tid}", accept="application/protobuf")
    assert trace_pb2.TracesData.FromString(v1.content) == trace
    # Not found is a 404 on both, so Grafana's fallback ends in "not found".
    for path in ("/api/v2/traces/", "/api/traces/"):
        assert get(c, path + "0" * 31 + "1", accept="application/protobuf").status_code == 404


def test_tempo_search_with_traceql_from_the_search_builder(mesh):
    c, traces = mesh
    q = '{resource.service.name="cart" && name="GET /api/cart" && duration>100ms && status=error}'
    body = get(c, "/api/search", {"q": q, "limit": "20", "spss": "3",
                                  "start": str(T0 // 10**9 - 10), "end": str(NOW // 10**9 + 1)}).json()
    assert sorted(t["traceID"] for t in body["traces"]) == sorted(trace_hex(traces[i]["root"]) for i in SLOW)
    found = next(t for t in body["traces"] if t["traceID"] == trace_hex(traces[7]["root"]))
    assert found["rootServiceName"] == "frontend" and found["rootTraceName"] == "GET /"
    assert found["startTimeUnixNano"] == str(traces[7]["root"].start_time)  # a string, nanoseconds
    assert found["durationMs"] == 404  # an integer, milliseconds
    assert found["serviceStats"] == {"frontend": {"spanCount": 2, "errorCount": 1}, "cart": {"spanCount": 2, "errorCount": 1}}
    assert found["spanSets"][0]["matched"] == 1
    assert found["spanSets"][0]["spans"][0]["spanID"] == span_hex(traces[7]["serve"])
    assert found["spanSets"][0]["spans"][0]["durationNanos"] == str(400 * MS)


@pytest.mark.parametrize("q, expected", [
    ('{ span.cart.items >= 8 }', {8, 9}),
    ('{ .cart.items = 2 || .cart.items = 4 }', {2, 4}),
    ('{ resource.service.version = "v2" } && { span.http.response.status_code >= 500 }', {7}),
    ('{ resource.service.version = "v2" } || { status = error }', {3, 5, 6, 7, 8, 9}),
    ('{ traceDuration > 300ms && rootServiceName = "frontend" }', SLOW),
    ('{ kind = client && name =~ "HGET.*" && span.db.system = "redis" && duration < 2ms }', set(range(TRACES))),
    ('{ span.connection_security_policy = "none" }', {9}),
    ('{ span.cart.items != nil && span.cart.items < 1 }', {0}),
])
def test_tempo_search_traceql_subset(mesh, q, expected):
    c, traces = mesh
    body = get(c, "/api/search", {"q": q, "limit": "50", "start": str(T0 // 10**9 - 10), "end": str(NOW // 10**9 + 1)})
    assert body.status_code == 200, body.text
    assert sorted(t["traceID"] for t in body.json()["traces"]) == sorted(trace_hex(traces[i]["root"]) for i in expected)


@pytest.mark.parametrize("q, mentions", [
    ('{ foo = 1 }', "scope"),
    ('{ status > error }', "status"),
    ('{ duration > "x" }', "duration"),
    ('{ name =~ "(" }', "regular expression"),
    ('{ } | count() > 2', "pipelines"),
    ('{ .a = 1 } >> { .b = 2 }', "structural"),
    ('{ .a = 1', "'}'"),
])
def test_tempo_search_refuses_what_it_cannot_run_with_the_reason(mesh, q, mentions):
    c, _ = mesh
    response = get(c, "/api/search", {"q": q})
    assert response.status_code == 400
    assert "'q'" in response.json()["error"] and mentions in response.json()["error"]


def test_tempo_autocomplete_tags_and_double_encoded_values(mesh):
    c, _ = mesh
    window = {"start": str(T0 // 10**9 - 10), "end": str(NOW // 10**9 + 1)}
    scopes = {s["name"]: s["tags"] for s in get(c, "/api/v2/search/tags", window).json()["scopes"]}
    assert {"service.name", "service.version", "k8s.namespace.name"} <= set(scopes["resource"])
    assert {"http.response.status_code", "cart.items", "db.system"} <= set(scopes["span"])
    assert {"duration", "name", "status", "kind", "rootServiceName"} <= set(scopes["intrinsic"])
    # Grafana encodes the tag twice (encodeURIComponent, then again in the path).
    tag = urllib.parse.quote(urllib.parse.quote("resource.service.version", safe=""), safe="")
    values = get(c, f"/api/v2/search/tag/{tag}/values", window).json()["tagValues"]
    assert values == [{"type": "string", "value": "1.0"}, {"type": "string", "value": "v1"}, {"type": "string", "value": "v2"}]
    # q narrows the values to spans that match it.
    narrowed = get(c, "/api/v2/search/tag/span.http.response.status_code/values",
                   {**window, "q": '{ resource.service.name = "cart" && status = error }'}).json()["tagValues"]
    assert narrowed == [{"type": "int", "value": "503"}]
    v1 = get(c, "/api/search/tag/name/values", window).json()["tagValues"]
    assert v1 == ["GET /", "GET /api/cart", "HGETALL"]


# --- Native JSON API ------------------------------------------------------------------

def test_native_stat_latency_edges_audit_and_compare(mesh):
    c, _ = mesh
    stats = {s["name"]: s for s in get(c, "/api/v1/stat", {"since": "15m"}).json()["stats"]}
    assert stats["cart"]["inbound"]["requests"] == TRACES and stats["cart"]["inbound"]["errors"] == len(SLOW)
    assert stats["cart"]["inbound"]["success"] == pytest.approx(0.8)
    assert stats["cart"]["versions"] == ["v1", "v2"] and stats["cart"]["namespace"] == "shop"
    assert stats["frontend"]["outbound_requests"] == TRACES

    groups = get(c, "/api/v1/latency", {"since": "15m", "by": "edge", "service": "cart"}).json()["groups"]
    edge = next(g for g in groups if g["source"] == "frontend" and g["target"] == "cart")
    assert edge["figures"]["requests"] == TRACES
    assert edge["figures"]["latency_ms_p99"] == pytest.approx(401, rel=0.05)
    assert edge["figures"]["latency_ms_p50"] == pytest.approx(7, rel=0.05)
    series = get(c, "/api/v1/latency", {"since": "15m", "by": "service", "service": "cart", "step": "5m"}).json()["groups"][0]["series"]
    # Steps do not overlap: each request is in exactly one point.
    assert len(series) in (3, 4) and sum(p["requests"] for p in series) == TRACES

    edges = {(e["source"], e["target"]): e for e in get(c, "/api/v1/edges", {"since": "15m"}).json()["edges"]}
    assert edges[("frontend", "cart")]["figures"]["mtls"] == pytest.approx(0.9)
    assert edges[("cart", "redis")]["connection_type"] == "database"

    findings = {(f["kind"], f["source"], f["target"]): f for f in get(c, "/api/v1/audit", {"since": "15m"}).json()["findings"]}
    assert findings[("plaintext_edge", "frontend", "cart")]["requests"] == 1
    assert ("unenrolled_workload", "cart", "redis") in findings

    versions = {v["version"]: v for v in get(c, "/api/v1/compare", {"service": "cart", "since": "15m"}).json()["versions"]}
    assert versions["v1"]["baseline"] and not versions["v2"]["baseline"]  # 5 and 5: the tie goes to the first
    assert versions["v2"]["figures"]["errors"] == 1 and versions["v1"]["figures"]["errors"] == 1


@pytest.mark.parametrize("path, params, named", [
    ("/api/v1/stat", {"since": "soon"}, "since"),
    ("/api/v1/latency", {"by": "colour"}, "by"),
    ("/api/v1/latency", {"step": "1ns", "since": "1h"}, "step"),
    ("/api/v1/search", {"status": "bad"}, "status"),
    ("/api/v1/search", {"limit": "0"}, "limit"),
    ("/api/v1/compare", {}, "service"),
    ("/api/v1/topology", {"format": "png"}, "format"),
])
def test_native_bad_parameters_are_json_400s_that_name_them(mesh, path, params, named):
    c, _ = mesh
    response = get(c, path, params)
    assert response.status_code == 400 and response.headers["Content-Type"] == "application/json"
    assert f"'{named}'" in response.json()["error"]


# --- CLI ------------------------------------------------------------------------------

def test_cli_search_stat_and_topology_diagrams(mesh):
    c, traces = mesh
    server = ["--server", c.query_url]
    found = meshtrace("search", *server, "--service", "cart", "--status", "error", "--min-duration", "300ms", "-o", "json")
    assert found.returncode == 0, found.stderr
    assert sorted(t["trace_id"] for t in json.loads(found.stdout)) == sorted(trace_hex(traces[i]["root"]) for i in SLOW)
    table = meshtrace("search", *server, "-q", '{ .cart.items = 4 }')
    assert table.stdout.splitlines()[0].split() == ["TRACE_ID", "START", "ROOT_SERVICE", "ROOT_OPERATION", "DURATION", "SPANS", "ERRORS"]
    assert trace_hex(traces[4]["root"]) in table.stdout and "\x1b[" not in table.stdout  # no colour off a terminal
    stat = meshtrace("stat", *server, "--since", "15m", "-o", "wide")
    assert stat.stdout.splitlines()[0].split()[:7] == ["NAMESPACE", "NAME", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"]
    assert any(line.split()[:3] == ["shop", "cart", "80.00%"] for line in stat.stdout.splitlines())
    dot = meshtrace("topology", *server, "-o", "dot")
    assert dot.stdout.startswith("digraph meshtrace {") and '"frontend" -> "cart"' in dot.stdout
    mermaid = meshtrace("topology", *server, "-o", "mermaid")
    assert mermaid.stdout.startswith("flowchart LR")
    waterfall = meshtrace("trace", *server, trace_hex(traces[3]["root"]))
    lines = waterfall.stdout.splitlines()
    assert lines[1].split()[-1] == "WATERFALL" and lines[2].endswith("█" * 30)


def on_a_terminal(args, env):
    """Runs the CLI with standard output on a pseudo-terminal; returns what it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(BIN / "meshtrace"), *args], stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: the process is done writing
            break
        if not chunk:
            break
        output += chunk
    proc.wait(timeout=60)
    os.close(master)
    return output.decode()


def test_cli_colours_only_on_a_terminal_and_never_with_no_color(mesh):
    c, _ = mesh
    args = ["edges", "--server", c.query_url, "--since", "15m"]
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    coloured = on_a_terminal(args, env)
    assert "\x1b[31mno (10.00% plaintext)\x1b[0m" in coloured  # the plaintext edge in red
    assert "\x1b[" not in on_a_terminal(args, {**env, "NO_COLOR": "1"})
    assert "\x1b[" not in meshtrace(*args).stdout


def test_cli_exit_codes(mesh):
    c, _ = mesh
    assert meshtrace("trace", "--server", c.query_url, "0123456789abcdef0123456789abcdef").returncode == 3
    assert meshtrace("search", "--server", c.query_url, "--status", "bad").returncode == 1
    assert meshtrace("search", "--server", c.query_url, "-q", "{ nonsense").returncode == 1
    assert meshtrace("services", "--server", "http://127.0.0.1:9").returncode == 2
    empty = meshtrace("search", "--server", c.query_url, "--service", "nobody", "-o", "json")
    assert empty.returncode == 0 and json.loads(empty.stdout) == []


def test_cli_top_refreshes_a_set_number_of_times(mesh):
    c, _ = mesh
    top = meshtrace("top", "--server", c.query_url, "--since", "15m", "--iterations", "2", "--interval", "0.2")
    assert top.returncode == 0, top.stderr
    lines = [line.split() for line in top.stdout.splitlines()]
    assert sum(1 for words in lines if words[:2] == ["SERVICE", "OPERATION"]) == 2
    assert sum(1 for words in lines if words[:3] == ["cart", "GET", "/api/cart"] and words[-1] == str(TRACES)) == 2


def test_cli_reads_a_data_directory_as_the_server_answers(mesh, tmp_path):
    c, _ = mesh
    args = ["search", "--service", "frontend", "--since", "15m", "-o", "json"]
    served = json.loads(meshtrace(*args, "--server", c.query_url).stdout)
    direct = meshtrace(*args, "--data-dir", c.data_dir)
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout) == served and len(served) == TRACES
    stat_args = ["stat", "--since", "15m", "-o", "json"]
    assert json.loads(meshtrace(*stat_args, "--data-dir", c.data_dir).stdout) == json.loads(meshtrace(*stat_args, "--server", c.query_url).stdout)
