"""Wire-compatibility fixtures: OTLP messages built with the Python opentelemetry-proto
package, serialized by Python's protobuf runtime.

    python wire_fixtures.py generate DIR   writes NAME.binpb and NAME.json for every message
    python wire_fixtures.py check NAME FILE  decodes FILE (bytes written by Swift) and exits 0
                                             if it equals the message NAME built here

The JSON files are protobuf's canonical proto3 JSON of the same message (bytes as base64),
so the Swift side can compare its binary decoding against an independent encoding.
"""
import sys
from pathlib import Path

from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


def kv(key, **value):
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(**value))


def every_value_type():
    return [
        kv("string", string_value="héllo ✓"),
        kv("bool", bool_value=True),
        kv("int", int_value=-9_007_199_254_740_993),
        kv("double", double_value=3.141592653589793),
        kv("bytes", bytes_value=bytes(range(256))),
        kv("array", array_value=common_pb2.ArrayValue(values=[
            common_pb2.AnyValue(string_value="a"), common_pb2.AnyValue(int_value=2),
            common_pb2.AnyValue(double_value=0.5), common_pb2.AnyValue(bool_value=False)])),
        kv("kvlist", kvlist_value=common_pb2.KeyValueList(values=[
            kv("nested", string_value="yes"),
            kv("deeper", kvlist_value=common_pb2.KeyValueList(values=[kv("n", int_value=1)]))])),
        kv("empty", string_value=""),
    ]


def traces():
    span = trace_pb2.Span(
        trace_id=bytes.fromhex("5b8efff798038103d269b633813fc60c"),
        span_id=bytes.fromhex("eee19b7ec3c1b174"),
        parent_span_id=bytes.fromhex("eee19b7ec3c1b173"),
        trace_state="ot=th:c;rv:123,vendor=x",
        flags=0x301,
        name="GET /api/cart/{id}",
        kind=trace_pb2.Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=1_544_712_660_000_000_001,
        end_time_unix_nano=1_544_712_661_000_000_999,
        attributes=every_value_type(),
        dropped_attributes_count=3,
        events=[trace_pb2.Span.Event(time_unix_nano=1_544_712_660_500_000_123, name="retry",
                                     attributes=[kv("attempt", int_value=2)], dropped_attributes_count=1)],
        dropped_events_count=4,
        links=[trace_pb2.Span.Link(trace_id=bytes.fromhex("00000000000000000000000000000001"),
                                   span_id=bytes.fromhex("0000000000000002"), trace_state="a=b",
                                   attributes=[kv("link", bool_value=True)], dropped_attributes_count=5,
                                   flags=0x100)],
        dropped_links_count=6,
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message="upstream reset"),
    )
    root = trace_pb2.Span(trace_id=span.trace_id, span_id=span.parent_span_id, name="root",
                          kind=trace_pb2.Span.SPAN_KIND_SERVER, start_time_unix_nano=1, end_time_unix_nano=2)
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[
        trace_pb2.ResourceSpans(
            resource=resource_pb2.Resource(attributes=[kv("service.name", string_value="cart"),
                                                       kv("k8s.pod.name", string_value="cart-7d9f-x2k4q")],
                                           dropped_attributes_count=1),
            scope_spans=[trace_pb2.ScopeSpans(
                scope=common_pb2.InstrumentationScope(name="envoy", version="1.31.0",
                                                      attributes=[kv("scope.attr", int_value=7)],
                                                      dropped_attributes_count=2),
                spans=[root, span], schema_url="https://opentelemetry.io/schemas/1.26.0")],
            schema_url="https://opentelemetry.io/schemas/1.27.0"),
        trace_pb2.ResourceSpans(resource=resource_pb2.Resource(), scope_spans=[trace_pb2.ScopeSpans()]),
    ])


