import GoldenSignals
import Foundation

/// The native `/api/v1/topology` JSON shape; units are in the key names.
public struct TopologyJSON: Codable, Sendable, Equatable {
    public struct Window: Codable, Sendable, Equatable {
        /// RFC 3339.
        public var start: String
        /// RFC 3339.
        public var end: String
    }

    public struct Node: Codable, Sendable, Equatable {
        public var name: String
        /// Not a workload with a sidecar: `user` (callers of the mesh's entry), `unknown`
        /// (callers outside the mesh) or an uninstrumented callee named from its peer attributes.
        public var virtual: Bool?
    }

    public struct Edge: Codable, Sendable, Equatable {
        public var source: String
        public var target: String
        public var requests: Int
        /// Requests per second over the window.
        public var rps: Double?
        public var errors: Int
        /// 0…1.
        public var error_rate: Double
        public var latency_ms_p50: Double
        public var latency_ms_p95: Double
        public var latency_ms_p99: Double
        /// `""` between two instrumented workloads; `virtual_node`, `database` or
        /// `messaging_system` when one side has no sidecar (Tempo's connection types).
        public var connection_type: String?
        /// Requests answered 4xx, not counted in `errors`.
        public var client_errors: Int?
        /// Requests the proxies saw over mutual TLS, and in plaintext.
        public var mtls_requests: Int?
        public var plaintext_requests: Int?
        public var request_bytes: Int?
        public var response_bytes: Int?
        /// How far a percentile may be from the exact one, relative to it (0…1).
        public var latency_relative_error: Double?
    }

    public var window: Window
    public var nodes: [Node]
    public var edges: [Edge]

    public init(_ topology: Topology) {
        window = Window(start: rfc3339(topology.window.lowerBound), end: rfc3339(topology.window.upperBound))
        nodes = topology.nodes.map { Node(name: $0) }
        edges = topology.edges.map { edge in
            Edge(source: edge.source, target: edge.target, requests: edge.requests, errors: edge.errors,
                 error_rate: edge.errorRate,
                 latency_ms_p50: Double(edge.p50) / 1e6, latency_ms_p95: Double(edge.p95) / 1e6,
                 latency_ms_p99: Double(edge.p99) / 1e6)
        }
    }
}

extension TopologyJSON {
    /// The service graph from golden signals: edges between services (every version
    /// and namespace of a service together), with latency percentiles from the
    /// merged histograms.
    public init(_ graph: ServiceGraph) {
        window = Window(start: rfc3339(graph.window.lowerBound), end: rfc3339(graph.window.upperBound))
        struct Key: Hashable, Comparable {
            var source: String
            var target: String
            var connection: ConnectionType
            static func < (lhs: Key, rhs: Key) -> Bool { (lhs.source, lhs.target, lhs.connection) < (rhs.source, rhs.target, rhs.connection) }
        }
        var merged: [Key: Signals] = [:]
        for edge in graph.edges {
            merged[Key(source: edge.client.service, target: edge.server.service, connection: edge.connection), default: Signals()]
                .merge(edge.signals)
        }
        // Edges only proxies' metrics report (their traffic sent no spans here): the
        // server side's report when there is one, so no request counts twice.
        let traced = Set(merged.keys.map { [$0.source, $0.target] })
        var reported: [Key: (reporter: String, signals: Signals)] = [:]
        for edge in graph.reported where !traced.contains([edge.client.service, edge.server.service]) {
            let key = Key(source: edge.client.service, target: edge.server.service, connection: .unset)
            let rank = { (reporter: String) in reporter == "destination" ? 0 : reporter == "source" ? 1 : 2 }
            if let existing = reported[key], rank(existing.reporter) < rank(edge.reporter) { continue }
            if let existing = reported[key], existing.reporter == edge.reporter {
                reported[key]!.signals.merge(edge.signals)
            } else {
                reported[key] = (edge.reporter, edge.signals)
            }
        }
        for (key, value) in reported { merged[key] = value.signals }
        let seconds = Double(graph.window.upperBound - graph.window.lowerBound) / 1e9
        var instrumented = Set(graph.nodes.map(\.service))
        for key in reported.keys { instrumented.formUnion([key.source, key.target]) }
        var virtual: [String: Bool] = [:]
        for name in instrumented { virtual[name] = false }
        for node in graph.virtualNodes where !instrumented.contains(node) { virtual[node] = true }
        nodes = virtual.keys.sorted().map { Node(name: $0, virtual: virtual[$0] == true ? true : nil) }
        edges = merged.keys.sorted().map { key in
            let signals = merged[key]!
            let latency = signals.latency.isEmpty ? signals.serverLatency : signals.latency
            func milliseconds(_ q: Double) -> Double { (latency.quantile(q) ?? 0) / 1e6 }
            return Edge(
                source: key.source, target: key.target, requests: Int(signals.requests),
                rps: seconds > 0 ? Double(signals.requests) / seconds : nil, errors: Int(signals.errors),
                error_rate: signals.requests == 0 ? 0 : Double(signals.errors) / Double(signals.requests),
                latency_ms_p50: milliseconds(0.50), latency_ms_p95: milliseconds(0.95), latency_ms_p99: milliseconds(0.99),
                connection_type: key.connection.label, client_errors: Int(signals.clientErrors),
                mtls_requests: Int(signals.mutualTLS), plaintext_requests: Int(signals.plaintext),
                request_bytes: Int(signals.requestBytes), response_bytes: Int(signals.responseBytes),
                latency_relative_error: latency.relativeError)
        }
    }
}

/// Formats nanoseconds since the epoch as RFC 3339 in UTC with millisecond precision.
public func rfc3339(_ nanoseconds: UInt64) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    formatter.timeZone = TimeZone(identifier: "UTC")
    return formatter.string(from: Date(timeIntervalSince1970: Double(nanoseconds) / 1e9))
}
