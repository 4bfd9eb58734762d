import Foundation
import MeshCore
import OTLPWire

/// Folds OTLP metrics from mesh proxies, in Istio's standard shape, into the same
/// buckets as span-derived signals, as `.reported` edge series.
///
/// Read: `istio_requests_total` (a sum; `response_code` 5xx counts as an error,
/// 4xx apart; `connection_security_policy` says mTLS), and the histograms
/// `istio_request_duration_milliseconds` (latency), `istio_request_bytes` and
/// `istio_response_bytes` (their sums). Names may also come dotted or without the
/// Prometheus suffix (`istio.requests`). Workloads come from `source_canonical_service`
/// (else `source_workload`), `source_workload_namespace`,
/// `source_canonical_revision`, and the `destination_…` equivalents; `reporter`
/// keeps the two proxies' reports of one request apart.
///
/// Delta points count as they are. Cumulative points count their increase over
/// the stream's previous point; a value that went down, or a new start time, is
/// a reset and counts whole. A stream's first point counts whole when it started
/// after these series files were created (nothing of it can have been missed),
/// and is only a baseline otherwise.
struct ProxyMetricsFolder {
    /// The last point of each cumulative stream (saved with each checkpoint).
    var streams: [String: StreamPoint] = [:]
    /// Wall-clock nanoseconds since when this store has collected metrics.
    let collectingSince: UInt64

    init(collectingSince: UInt64) {
        self.collectingSince = collectingSince
    }

    /// A cumulative point as the next one is compared with.
    struct StreamPoint: Equatable {
        var start: UInt64
        /// For a sum: its value. For a histogram: count, sum, then the bucket counts.
        var values: [Double]
        /// For an exponential histogram: its scale and first index (the counts follow `values[3...]`).
        var scale: Int32 = 0
        var offset: Int32 = 0
    }

    enum Measure {
        case requests, duration(nanosecondsPerUnit: Double), requestBytes, responseBytes
    }

    static func measure(of metric: Opentelemetry_Proto_Metrics_V1_Metric) -> Measure? {
        let name = metric.name.replacingOccurrences(of: ".", with: "_")
        switch name {
        case "istio_requests_total", "istio_requests":
            return .requests
        case "istio_request_duration_milliseconds", "istio_request_duration", "istio_request_duration_seconds":
            let unit = metric.unit
            let seconds = unit == "s" || (unit.isEmpty && name.hasSuffix("_seconds"))
            return .duration(nanosecondsPerUnit: seconds ? 1e9 : unit == "us" ? 1e3 : 1e6)
        case "istio_request_bytes":
            return .requestBytes
        case "istio_response_bytes":
            return .responseBytes
        default:
            return nil
        }
    }

    /// What one data point says, ready to count.
    struct Reported {
        var key: SeriesKey
        var bucketTime: UInt64
        var signals: Signals
    }

    mutating func fold(_ request: ExportMetricsServiceRequest) -> [Reported] {
        var reported: [Reported] = []
        for resourceMetrics in request.resourceMetrics {
            let resource = Self.labels(resourceMetrics.resource.attributes)
            for scopeMetrics in resourceMetrics.scopeMetrics {
                for metric in scopeMetrics.metrics {
                    guard let measure = Self.measure(of: metric) else { continue }
                    fold(metric, measure: measure, resource: resource, into: &reported)
                }
            }
        }
        return reported
    }

