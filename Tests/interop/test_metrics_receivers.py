"""OTLP metrics from the Python SDK's exporters, over OTLP/HTTP (protobuf and JSON) and
OTLP/gRPC: each request is acknowledged once durable in the WAL, and counted."""
import json

import grpc
import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GRPCMetricExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HTTPMetricExporter
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from test_metrics import scrape


def export_golden_signals(exporter):
    """Records a counter and a histogram like a proxy's, and exports them twice
    (a flush, then shutdown's final export; cumulative, so both carry every series)."""
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=Resource.create({"service.name": "checkout"}), metric_readers=[reader])
    meter = provider.get_meter("envoy")
    requests_total = meter.create_counter("istio_requests_total")
    duration = meter.create_histogram("istio_request_duration_milliseconds", unit="ms")
    for code, millis in [("200", 12.0), ("200", 30.5), ("503", 250.0)]:
        labels = {"source_workload": "frontend", "destination_workload": "checkout", "response_code": code}
        requests_total.add(1, labels)
        duration.record(millis, labels)
    assert provider.force_flush(timeout_millis=10_000), "the collector acknowledged the export"
    provider.shutdown()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sdk_metric_exporters_are_acknowledged_logged_and_counted(collector, protocol):
    c = collector()
    before = scrape(c)
    if protocol == "http":
        export_golden_signals(HTTPMetricExporter(endpoint=f"{c.otlp_url}/v1/metrics", timeout=10))
        receiver = "otlp_http"
    else:
        export_golden_signals(GRPCMetricExporter(endpoint=f"http://{c.otlp_grpc}", insecure=True, timeout=10))
        receiver = "otlp_grpc"
    after = scrape(c)
    # Two series of the counter and two of the histogram (response codes 200 and 503), twice.
    assert after[f'meshtrace_receiver_metric_points_total{{receiver="{receiver}"}}'] == 8
    assert after['meshtrace_wal_records_total'] == before['meshtrace_wal_records_total'] + 2
    assert after['meshtrace_wal_syncs_total'] > before['meshtrace_wal_syncs_total']
    assert after[f'meshtrace_receiver_requests_total{{receiver="{receiver}",outcome="accepted"}}'] == 2
    # Folded into the golden signals: three requests, not six (the second export is
    # cumulative and repeats the first), one of them a 503.
    topology = requests.get(f"{c.query_url}/api/v1/topology?since=1h", timeout=10).json()
    edges = [e for e in topology["edges"] if (e["source"], e["target"]) == ("frontend", "checkout")]
    assert len(edges) == 1, topology
    assert (edges[0]["requests"], edges[0]["errors"]) == (3, 1)
    # Latencies from the proxy's explicit buckets: the median, 30.5 ms, in (25, 50]; 250 ms in (100, 250].
    assert 25 <= edges[0]["latency_ms_p50"] <= 50
    assert 100 <= edges[0]["latency_ms_p99"] <= 250


def test_metrics_over_http_json_and_bad_metrics_requests(collector):
    c = collector()
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    gauge = request.resource_metrics.add().scope_metrics.add().metrics.add(name="queue_depth").gauge
    gauge.data_points.add(as_int=3, time_unix_nano=1_700_000_000_000_000_000)
    from google.protobuf import json_format
    response = requests.post(f"{c.otlp_url}/v1/metrics", data=json_format.MessageToJson(request),
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 200, response.text
    assert json.loads(response.text) == {}
    assert scrape(c)['meshtrace_receiver_metric_points_total{receiver="otlp_http"}'] == 1

    response = requests.post(f"{c.otlp_url}/v1/metrics", data=b"\x0a\xff\xff",
                             headers={"Content-Type": "application/x-protobuf"}, timeout=10)
    assert response.status_code == 400
    with grpc.insecure_channel(c.otlp_grpc) as channel:
        call = channel.unary_unary("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as malformed:
            call(b"\x0a\xff\xff\xff\xff\x0f", timeout=10)
        assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ExportMetricsServiceRequest" in malformed.value.details()
        metrics_service_pb2.ExportMetricsServiceResponse.FromString(call(request.SerializeToString(), timeout=10))
