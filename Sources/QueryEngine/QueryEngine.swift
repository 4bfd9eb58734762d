import MeshCore
import OTLPWire
import Sampling
import SegmentStore

/// Answers trace and topology questions over a store snapshot: the unsealed
/// head blocks and every sealed segment whose time range and trace-id range can match.
///
/// A segment found damaged while reading is reported to `onDamagedSegment` and
/// skipped, so one bad file never takes the answer down with it.
public struct QueryEngine: Sendable {
    public let snapshot: SpanStore.Snapshot
    private let onDamagedSegment: @Sendable (SegmentReader, StoreError) -> Void

    public init(snapshot: SpanStore.Snapshot, onDamagedSegment: @escaping @Sendable (SegmentReader, StoreError) -> Void = { _, _ in }) {
        self.snapshot = snapshot
        self.onDamagedSegment = onDamagedSegment
    }

    /// Runs `read` on `segment`; on damage, reports it and returns nil.
    func reading<T>(_ segment: SegmentReader, _ read: (SegmentReader) throws(StoreError) -> T?) -> T? {
        do {
            return try read(segment)
        } catch {
            onDamagedSegment(segment, error)
            return nil
        }
    }

    /// Every span of `traceID`, from the head blocks and all segments; nil when none is stored.
    public func trace(_ traceID: TraceID) throws -> SpanBatch? {
        var result = SpanBatch()
        for block in snapshot.unsealed {
            let rows = block.rows(of: traceID)
            if !rows.isEmpty { result.append(contentsOf: block, rows: rows) }
        }
        for segment in snapshot.segments {
            if let found = reading(segment, { segment throws(StoreError) in try segment.trace(traceID) }) {
                // A trace in one segment alone is taken as the segment returns it: already sorted.
                if result.isEmpty { result = found } else { result.append(contentsOf: found) }
            }
        }
        return result.isEmpty ? nil : result.sortedByTrace()
    }

    /// The service graph over spans that started within `window` (nanoseconds since the epoch).
    ///
    /// An edge is a CLIENT span paired with the SERVER span that is its child, from
    /// a different service: one request from the client's service to the server's.
    /// It is an error when the client span has status ERROR or an HTTP status of 500
    /// or above. Latency is the client span's duration. Each request counts its
    /// client span's adjusted count (1 / the probability the sampler kept it with),
    /// so counts over sampled traces estimate the traffic without bias.
    public func topology(window: ClosedRange<UInt64>) throws -> Topology {
        var clients: [SpanKey: ClientSide] = [:]
        var servers: [(parent: SpanKey, service: String)] = []
        var nodes: Set<String> = []
        func scan(_ batch: SpanBatch) {
            for row in 0..<batch.count where window.contains(batch.startTimes[row]) {
                let service = batch.serviceName(at: row)
                nodes.insert(service)
                switch batch.kinds[row] {
                case .client:
                    clients[SpanKey(trace: batch.traceIDs[row], span: batch.spanIDs[row])] = ClientSide(
                        service: service,
                        duration: batch.duration(at: row),
                        failed: batch.statusCodes[row] == .error || batch.httpStatusCodes[row] >= 500,
                        weight: AdjustedCount.of(extras: batch.extras[row]))
                case .server where batch.parentSpanIDs[row] != .zero:
                    servers.append((SpanKey(trace: batch.traceIDs[row], span: batch.parentSpanIDs[row]), service))
                default:
                    break
                }
            }
        }
        for block in snapshot.unsealed { scan(block) }
        for segment in snapshot.segments
        where segment.footer.minStartTime <= window.upperBound && segment.footer.maxEndTime >= window.lowerBound {
            if let batch = reading(segment, { segment throws(StoreError) in try segment.readBatch() }) { scan(batch) }
        }

        var edges: [EdgeKey: [ClientSide]] = [:]
        for (parent, service) in servers {
            guard let client = clients[parent], client.service != service else { continue }
            edges[EdgeKey(source: client.service, target: service), default: []].append(client)
        }
        let edgeList = edges.map { key, calls in
            let durations = calls.map(\.duration).sorted()
            var edge = Topology.Edge(
                source: key.source, target: key.target,
                requests: Int(calls.reduce(0) { $0 + $1.weight }.rounded()),
                errors: Int(calls.filter(\.failed).reduce(0) { $0 + $1.weight }.rounded()),
                p50: Percentile.nearestRank(durations, 0.50),
                p95: Percentile.nearestRank(durations, 0.95),
                p99: Percentile.nearestRank(durations, 0.99))
            edge.storedRequests = calls.count
            return edge
        }.sorted { ($0.source, $0.target) < ($1.source, $1.target) }
        return Topology(window: window, nodes: nodes.sorted(), edges: edgeList)
    }

    private struct SpanKey: Hashable {
        var trace: TraceID
        var span: SpanID
    }

    private struct EdgeKey: Hashable {
        var source: String
        var target: String
    }

    private struct ClientSide {
        var service: String
        var duration: UInt64
        var failed: Bool
        var weight: Double
    }
}

/// The service graph of a time window.
public struct Topology: Sendable, Equatable {
    /// One caller → callee pair and its traffic.
    public struct Edge: Sendable, Equatable {
        public var source: String
        public var target: String
        /// Requests, each stored span counted by its adjusted count.
        public var requests: Int
        /// Failed requests, likewise weighted.
        public var errors: Int
        /// Requests whose spans are stored.
        public var storedRequests = 0
        /// Latency percentiles, in nanoseconds.
        public var p50: UInt64
        public var p95: UInt64
        public var p99: UInt64

        public init(source: String, target: String, requests: Int, errors: Int, p50: UInt64, p95: UInt64, p99: UInt64) {
            self.source = source
            self.target = target
            self.requests = requests
            self.errors = errors
            self.p50 = p50
            self.p95 = p95
            self.p99 = p99
        }

        /// Share of requests that failed, 0…1.
        public var errorRate: Double { requests == 0 ? 0 : Double(errors) / Double(requests) }
    }

    /// Nanoseconds since the epoch.
    public var window: ClosedRange<UInt64>
    /// Services seen in the window.
    public var nodes: [String]
    public var edges: [Edge]
}

/// Exact percentiles of sorted samples.
public enum Percentile {
    /// The nearest-rank percentile (`q` in 0…1) of ascending `sorted` samples; 0 when empty.
    public static func nearestRank(_ sorted: [UInt64], _ q: Double) -> UInt64 {
        guard !sorted.isEmpty else { return 0 }
        let rank = Int((q * Double(sorted.count)).rounded(.up))
        return sorted[min(max(rank, 1), sorted.count) - 1]
    }
}
