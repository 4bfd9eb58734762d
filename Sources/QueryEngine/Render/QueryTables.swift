import MeshCore

/// The CLI's tables for the query API's answers. `wide` adds columns; `colour`
/// marks failures red and health green.
public enum QueryTables {
    /// `-` for a missing figure, like `linkerd viz stat`.
    static let none = "-"

    static func milliseconds(_ value: Double?) -> String {
        guard let value else { return none }
        return DurationText.format(nanoseconds: UInt64(max(0, value * 1e6).rounded()))
    }

    static func success(_ fraction: Double?) -> String { fraction.map(percentText) ?? none }

    static func rps(_ value: Double) -> String {
        value == 0 ? "0rps" : value < 10 ? "\(formatted(value, decimals: 2))rps" : "\(formatted(value, decimals: 1))rps"
    }

    static func formatted(_ value: Double, decimals: Int) -> String {
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let scaled = Int((value * scale).rounded())
        let whole = scaled / Int(scale)
        let fraction = String(scaled % Int(scale))
        return "\(whole)." + String(repeating: "0", count: decimals - fraction.count) + fraction
    }

    static func successStyle(_ fraction: Double?) -> Table.Style {
        guard let fraction else { return .plain }
        return fraction >= 0.99 ? .green : fraction >= 0.95 ? .yellow : .red
    }

    public static func services(_ names: [String]) -> String {
        Table.render(header: ["SERVICE"], rows: names.map { [$0] })
    }

    public static func operations(_ operations: [SignalQueries.Operation]) -> String {
        Table.render(header: ["OPERATION", "KIND"], rows: operations.map { [$0.name, $0.span_kind] })
    }

