import SegmentStore
import Synchronization

/// The collector's own telemetry, served at `/metrics` in the Prometheus text format:
/// requests and spans per receiver and outcome, WAL writes and syncs, the memory
/// budget, and what the store holds.
final class CollectorMetrics: Sendable {
    enum Receiver: String, CaseIterable, Sendable {
        case otlpGRPC = "otlp_grpc"
        case otlpHTTP = "otlp_http"
        case zipkin
    }

    /// Why a request was refused as a whole.
    enum Refusal: String, CaseIterable, Sendable {
        /// Malformed, empty, or not decompressible.
        case invalid
        /// Over the size limit.
        case tooLarge = "too_large"
        /// The body took longer than the read timeout.
        case timedOut = "timed_out"
        /// An unsupported content type or encoding.
        case unsupported
        /// The memory budget was spent; the client was told to retry.
        case overBudget = "over_budget"
        /// The store could not write; the client was told to retry.
        case unavailable
    }

    /// The refusal an HTTP error status stands for.
    static func refusal(for status: Int) -> Refusal? {
        switch status {
        case 400: return .invalid
        case 408: return .timedOut
        case 413: return .tooLarge
        case 415: return .unsupported
        case 429: return .overBudget
        case 503: return .unavailable
        default: return nil
        }
    }

    private struct Counts {
        var accepted: [Receiver: Int] = [:]
        var refused: [Receiver: [Refusal: Int]] = [:]
        var acceptedSpans: [Receiver: Int] = [:]
        var rejectedSpans: [Receiver: Int] = [:]
        var acceptedDataPoints: [Receiver: Int] = [:]
        var waiting = 0
    }

    private let counts = Mutex(Counts())

    /// A request was stored: `spans` of its spans, `rejected` refused one by one.
    func accepted(_ receiver: Receiver, spans: Int, rejected: Int) {
        counts.withLock { counts in
            counts.accepted[receiver, default: 0] += 1
            counts.acceptedSpans[receiver, default: 0] += spans
            counts.rejectedSpans[receiver, default: 0] += rejected
        }
    }

    /// A metrics export request was stored, with `dataPoints` data points.
    func acceptedMetrics(_ receiver: Receiver, dataPoints: Int) {
        counts.withLock { counts in
            counts.accepted[receiver, default: 0] += 1
            counts.acceptedDataPoints[receiver, default: 0] += dataPoints
        }
    }

    func refused(_ receiver: Receiver, _ refusal: Refusal) {
        counts.withLock { $0.refused[receiver, default: [:]][refusal, default: 0] += 1 }
    }

    /// Requests waiting for the store (their WAL write and sync) changed by `delta`.
    func waiting(_ delta: Int) {
        counts.withLock { $0.waiting += delta }
    }

    func render(store: SpanStore, budget: IngestBudget) -> String {
        let counts = counts.withLock { $0 }
        let wal = store.walStatistics
        let segments = store.sealedSegments
        var text = ""
        func family(_ name: String, _ type: String, _ help: String, _ samples: [(labels: String, value: String)]) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (labels, value) in samples { text += labels.isEmpty ? "\(name) \(value)\n" : "\(name){\(labels)} \(value)\n" }
        }
        var requests: [(String, String)] = []
        for receiver in Receiver.allCases {
            requests.append(("receiver=\"\(receiver.rawValue)\",outcome=\"accepted\"", "\(counts.accepted[receiver] ?? 0)"))
            for refusal in Refusal.allCases {
                requests.append(("receiver=\"\(receiver.rawValue)\",outcome=\"\(refusal.rawValue)\"",
                                 "\(counts.refused[receiver]?[refusal] ?? 0)"))
            }
        }
        family("meshtrace_receiver_requests_total", "counter", "Export requests by receiver and outcome.", requests)
        family("meshtrace_receiver_spans_total", "counter",
               "Spans in accepted requests: stored, or rejected one by one (reported in partial_success).",
               Receiver.allCases.flatMap { receiver in [
                   ("receiver=\"\(receiver.rawValue)\",outcome=\"stored\"", "\(counts.acceptedSpans[receiver] ?? 0)"),
                   ("receiver=\"\(receiver.rawValue)\",outcome=\"rejected\"", "\(counts.rejectedSpans[receiver] ?? 0)"),
               ] })
        family("meshtrace_receiver_metric_points_total", "counter", "Metric data points in accepted metrics export requests.",
               [Receiver.otlpGRPC, .otlpHTTP].map { ("receiver=\"\($0.rawValue)\"", "\(counts.acceptedDataPoints[$0] ?? 0)") })
        family("meshtrace_ingest_waiting_requests", "gauge", "Requests waiting for their WAL write and sync.",
               [("", "\(counts.waiting)")])
        family("meshtrace_wal_written_bytes_total", "counter", "Bytes appended to the write-ahead log.", [("", "\(wal.bytes)")])
        family("meshtrace_wal_records_total", "counter", "Records appended to the write-ahead log.", [("", "\(wal.records)")])
        family("meshtrace_wal_syncs_total", "counter", "Syncs (fdatasync) of the write-ahead log (concurrent requests share one).",
               [("", "\(wal.syncs)")])
        family("meshtrace_wal_sync_seconds_total", "counter", "Time spent in write-ahead log syncs.",
               [("", String(wal.syncSeconds))])
        family("meshtrace_memory_budget_bytes", "gauge", "The memory budget for request data in flight, and its use.",
               [("state=\"limit\"", "\(budget.limit)"), ("state=\"in_use\"", "\(budget.inUse)")])
        family("meshtrace_head_spans", "gauge", "Spans in the head block, not yet sealed.", [("", "\(store.unsealedSpanCount)")])
        family("meshtrace_segments", "gauge", "Sealed segments.", [("", "\(segments.count)")])
        family("meshtrace_segment_bytes", "gauge", "Bytes of sealed segments.",
               [("", "\(segments.reduce(0) { $0 + $1.fileSize })")])
        return text
    }
}