    private mutating func fold(
        _ metric: Opentelemetry_Proto_Metrics_V1_Metric, measure: Measure, resource: [String: String], into reported: inout [Reported]
    ) {
        switch metric.data {
        case .sum(let sum):
            guard case .requests = measure else { return }
            for point in sum.dataPoints where point.flags & 1 == 0 {
                let value: Double
                switch point.value {
                case .asInt(let number): value = Double(number)
                case .asDouble(let number): value = number
                case nil: continue
                }
                let labels = resource.merging(Self.labels(point.attributes)) { $1 }
                guard let delta = increase(
                    stream: metric.name, labels: labels, temporality: sum.aggregationTemporality, start: point.startTimeUnixNano,
                    current: StreamPoint(start: point.startTimeUnixNano, values: [value]))
                else { continue }
                let requests = UInt64(max(0, delta[0].rounded()))
                guard requests > 0 else { continue }
                var signals = Signals()
                signals.requests = requests
                let code = Int(labels["response_code"] ?? "") ?? 0
                if code >= 500 { signals.errors = requests } else if code >= 400 { signals.clientErrors = requests }
                switch labels["connection_security_policy"] {
                case "mutual_tls": signals.mutualTLS = requests
                case "none": signals.plaintext = requests
                default: break
                }
                reported.append(Reported(key: Self.edge(labels), bucketTime: point.timeUnixNano, signals: signals))
            }
        case .histogram(let histogram):
            for point in histogram.dataPoints where point.flags & 1 == 0 {
                let labels = resource.merging(Self.labels(point.attributes)) { $1 }
                let values = [Double(point.count), point.sum] + point.bucketCounts.map { Double($0) }
                guard let delta = increase(
                    stream: metric.name + point.explicitBounds.description, labels: labels,
                    temporality: histogram.aggregationTemporality, start: point.startTimeUnixNano,
                    current: StreamPoint(start: point.startTimeUnixNano, values: values))
                else { continue }
                var signals = Signals()
                switch measure {
                case .duration(let scale):
                    // Each explicit bucket's count at the geometric middle of its bounds:
                    // the proxy's buckets, not ours, bound the error here.
                    let bounds = point.explicitBounds
                    for (index, count) in delta.dropFirst(2).enumerated() where count >= 1 {
                        let upper = index < bounds.count ? bounds[index] : (bounds.last ?? 1) * 2
                        let lower = index == 0 ? upper / 2 : bounds[index - 1]
                        let middle = lower > 0 ? (lower * upper).squareRoot() : upper / 2
                        signals.latency.record(middle * scale, times: UInt64(count.rounded()))
                    }
                case .requestBytes:
                    signals.requestBytes = UInt64(max(0, delta[1].rounded()))
                case .responseBytes:
                    signals.responseBytes = UInt64(max(0, delta[1].rounded()))
                case .requests:
                    continue
                }
                reported.append(Reported(key: Self.edge(labels), bucketTime: point.timeUnixNano, signals: signals))
            }
        case .exponentialHistogram(let histogram):
            guard case .duration(let scale) = measure else { return }
            for point in histogram.dataPoints where point.flags & 1 == 0 {
                let labels = resource.merging(Self.labels(point.attributes)) { $1 }
                var current = StreamPoint(
                    start: point.startTimeUnixNano,
                    values: [Double(point.count), point.sum, Double(point.zeroCount)] + point.positive.bucketCounts.map { Double($0) })
                current.scale = point.scale
                current.offset = point.positive.offset
                guard let delta = increase(
                    stream: metric.name, labels: labels, temporality: histogram.aggregationTemporality,
                    start: point.startTimeUnixNano, current: current)
                else { continue }
                var signals = Signals()
                // Bucket i of the point holds (base^i, base^(i+1)] in its unit; in nanoseconds
                // the boundaries move by log2(scale) · 2^s indices, so record each bucket's middle.
                let base = ExponentialHistogram.base(scale: Int8(clamping: point.scale))
                signals.latency.record(0, times: UInt64(max(0, delta[2].rounded())))
                for (position, count) in delta.dropFirst(3).enumerated() where count >= 1 {
                    let index = Double(Int(point.positive.offset) + position)
                    let middle = 2 * Foundation.pow(base, index + 1) / (1 + base)
                    signals.latency.record(middle * scale, times: UInt64(count.rounded()))
                }
                reported.append(Reported(key: Self.edge(labels), bucketTime: point.timeUnixNano, signals: signals))
            }
        default:
            return
        }
    }

    /// What a point adds: itself (delta), or its increase over the stream's previous
    /// point (cumulative). Nil when it is a baseline only.
    private mutating func increase(
        stream name: String, labels: [String: String], temporality: Opentelemetry_Proto_Metrics_V1_AggregationTemporality,
        start: UInt64, current: StreamPoint
    ) -> [Double]? {
        guard temporality == .cumulative else { return current.values }
        let identity = name + "\u{1}" + labels.sorted { $0.key < $1.key }.map { $0.key + "=" + $0.value }.joined(separator: "\u{1}")
        defer { streams[identity] = current }
        guard let previous = streams[identity] else {
            return start != 0 && start >= collectingSince ? current.values : nil
        }
        guard previous.start == current.start else { return current.values }
        let aligned = Self.align(previous, to: current)
        guard let aligned, aligned.count == current.values.count else { return current.values }
        var delta: [Double] = []
        delta.reserveCapacity(current.values.count)
        for (now, before) in zip(current.values, aligned) {
            // A count that went down is a reset: the point counts whole.
            if now < before && (delta.count != 1) { return current.values }
            delta.append(now - before)
        }
        return delta
    }

    /// `previous`'s values laid out like `current`'s (an exponential histogram may
    /// have lowered its scale or widened its range since).
    private static func align(_ previous: StreamPoint, to current: StreamPoint) -> [Double]? {
        guard previous.scale != current.scale || previous.offset != current.offset else { return previous.values }
        guard previous.values.count >= 3, current.values.count >= 3, current.scale <= previous.scale else { return nil }
        let shift = Int(previous.scale - current.scale)
        var values = Array(previous.values.prefix(3)) + [Double](repeating: 0, count: current.values.count - 3)
        for (position, count) in previous.values.dropFirst(3).enumerated() where count > 0 {
            let index = (Int(previous.offset) + position) >> shift
            let target = index - Int(current.offset)
            guard target >= 0, target < values.count - 3 else { return nil }
            values[3 + target] += count
        }
        return values
    }

    private static func labels(_ attributes: [KeyValue]) -> [String: String] {
        var labels: [String: String] = [:]
        for attribute in attributes {
            switch attribute.value.value {
            case .stringValue(let text): labels[attribute.key] = text
            case .intValue(let number): labels[attribute.key] = String(number)
            case .boolValue(let flag): labels[attribute.key] = String(flag)
            case .doubleValue(let number): labels[attribute.key] = String(number)
            default: break
            }
        }
        return labels
    }

    private static func edge(_ labels: [String: String]) -> SeriesKey {
        func workload(_ side: String) -> Workload {
            let service = [labels["\(side)_canonical_service"], labels["\(side)_workload"], side == "destination" ? labels["destination_service_name"] : nil]
                .compactMap { $0 }.first { !$0.isEmpty && $0 != "unknown" } ?? Workload.unknown.service
            let namespace = labels["\(side)_workload_namespace"] ?? (side == "destination" ? labels["destination_service_namespace"] : nil) ?? ""
            let version = labels["\(side)_canonical_revision"] ?? labels["\(side)_version"] ?? ""
            return Workload(service: service, namespace: namespace == "unknown" ? "" : namespace, version: version == "unknown" ? "" : version)
        }
        return .reported(client: workload("source"), server: workload("destination"), reporter: labels["reporter"] ?? "")
    }
}