    /// Like `linkerd viz stat`: inbound success, rate and latency per service.
    public static func stat(_ stats: [SignalQueries.Stat], wide: Bool = false, colour: Bool = false) -> String {
        var header = ["NAMESPACE", "NAME", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"]
        if wide { header += ["REQUESTS", "ERRORS", "4XX", "OUTBOUND", "VERSIONS"] }
        var styles: [[Table.Style]] = []
        let rows = stats.map { stat -> [String] in
            let figures = stat.inbound
            var row = [stat.namespace.isEmpty ? none : stat.namespace, stat.name, success(figures.success),
                       figures.requests == 0 ? none : rps(figures.rps),
                       milliseconds(figures.latency_ms_p50), milliseconds(figures.latency_ms_p95), milliseconds(figures.latency_ms_p99)]
            if wide {
                row += [String(figures.requests), String(figures.errors), String(figures.client_errors), String(stat.outbound_requests),
                        stat.versions.isEmpty ? none : stat.versions.joined(separator: ",")]
            }
            styles.append([.plain, .plain, successStyle(figures.success)] + Array(repeating: .plain, count: row.count - 3))
            return row
        }
        return Table.render(header: header, rows: rows, styles: styles, colour: colour)
    }

    /// Like `linkerd viz edges`, with rate, success and p99 from the golden signals.
    public static func edges(_ edges: [SignalQueries.Edge], wide: Bool = false, colour: Bool = false) -> String {
        var header = ["SRC", "DST", "SRC_NS", "DST_NS", "SUCCESS", "RPS", "LATENCY_P99", "SECURED"]
        if wide { header += ["REQUESTS", "ERRORS", "MTLS", "TYPE"] }
        var styles: [[Table.Style]] = []
        let rows = edges.map { edge -> [String] in
            let figures = edge.figures
            let secured: String
            let securedStyle: Table.Style
            switch figures.mtls {
            case nil: secured = "unknown"; securedStyle = .plain
            case 1?: secured = "√"; securedStyle = .green
            case let share?: secured = "no (\(percentText(1 - share)) plaintext)"; securedStyle = .red
            }
            var row = [edge.source, edge.target, edge.source_namespace.isEmpty ? none : edge.source_namespace,
                       edge.target_namespace.isEmpty ? none : edge.target_namespace,
                       success(figures.success), rps(figures.rps), milliseconds(figures.latency_ms_p99), secured]
            if wide {
                row += [String(figures.requests), String(figures.errors), figures.mtls.map(percentText) ?? none,
                        edge.connection_type.isEmpty ? "mesh" : edge.connection_type]
            }
            styles.append([.plain, .plain, .plain, .plain, successStyle(figures.success), .plain, .plain, securedStyle]
                + Array(repeating: .plain, count: row.count - 8))
            return row
        }
        return Table.render(header: header, rows: rows, styles: styles, colour: colour)
    }

    /// Latency per group; with a series, one line per group and step.
    public static func latency(_ groups: [SignalQueries.LatencyGroup], by grouping: SignalQueries.Grouping, wide: Bool = false) -> String {
        let keyHeader: [String]
        switch grouping {
        case .service: keyHeader = ["SERVICE"]
        case .operation: keyHeader = ["SERVICE", "OPERATION", "KIND"]
        case .edge: keyHeader = ["SRC", "DST"]
        case .version: keyHeader = ["SERVICE", "VERSION"]
        }
        func key(_ group: SignalQueries.LatencyGroup) -> [String] {
            switch grouping {
            case .service: return [group.service ?? ""]
            case .operation: return [group.service ?? "", group.operation ?? "", group.span_kind ?? ""]
            case .edge: return [group.source ?? "", group.target ?? ""]
            case .version: return [group.service ?? "", (group.version ?? "").isEmpty ? none : group.version!]
            }
        }
        if groups.contains(where: { $0.series != nil }) {
            let rows = groups.flatMap { group in
                (group.series ?? []).map { point in
                    key(group) + [point.time, String(point.requests), String(point.errors), milliseconds(point.latency_ms_p50),
                                  milliseconds(point.latency_ms_p95), milliseconds(point.latency_ms_p99)]
                }
            }
            return Table.render(header: keyHeader + ["TIME", "REQUESTS", "ERRORS", "P50", "P95", "P99"], rows: rows)
        }
        var header = keyHeader + ["REQUESTS", "RPS", "SUCCESS", "P50", "P90", "P95", "P99"]
        if wide { header += ["ERRORS", "4XX"] }
        let rows = groups.map { group -> [String] in
            let f = group.figures
            var row = key(group) + [String(f.requests), rps(f.rps), success(f.success), milliseconds(f.latency_ms_p50),
                                    milliseconds(f.latency_ms_p90), milliseconds(f.latency_ms_p95), milliseconds(f.latency_ms_p99)]
            if wide { row += [String(f.errors), String(f.client_errors)] }
            return row
        }
        return Table.render(header: header, rows: rows)
    }

    /// Search results, one trace a line, newest first.
    public static func search(_ traces: [QueryService.SearchResult], wide: Bool = false, colour: Bool = false) -> String {
        var header = ["TRACE_ID", "START", "ROOT_SERVICE", "ROOT_OPERATION", "DURATION", "SPANS", "ERRORS"]
        if wide { header += ["MATCHED", "SERVICES"] }
        var styles: [[Table.Style]] = []
        let rows = traces.map { trace -> [String] in
            var row = [trace.trace_id, trace.start, trace.root_service.isEmpty ? "<root span not stored>" : trace.root_service,
                       trace.root_operation, DurationText.format(nanoseconds: UInt64((trace.duration_ms * 1e6).rounded())),
                       String(trace.spans), String(trace.errors)]
            if wide { row += [String(trace.matched_spans), trace.services.map(\.name).joined(separator: ",")] }
            styles.append(Array(repeating: .plain, count: 6) + [trace.errors > 0 ? .red : .plain] + Array(repeating: .plain, count: row.count - 7))
            return row
        }
        return Table.render(header: header, rows: rows, styles: styles, colour: colour)
    }

    public static func audit(_ audit: SignalQueries.Audit, colour: Bool = false) -> String {
        let rows = audit.findings.map { [$0.kind, $0.source, $0.target, String($0.requests), $0.detail] }
        let serious: Set<String> = ["plaintext_edge", "identity_mismatch", "refused_connection", "plaintext_connection"]
        let styles = audit.findings.map { finding -> [Table.Style] in [serious.contains(finding.kind) ? .red : .yellow, .plain, .plain, .plain, .plain] }
        return Table.render(header: ["FINDING", "SRC", "DST", "REQUESTS", "DETAIL"], rows: rows, styles: styles, colour: colour)
    }

    /// Versions of one service side by side; the baseline is marked `*`.
    public static func compare(_ comparison: QueryService.Comparison, colour: Bool = false) -> String {
        var styles: [[Table.Style]] = []
        let rows = comparison.versions.map { version -> [String] in
            let f = version.figures
            let delta = version.error_rate_delta_points.map { ($0 >= 0 ? "+" : "") + formatted($0, decimals: 2) + "pp" } ?? none
            let ratio = version.p99_ratio.map { formatted($0, decimals: 2) + "×" } ?? none
            let worse = !version.baseline && ((version.error_rate_delta_points ?? 0) > 1 || (version.p99_ratio ?? 1) > 1.2)
            styles.append([.plain, .plain, successStyle(f.success), .plain, .plain, .plain, worse ? .red : .plain, worse ? .red : .plain])
            return [(version.version.isEmpty ? none : version.version) + (version.baseline ? " *" : ""), String(f.requests),
                    success(f.success), milliseconds(f.latency_ms_p50), milliseconds(f.latency_ms_p95), milliseconds(f.latency_ms_p99),
                    version.baseline ? none : delta, version.baseline ? none : ratio]
        }
        return Table.render(header: ["VERSION", "REQUESTS", "SUCCESS", "P50", "P95", "P99", "ERROR_DELTA", "P99_RATIO"],
                            rows: rows, styles: styles, colour: colour)
    }

    /// `meshtrace top`: the busiest operations, by requests per second.
    public static func top(_ groups: [SignalQueries.LatencyGroup], limit: Int, colour: Bool = false) -> String {
        let busiest = groups.sorted { ($1.figures.requests, $0.service ?? "", $0.operation ?? "") < ($0.figures.requests, $1.service ?? "", $1.operation ?? "") }
            .prefix(limit)
        var styles: [[Table.Style]] = []
        let rows = busiest.map { group -> [String] in
            let f = group.figures
            styles.append([.plain, .plain, .plain, successStyle(f.success), .plain, .plain, .plain])
            return [group.service ?? "", group.operation ?? "", rps(f.rps), success(f.success),
                    milliseconds(f.latency_ms_p50), milliseconds(f.latency_ms_p99), String(f.requests)]
        }
        return Table.render(header: ["SERVICE", "OPERATION", "RPS", "SUCCESS", "P50", "P99", "REQUESTS"], rows: rows, styles: styles, colour: colour)
    }

    /// The topology with `-o wide`: security and bytes besides rate, errors and latency.
    public static func topologyWide(_ topology: TopologyJSON) -> String {
        let rows = topology.edges.map { edge -> [String] in
            let secured = (edge.mtls_requests ?? 0) + (edge.plaintext_requests ?? 0)
            return [edge.source, edge.target, String(edge.requests), edge.rps.map(rps) ?? none, String(edge.errors), percentText(edge.error_rate),
                    DurationText.format(nanoseconds: UInt64(edge.latency_ms_p50 * 1e6)),
                    DurationText.format(nanoseconds: UInt64(edge.latency_ms_p95 * 1e6)),
                    DurationText.format(nanoseconds: UInt64(edge.latency_ms_p99 * 1e6)),
                    secured == 0 ? none : percentText(Double(edge.mtls_requests ?? 0) / Double(secured)),
                    String(edge.request_bytes ?? 0), String(edge.response_bytes ?? 0),
                    (edge.connection_type ?? "").isEmpty ? "mesh" : edge.connection_type!]
        }
        return Table.render(header: ["SRC", "DST", "REQUESTS", "RPS", "ERRORS", "ERROR%", "P50", "P95", "P99", "MTLS", "REQ_BYTES", "RESP_BYTES", "TYPE"], rows: rows)
    }
}
