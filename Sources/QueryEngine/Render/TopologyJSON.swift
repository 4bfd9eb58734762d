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
    }

    public struct Edge: Codable, Sendable, Equatable {
        public var source: String
        public var target: String
        public var requests: Int
        public var errors: Int
        /// 0…1.
        public var error_rate: Double
        public var latency_ms_p50: Double
        public var latency_ms_p95: Double
        public var latency_ms_p99: Double
    }

    public var window: Window
    public var nodes: [Node]
    public var edges: [Edge]

    public init(_ topology: Topology) {
        window = Window(start: rfc3339(topology.window.lowerBound), end: rfc3339(topology.window.upperBound))
        nodes = topology.nodes.map(Node.init)
        edges = topology.edges.map { edge in
            Edge(source: edge.source, target: edge.target, requests: edge.requests, errors: edge.errors,
                 error_rate: edge.errorRate,
                 latency_ms_p50: Double(edge.p50) / 1e6, latency_ms_p95: Double(edge.p95) / 1e6,
                 latency_ms_p99: Double(edge.p99) / 1e6)
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