def metrics():
    attributes = [kv("source_workload", string_value="frontend"), kv("response_code", string_value="200")]
    exemplar = metrics_pb2.Exemplar(filtered_attributes=[kv("x", string_value="y")], time_unix_nano=5,
                                    as_double=1.5, span_id=bytes.fromhex("0102030405060708"),
                                    trace_id=bytes.fromhex("0102030405060708090a0b0c0d0e0f10"))
    return metrics_service_pb2.ExportMetricsServiceRequest(resource_metrics=[metrics_pb2.ResourceMetrics(
        resource=resource_pb2.Resource(attributes=[kv("service.name", string_value="istio-proxy")]),
        scope_metrics=[metrics_pb2.ScopeMetrics(
            scope=common_pb2.InstrumentationScope(name="istio"),
            metrics=[
                metrics_pb2.Metric(name="istio_requests_total", unit="1", sum=metrics_pb2.Sum(
                    data_points=[metrics_pb2.NumberDataPoint(attributes=attributes, start_time_unix_nano=1,
                                                             time_unix_nano=2, as_int=1234, exemplars=[exemplar])],
                    aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE, is_monotonic=True)),
                metrics_pb2.Metric(name="queue_depth", gauge=metrics_pb2.Gauge(
                    data_points=[metrics_pb2.NumberDataPoint(time_unix_nano=3, as_double=-0.25, flags=1)])),
                metrics_pb2.Metric(name="istio_request_duration_milliseconds", unit="ms",
                                   histogram=metrics_pb2.Histogram(
                    data_points=[metrics_pb2.HistogramDataPoint(
                        attributes=attributes, start_time_unix_nano=1, time_unix_nano=2, count=10, sum=55.5,
                        bucket_counts=[1, 2, 3, 4], explicit_bounds=[1.0, 5.0, 10.0], min=0.5, max=20.0)],
                    aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_DELTA)),
                metrics_pb2.Metric(name="latency", exponential_histogram=metrics_pb2.ExponentialHistogram(
                    data_points=[metrics_pb2.ExponentialHistogramDataPoint(
                        count=7, sum=12.0, scale=-3, zero_count=1, zero_threshold=0.001,
                        positive=metrics_pb2.ExponentialHistogramDataPoint.Buckets(offset=-2, bucket_counts=[1, 0, 2]),
                        negative=metrics_pb2.ExponentialHistogramDataPoint.Buckets(offset=1, bucket_counts=[3]),
                        min=-4.0, max=9.0)],
                    aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_DELTA)),
                metrics_pb2.Metric(name="summary", summary=metrics_pb2.Summary(data_points=[
                    metrics_pb2.SummaryDataPoint(count=3, sum=6.0, quantile_values=[
                        metrics_pb2.SummaryDataPoint.ValueAtQuantile(quantile=0.99, value=5.5)])])),
            ])])])


def traces_data():
    return trace_pb2.TracesData(resource_spans=traces().resource_spans)


FIXTURES = {
    "trace_export_request": (traces, trace_service_pb2.ExportTraceServiceRequest),
    "metrics_export_request": (metrics, metrics_service_pb2.ExportMetricsServiceRequest),
    "traces_data": (traces_data, trace_pb2.TracesData),
    "trace_partial_success": (lambda: trace_service_pb2.ExportTraceServiceResponse(
        partial_success=trace_service_pb2.ExportTracePartialSuccess(rejected_spans=2, error_message="bad ids")),
        trace_service_pb2.ExportTraceServiceResponse),
}


def main(argv):
    if len(argv) == 3 and argv[1] == "generate":
        out = Path(argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for name, (build, _) in FIXTURES.items():
            message = build()
            (out / f"{name}.binpb").write_bytes(message.SerializeToString(deterministic=True))
            (out / f"{name}.json").write_text(json_format.MessageToJson(message, sort_keys=True) + "\n")
        return 0
    if len(argv) == 4 and argv[1] == "check":
        build, cls = FIXTURES[argv[2]]
        decoded = cls.FromString(Path(argv[3]).read_bytes())
        expected = build()
        if decoded != expected:
            print(f"{argv[2]}: Swift bytes decode to a different message:\n{decoded}\nexpected:\n{expected}", file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
