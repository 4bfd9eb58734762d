import Foundation
import MeshCore
import OTLPWire

/// Rate, errors and duration of every outbound request (sampled or not), summed
/// between exports and sent as OTLP delta metrics in Istio's standard shape:
/// `istio_requests_total` and `istio_request_duration_milliseconds` (an exponential
/// histogram), with `reporter=source`, `source_canonical_service`,
/// `destination_canonical_service`, `response_code` and `connection_security_policy`.
/// The collector folds these into its golden signals as the proxies' own reports.
///
/// Only CLIENT spans count: the caller's proxy knows both ends of the edge, while a
/// SERVER span's proxy does not know who called (Istio learns it by exchanging
/// metadata with the peer proxy; this exporter does not), and reporting it as an
/// unknown caller would invent edges.
struct REDAggregator {
    struct Key: Hashable {
        /// `source`: the caller's proxy reports.
        var reporter: String
        var source: String
        var destination: String
        var responseCode: UInt16
        var security: String
    }

    struct Totals {
        var requests: UInt64 = 0
        var duration = ExponentialHistogram()
    }

    let service: String
    private(set) var totals: [Key: Totals] = [:]
    /// Nanoseconds since the epoch: where the current delta interval started.
    private(set) var intervalStart: UInt64

    init(service: String, now: UInt64) {
        self.service = service
        intervalStart = now
    }

    var isEmpty: Bool { totals.isEmpty }

    /// Counts the requests of `drained`, exported or not.
    mutating func add(_ drained: DrainedSpans) {
        for index in 0..<drained.count where drained.headers[index].kind == SpanKind.client.rawValue {
            let header = drained.headers[index]
            let peer = String(decoding: drained.string(index, .peerService), as: UTF8.self)
            var security = ""
            if header.bits & SlotHeader.securityKnownBit != 0 {
                security = header.bits & SlotHeader.mutualTLSBit != 0 ? "mutual_tls" : "none"
            }
            let key = Key(
                reporter: "source", source: service, destination: peer.isEmpty ? "unknown" : peer,
                responseCode: header.httpStatus != 0 ? header.httpStatus : (header.bits & SlotHeader.failedBit != 0 ? 500 : 200),
                security: security)
            let milliseconds = Double(header.endTime &- header.startTime) / 1e6
            totals[key, default: Totals()].requests += 1
            totals[key]!.duration.record(max(0, milliseconds))
        }
    }

    /// The metrics counted since the last call, as one request; the counts start again from zero.
    mutating func take(now: UInt64, resource: OTLPResource) -> ExportMetricsServiceRequest {
        var requests = Opentelemetry_Proto_Metrics_V1_Metric()
        requests.name = "istio_requests_total"
        requests.unit = "{request}"
        var sum = Opentelemetry_Proto_Metrics_V1_Sum()
        sum.aggregationTemporality = .delta
        sum.isMonotonic = true
        var duration = Opentelemetry_Proto_Metrics_V1_Metric()
        duration.name = "istio_request_duration_milliseconds"
        duration.unit = "ms"
        var histogram = Opentelemetry_Proto_Metrics_V1_ExponentialHistogram()
        histogram.aggregationTemporality = .delta
        let ordered = totals.sorted {
            ($0.key.destination, $0.key.responseCode, $0.key.security) < ($1.key.destination, $1.key.responseCode, $1.key.security)
        }
        for (key, totals) in ordered {
            var attributes = [
                KeyValue("reporter", key.reporter), KeyValue("source_canonical_service", key.source),
                KeyValue("destination_canonical_service", key.destination), KeyValue("response_code", String(key.responseCode)),
            ]
            if !key.security.isEmpty { attributes.append(KeyValue("connection_security_policy", key.security)) }
            var point = Opentelemetry_Proto_Metrics_V1_NumberDataPoint()
            point.attributes = attributes
            point.startTimeUnixNano = intervalStart
            point.timeUnixNano = now
            point.asInt = Int64(clamping: totals.requests)
            sum.dataPoints.append(point)
            var exponential = Opentelemetry_Proto_Metrics_V1_ExponentialHistogramDataPoint()
            exponential.attributes = attributes
            exponential.startTimeUnixNano = intervalStart
            exponential.timeUnixNano = now
            let recorded = totals.duration
            exponential.count = recorded.count
            exponential.sum = recorded.sum
            exponential.min = recorded.min
            exponential.max = recorded.max
            exponential.scale = Int32(recorded.scale)
            exponential.zeroCount = recorded.zeroCount
            exponential.positive.offset = Int32(recorded.offset)
            exponential.positive.bucketCounts = recorded.counts
            histogram.dataPoints.append(exponential)
        }
        requests.sum = sum
        duration.exponentialHistogram = histogram
        var scope = Opentelemetry_Proto_Metrics_V1_ScopeMetrics()
        scope.scope.name = "meshtrace.MeshExporter"
        scope.metrics = [requests, duration]
        var resourceMetrics = Opentelemetry_Proto_Metrics_V1_ResourceMetrics()
        resourceMetrics.resource = resource
        resourceMetrics.scopeMetrics = [scope]
        var request = ExportMetricsServiceRequest()
        request.resourceMetrics = [resourceMetrics]
        totals.removeAll(keepingCapacity: true)
        intervalStart = now
        return request
    }
}
