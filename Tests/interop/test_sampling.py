"""The sampling policy engine in a running collector: the built-in policy keeps the
Python SDK's error trace and records its threshold, two collectors keep the same
traces, the policy reloads on SIGHUP and on file change (an invalid one is refused
and the last good one stays), and `meshtrace policy check/test` explain and measure."""
import json
import os
import re
import signal
import time
import urllib.request

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from conftest import meshtrace


def send(otlp_url, failed=False, service="checkout"):
    """Sends a two-span trace with the SDK; returns its trace id as 32 hex digits."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{otlp_url}/v1/traces", timeout=10)))
    tracer = provider.get_tracer("sampling-test")
    root = tracer.start_span("GET /checkout", kind=SpanKind.SERVER)
    child = tracer.start_span("POST /payments", context=set_span_in_context(root), kind=SpanKind.CLIENT)
    if failed:
        child.set_status(Status(StatusCode.ERROR, "upstream reset"))
    child.end()
    root.end()
    provider.shutdown()
    return format(root.get_span_context().trace_id, "032x")


def stored(c, trace_id):
    try:
        with urllib.request.urlopen(f"{c.query_url}/api/traces/{trace_id}", timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def metric(c, name, labels=""):
    text = urllib.request.urlopen(f"{c.query_url}/metrics", timeout=10).read().decode()
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def wait_for(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return predicate()


def test_default_policy_keeps_the_error_trace_and_drops_most_others(collector):
    c = collector(extra_args=["--policy", "default"])
    failing = send(c.otlp_url, failed=True)
    plain = [send(c.otlp_url) for _ in range(60)]
    # Decided root_wait (2 s) after the root span arrives.
    document = wait_for(lambda: stored(c, failing))
    assert document is not None, "the error trace is kept"
    assert len(document["data"][0]["spans"]) == 2, "whole"
    # Each trace is decided 2 s after its own root, the last ones well after the first.
    def decided():
        return sum(metric(c, "meshtrace_sampling_traces_total", f'{{decision="{d}"}}') or 0 for d in ("kept", "dropped"))
    assert wait_for(lambda: decided() == 61), f"every trace decided ({decided()} of 61)"
    kept_plain = sum(1 for t in plain if stored(c, t))
    dropped = metric(c, "meshtrace_sampling_traces_total", '{decision="dropped"}')
    kept = metric(c, "meshtrace_sampling_traces_total", '{decision="kept"}')
    assert kept + dropped == 61
    assert kept == 1 + kept_plain
    assert metric(c, "meshtrace_sampling_kept_traces_by_policy_total", '{policy="errors"}') == 1
    # The first ten traces over the edges never seen before (user → checkout, checkout → its callee) are kept.
    assert metric(c, "meshtrace_sampling_kept_traces_by_policy_total", '{policy="new-edges"}') == 10
    assert dropped >= 45, "1 % baseline: the other plain traces are dropped"
    assert wait_for(lambda: metric(c, "meshtrace_sampling_open_traces") == 0)
    assert metric(c, "meshtrace_sampling_held_spans") == 0


def test_two_collectors_keep_the_same_traces(collector, tmp_path):
    policy = tmp_path / "half.yaml"
    policy.write_text("decision_wait: 1s\npolicies:\n"
                      "  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n"
                      "  - {name: half, type: probabilistic, probabilistic: {sampling_percentage: 50}}\n")
    a = collector(data_dir=tmp_path / "a", extra_args=["--policy", str(policy)])
    b = collector(data_dir=tmp_path / "b", extra_args=["--policy", str(policy)])
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "cart"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("consistency")
    ids = []
    for i in range(60):
        root = tracer.start_span(f"op {i}", kind=SpanKind.SERVER)
        if i % 10 == 0:
            root.set_status(Status(StatusCode.ERROR))
        root.end()
        ids.append(format(root.get_span_context().trace_id, "032x"))
    body = encode_spans(memory.get_finished_spans()).SerializeToString()
    for c in (a, b):
        request = urllib.request.Request(f"{c.otlp_url}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"})
        assert urllib.request.urlopen(request, timeout=10).status == 200
    for c in (a, b):
        wait_for(lambda c=c: metric(c, "meshtrace_sampling_open_traces") == 0 and metric(c, "meshtrace_sampling_traces_total", '{decision="kept"}'))
    kept_a = {t for t in ids if stored(a, t)}
    kept_b = {t for t in ids if stored(b, t)}
    assert kept_a == kept_b
    assert 10 < len(kept_a) < 60
    assert {ids[i] for i in range(0, 60, 10)} <= kept_a, "every error trace"


def test_policy_reloads_on_sighup_and_on_change_and_keeps_the_last_good_one(collector, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("policies: [{name: nothing, type: probabilistic, probabilistic: {sampling_percentage: 0}}]\n")
    c = collector(extra_args=["--policy", str(policy)])
    first = send(c.otlp_url)
    assert wait_for(lambda: metric(c, "meshtrace_sampling_traces_total", '{decision="dropped"}') or
                    metric(c, "meshtrace_sampling_spans_total", '{decision="dropped"}'))
    assert stored(c, first) is None

    policy.write_text("policies: [{name: everything, type: always_sample}]\n")
    c.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: metric(c, "meshtrace_sampling_policy_reloads_total", '{result="ok"}') >= 1)
    second = send(c.otlp_url)
    assert wait_for(lambda: stored(c, second))

    # An invalid policy is refused with its file, line and reason; the last good one stays.
    policy.write_text("policies:\n  - name: broken\n    type: probabilistic\n    probabilistic: {sampling_percentage: 250}\n")
    c.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: metric(c, "meshtrace_sampling_policy_reloads_total", '{result="rejected"}') >= 1)
    assert wait_for(lambda: any(f"{policy}:4:" in line and "sampling_percentage" in line for line in c.stderr_lines))
    third = send(c.otlp_url)
    assert wait_for(lambda: stored(c, third)), "the last good policy (keep everything) is still in force"

    # A changed file is picked up without a signal.
    policy.write_text("policies: [{name: nothing, type: probabilistic, probabilistic: {sampling_percentage: 0}}]\n")
    future = time.time() + 5
    os.utime(policy, (future, future))
    assert wait_for(lambda: metric(c, "meshtrace_sampling_policy_reloads_total", '{result="ok"}') >= 2)
    fourth = send(c.otlp_url)
    time.sleep(1.5)
    assert stored(c, fourth) is None
    assert c.alive()


def test_an_invalid_policy_stops_the_collector_at_start(tmp_path):
    import subprocess
    from conftest import BIN
    policy = tmp_path / "bad.yaml"
    policy.write_text("policies:\n  - {name: x, type: sometimes}\n")
    run = subprocess.run([str(BIN / "meshtrace-collector"), "--policy", str(policy), "--data-dir", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert f"{policy}:2:" in run.stderr and "unknown policy type \"sometimes\"" in run.stderr


def test_policy_check_explains_and_refuses(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(meshtrace("policy", "show").stdout)
    check = meshtrace("policy", "check", good)
    assert check.returncode == 0, check.stderr
    assert "valid, 6 policies" in check.stdout
    assert "slow (slow_for_edge): keeps traces whose entry call is slower than its edge's live p99" in check.stdout
    assert "th:fd70a, adjusted count 100" in check.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("decision_wait: 10s\npolicies:\n  - name: slow\n    type: latency\n    latency: {threshold_ms: fast}\n")
    refused = meshtrace("policy", "check", bad)
    assert refused.returncode == 1
    assert f"{bad}:5:29: policies[0] (slow).latency.threshold_ms: expected a whole number, got \"fast\"" in refused.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("policies: [{name: a, type: always_sample\n")
    refused = meshtrace("policy", "check", broken)
    assert refused.returncode == 1 and "not valid YAML: line" in refused.stderr


def test_policy_test_replays_simulated_and_recorded_traffic(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(meshtrace("policy", "show").stdout)
    run = meshtrace("policy", "test", policy, "--sim", "--requests", "3000", "-o", "json", timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["traces"] == 3000
    assert report["error_traces"] > 0 and report["error_traces_kept"] == report["error_traces"]
    assert report["slow_traces"] > 0 and report["slow_traces_kept"] == report["slow_traces"]
    assert report["partial_traces"] == 0
    assert 0 < report["kept_spans"] < report["spans"] * 0.1
    assert report["bytes_per_1000_requests"] > 0
    assert [p["name"] for p in report["policies"]] == ["errors", "server-errors", "slow", "new-edges", "plaintext", "baseline"]

    # A recorded corpus: OTLP JSON lines, as the OpenTelemetry Collector's file exporter writes.
    lines = []
    for i in range(50):
        status = {"code": 2} if i % 5 == 0 else {}
        lines.append(json.dumps({"resourceSpans": [{"resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "cart"}}]}, "scopeSpans": [{"spans": [{
                "traceId": f"{i + 1:032x}", "spanId": f"{i + 1:016x}", "name": "GET /cart", "kind": 2,
                "startTimeUnixNano": str(1_700_000_000_000_000_000 + i * 1_000_000),
                "endTimeUnixNano": str(1_700_000_000_000_000_000 + i * 1_000_000 + 500_000), "status": status}]}]}]}))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    run = meshtrace("policy", "test", policy, "--corpus", corpus)
    assert run.returncode == 0, run.stderr
    assert "Replayed 50 traces (50 spans)" in run.stdout
    assert "error traces kept whole: 10 of 10 (100.00%)" in run.stdout
