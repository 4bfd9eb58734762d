"""`meshtrace loadgen` drives MeshSim traffic over OTLP/gRPC and OTLP/HTTP; what it
reports as acknowledged is exactly what the collector says it stored."""
import json

import pytest

from conftest import meshtrace
from test_metrics import scrape


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_loadgen_reports_what_the_collector_stored(collector, protocol):
    c = collector()
    target = f"http://{c.otlp_grpc}" if protocol == "grpc" else c.otlp_url
    run = meshtrace("loadgen", "--target", target, "--protocol", protocol, "--rate", "2000", "--duration", "2s",
                    "--connections", "3", "--output", "json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["requests_failed"] == 0 and report["requests_refused"] == 0, report
    assert report["spans_acknowledged"] == report["spans_sent"] > 1000
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    receiver = "otlp_grpc" if protocol == "grpc" else "otlp_http"
    stored = scrape(c)[f'meshtrace_receiver_spans_total{{receiver="{receiver}",outcome="stored"}}']
    assert stored == report["spans_acknowledged"]


def test_loadgen_counts_refusals_from_a_collector_over_its_budget(collector):
    c = collector(extra_args=["--memory-budget", "200000"])
    run = meshtrace("loadgen", "--target", c.otlp_url, "--protocol", "http", "--rate", "20000", "--duration", "2s",
                    "--connections", "8", "--output", "json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["requests_refused"] > 0, report
    stored = scrape(c)['meshtrace_receiver_spans_total{receiver="otlp_http",outcome="stored"}']
    assert stored == report["spans_acknowledged"]
