import MeshCore

/// The service graph as a table, one edge per line.
public enum TopologyTable {
    public static func render(_ topology: TopologyJSON) -> String {
        guard !topology.edges.isEmpty else {
            return "no edges between \(topology.window.start) and \(topology.window.end)\n"
        }
        let rows = topology.edges.map { edge in
            [
                edge.source, edge.target, String(edge.requests), String(edge.errors),
                percentText(edge.error_rate),
                DurationText.format(nanoseconds: UInt64(edge.latency_ms_p50 * 1e6)),
                DurationText.format(nanoseconds: UInt64(edge.latency_ms_p95 * 1e6)),
                DurationText.format(nanoseconds: UInt64(edge.latency_ms_p99 * 1e6)),
            ]
        }
        return Table.render(header: ["SRC", "DST", "REQUESTS", "ERRORS", "ERROR%", "P50", "P95", "P99"], rows: rows)
    }
}
