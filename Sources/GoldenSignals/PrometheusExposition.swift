import MeshCore

extension GoldenSignals {
    /// The service graph and span metrics in Prometheus text format, under the names
    /// Grafana's service graph and span-metrics views query
    /// (`traces_service_graph_*`, `traces_spanmetrics_*`). Counts since the process
    /// started; latencies in seconds with Tempo's bucket bounds.
    public func prometheusText() -> String {
        // Totals of the metrics' series and of each span shard's: the same series may
        // be in several, and is added up by its labels below.
        var counted = [state.withLock { ($0.aggregator.series, $0.aggregator.totals) }]
        for index in 0..<spanShards.count { counted.append(spanShards.withLock(index) { ($0.series, $0.totals) }) }
        let (statistics, pending) = pairing
        var edges: [(labels: String, totals: PrometheusTotals)] = []
        var operations: [(labels: String, totals: PrometheusTotals)] = []
        for (series, totals) in counted {
            for (id, total) in totals.enumerated() where total.requests > 0 {
                switch series[id] {
                case let .edge(client, server, connection):
                    var labels = "client=\"\(Self.escape(client.service))\",server=\"\(Self.escape(server.service))\""
                    if connection != .unset { labels += ",connection_type=\"\(connection.label)\"" }
                    if !client.namespace.isEmpty { labels += ",client_service_namespace=\"\(Self.escape(client.namespace))\"" }
                    if !server.namespace.isEmpty { labels += ",server_service_namespace=\"\(Self.escape(server.namespace))\"" }
                    edges.append((labels, total))
                case let .operation(workload, kind, name):
                    var labels = "service=\"\(Self.escape(workload.service))\",span_name=\"\(Self.escape(name))\",span_kind=\"SPAN_KIND_\(kind.name.uppercased())\""
                    if !workload.namespace.isEmpty { labels += ",service_namespace=\"\(Self.escape(workload.namespace))\"" }
                    if !workload.version.isEmpty { labels += ",service_version=\"\(Self.escape(workload.version))\"" }
                    operations.append((labels, total))
                case .reported:
                    continue
                }
            }
        }
        // Series that differ only in version share edge labels: add them up.
        edges = Self.combine(edges)
        operations = Self.combine(operations)

        var text = ""
        func family(_ name: String, _ type: String, _ help: String) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        family("traces_service_graph_request_total", "counter", "Requests between two workloads, from all spans before sampling.")
        for edge in edges { text += "traces_service_graph_request_total{\(edge.labels)} \(edge.totals.requests)\n" }
        family("traces_service_graph_request_failed_total", "counter", "Requests between two workloads that failed (status ERROR or HTTP 5xx).")
        for edge in edges { text += "traces_service_graph_request_failed_total{\(edge.labels)} \(edge.totals.failed)\n" }
        family("traces_service_graph_request_server_seconds", "histogram", "Request latency as the server's proxy saw it.")
        for edge in edges where edge.totals.serverLatency.count > 0 {
            Self.histogram("traces_service_graph_request_server_seconds", edge.labels, edge.totals.serverLatency, into: &text)
        }
        family("traces_service_graph_request_client_seconds", "histogram", "Request latency as the client's proxy saw it.")
        for edge in edges where edge.totals.latency.count > 0 {
            Self.histogram("traces_service_graph_request_client_seconds", edge.labels, edge.totals.latency, into: &text)
        }
        family("traces_service_graph_connection_info", "gauge", "1 for every edge seen since the collector started.")
        for edge in edges { text += "traces_service_graph_connection_info{\(edge.labels)} 1\n" }
        family("traces_service_graph_unpaired_spans_total", "counter", "Spans whose partner never came: to an uninstrumented callee, or from an unknown caller.")
        text += "traces_service_graph_unpaired_spans_total{side=\"client\"} \(statistics.expiredClients)\n"
        text += "traces_service_graph_unpaired_spans_total{side=\"server\"} \(statistics.expiredServers)\n"
        family("traces_service_graph_dropped_spans_total", "counter", "Spans that left the pairing room early because it was full (still counted, unpaired).")
        text += "traces_service_graph_dropped_spans_total \(statistics.evicted)\n"
        family("meshtrace_pairing_total", "counter", "CLIENT/SERVER pairing outcomes.")
        text += "meshtrace_pairing_total{outcome=\"paired\"} \(statistics.paired)\n"
        text += "meshtrace_pairing_total{outcome=\"root\"} \(statistics.roots)\n"
        text += "meshtrace_pairing_total{outcome=\"late\"} \(statistics.late)\n"
        family("meshtrace_pairing_pending", "gauge", "Halves waiting for their partner.")
        text += "meshtrace_pairing_pending \(pending)\n"
        family("meshtrace_golden_series", "gauge", "Distinct golden-signal series since the collector started.")
        text += "meshtrace_golden_series \(pairingStatistics.series)\n"

        family("traces_spanmetrics_calls_total", "counter", "Spans per operation, from all spans before sampling.")
        for operation in operations {
            let ok = operation.totals.requests - operation.totals.failed
            if ok > 0 { text += "traces_spanmetrics_calls_total{\(operation.labels),status_code=\"STATUS_CODE_UNSET\"} \(ok)\n" }
            if operation.totals.failed > 0 {
                text += "traces_spanmetrics_calls_total{\(operation.labels),status_code=\"STATUS_CODE_ERROR\"} \(operation.totals.failed)\n"
            }
        }
        family("traces_spanmetrics_latency", "histogram", "Span durations per operation.")
        for operation in operations {
            Self.histogram("traces_spanmetrics_latency", operation.labels, operation.totals.latency, into: &text)
        }
        return text
    }

    private static func combine(_ entries: [(labels: String, totals: PrometheusTotals)]) -> [(labels: String, totals: PrometheusTotals)] {
        var merged: [String: PrometheusTotals] = [:]
        for entry in entries {
            if var existing = merged[entry.labels] {
                existing.add(entry.totals)
                merged[entry.labels] = existing
            } else {
                merged[entry.labels] = entry.totals
            }
        }
        return merged.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    private static func histogram(_ name: String, _ labels: String, _ buckets: PrometheusTotals.Buckets, into text: inout String) {
        var cumulative: UInt64 = 0
        for (index, bound) in PrometheusTotals.bounds.enumerated() {
            cumulative += buckets.counts[index]
            text += "\(name)_bucket{\(labels),le=\"\(bound)\"} \(cumulative)\n"
        }
        text += "\(name)_bucket{\(labels),le=\"+Inf\"} \(buckets.count)\n"
        text += "\(name)_sum{\(labels)} \(buckets.sum)\n"
        text += "\(name)_count{\(labels)} \(buckets.count)\n"
    }

    /// A Prometheus label value: backslash, double quote and newline escaped.
    static func escape(_ value: String) -> String {
        var escaped = ""
        for character in value {
            switch character {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            default: escaped.append(character)
            }
        }
        return escaped
    }
}

extension PrometheusTotals {
    mutating func add(_ other: PrometheusTotals) {
        requests += other.requests
        failed += other.failed
        latency.add(other.latency)
        serverLatency.add(other.serverLatency)
    }
}

extension PrometheusTotals.Buckets {
    mutating func add(_ other: PrometheusTotals.Buckets) {
        for index in counts.indices { counts[index] += other.counts[index] }
        nanoseconds += other.nanoseconds
        count += other.count
    }
}
