import MeshCore

/// The golden signals of one series over one time bucket: rate, errors, duration,
/// bytes and transport security. Mergeable: the signals of a longer window, or of
/// several series, are the merge of theirs.
public struct Signals: Sendable, Equatable {
    public var requests: UInt64 = 0
    /// Requests that failed: status ERROR, or an HTTP status of 500 or above.
    public var errors: UInt64 = 0
    /// Requests answered with a 4xx that did not otherwise fail, counted apart from errors.
    public var clientErrors: UInt64 = 0
    public var requestBytes: UInt64 = 0
    public var responseBytes: UInt64 = 0
    /// Requests the proxy saw over mutual TLS, and without TLS; the rest are unknown.
    public var mutualTLS: UInt64 = 0
    public var plaintext: UInt64 = 0
    /// Latency in nanoseconds: the span's duration (for an edge, the client's view).
    public var latency = ExponentialHistogram()
    /// For an edge, the server's view of the same requests; empty otherwise.
    public var serverLatency = ExponentialHistogram()

    public init() {}

    /// Empty signals whose histograms are shaped for the merges that will follow.
    init(latency: ExponentialHistogram.MergeShape, serverLatency: ExponentialHistogram.MergeShape) {
        self.latency = ExponentialHistogram(shape: latency)
        self.serverLatency = ExponentialHistogram(shape: serverLatency)
    }

    public mutating func merge(_ other: Signals) {
        requests += other.requests
        errors += other.errors
        clientErrors += other.clientErrors
        requestBytes += other.requestBytes
        responseBytes += other.responseBytes
        mutualTLS += other.mutualTLS
        plaintext += other.plaintext
        latency.merge(other.latency)
        serverLatency.merge(other.serverLatency)
    }

    mutating func count(_ request: Request) {
        requests += 1
        if request.failed { errors += 1 } else if request.clientError { clientErrors += 1 }
        requestBytes += request.requestBytes
        responseBytes += request.responseBytes
        switch request.security {
        case .mutualTLS: mutualTLS += 1
        case .plaintext: plaintext += 1
        case .unknown: break
        }
        if let duration = request.duration { duration.record(in: &latency) }
        if let duration = request.serverDuration { duration.record(in: &serverLatency) }
    }

    /// One request as a series counts it.
    struct Request {
        var failed: Bool
        var clientError: Bool
        var requestBytes: UInt64
        var responseBytes: UInt64
        var security: Security
        /// Nil when this side was not seen (an edge to an uninstrumented callee has no server side).
        var duration: Latency?
        var serverDuration: Latency?
    }

    /// A span's duration with the buckets it falls in, found once: the duration is
    /// counted in its operation's series and again in its edge's, each with an
    /// exponential histogram and a Prometheus one.
    struct Latency {
        let nanoseconds: UInt64
        /// The exponential histograms' bucket at `ExponentialHistogram.tableScale`; 0 for a zero duration.
        let tableIndex: Int32
        /// The Prometheus bucket: an index into `PrometheusTotals.bounds`, or their count for +Inf.
        let prometheusBucket: UInt8

        init(nanoseconds: UInt64) {
            self.nanoseconds = nanoseconds
            tableIndex = nanoseconds == 0
                ? 0 : Int32(ExponentialHistogram.index(of: Double(nanoseconds), scale: ExponentialHistogram.tableScale))
            prometheusBucket = UInt8(PrometheusTotals.bucket(ofNanoseconds: nanoseconds))
        }

        func record(in histogram: inout ExponentialHistogram) {
            if nanoseconds == 0 {
                histogram.record(0)
            } else {
                histogram.record(Double(nanoseconds), tableIndex: Int(tableIndex))
            }
        }
    }
}

/// How an edge's callee was reached, with the names Tempo's service graph gives them.
public enum ConnectionType: UInt8, Sendable, Comparable {
    /// Both sides are instrumented.
    case unset = 0
    /// One side is not: a callee without a sidecar, an unknown caller, or the user at the entry.
    case virtualNode = 1
    /// A CLIENT span to a database (`db.system`) that reported no SERVER span.
    case database = 2
    /// A PRODUCER → CONSUMER pair, or a messaging client.
    case messagingSystem = 3

    /// The `connection_type` label value.
    public var label: String {
        switch self {
        case .unset: return ""
        case .virtualNode: return "virtual_node"
        case .database: return "database"
        case .messagingSystem: return "messaging_system"
        }
    }

    public static func < (lhs: ConnectionType, rhs: ConnectionType) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// A workload as golden signals name it: its service, namespace and version.
public struct Workload: Hashable, Sendable, Comparable {
    public var service: String
    public var namespace: String
    public var version: String

    public init(service: String, namespace: String = "", version: String = "") {
        self.service = service
        self.namespace = namespace
        self.version = version
    }

    /// The caller of a root SERVER span: whoever entered the mesh (Tempo's name).
    public static let user = Workload(service: "user")
    /// The caller of a SERVER span whose CLIENT span never came: a workload outside the mesh.
    public static let unknown = Workload(service: "unknown")

    public static func < (lhs: Workload, rhs: Workload) -> Bool {
        (lhs.service, lhs.namespace, lhs.version) < (rhs.service, rhs.namespace, rhs.version)
    }
}

/// What a series counts: one operation of a workload, or one edge between two.
public enum SeriesKey: Hashable, Sendable, Comparable {
    /// Spans of `workload` named `name` of kind `kind`.
    case operation(Workload, kind: SpanKind, name: String)
    /// Requests from `client` to `server`, from spans.
    case edge(client: Workload, server: Workload, connection: ConnectionType)
    /// Requests from `client` to `server` as a proxy's metrics report them;
    /// `reporter` (Istio's label: `source`, `destination`) says which proxy.
    case reported(client: Workload, server: Workload, reporter: String)

    public static func < (lhs: SeriesKey, rhs: SeriesKey) -> Bool {
        switch (lhs, rhs) {
        case let (.operation(a, ak, an), .operation(b, bk, bn)):
            return (a, ak.rawValue, an) < (b, bk.rawValue, bn)
        case let (.edge(ac, asv, at), .edge(bc, bsv, bt)):
            return (ac, asv, at.rawValue) < (bc, bsv, bt.rawValue)
        case let (.reported(ac, asv, ar), .reported(bc, bsv, br)):
            return (ac, asv, ar) < (bc, bsv, br)
        default:
            return lhs.order < rhs.order
        }
    }
}

extension SeriesKey {
    fileprivate var order: Int {
        switch self {
        case .operation: return 0
        case .edge: return 1
        case .reported: return 2
        }
    }
}

/// 10-second buckets: `bucket` is the bucket's start in nanoseconds since the epoch.
public struct BucketedSeries: Hashable, Sendable {
    public var bucket: UInt64
    public var series: SeriesKey
}
