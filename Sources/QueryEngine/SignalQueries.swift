import GoldenSignals
import MeshCore

/// Questions the golden signals answer — from 100 % of traffic, whatever was sampled:
/// services and operations, per-service stats, latency, edges, audit and version
/// comparison. Every figure comes from merged series over the window.
public struct SignalQueries: Sendable {
    public let golden: GoldenSignals

    public init(golden: GoldenSignals) {
        self.golden = golden
    }

    /// Rate, success and latency of one slice of traffic, units in the key names.
    public struct Figures: Codable, Sendable, Equatable {
        public var requests: Int
        public var errors: Int
        /// 4xx answers, not counted in `errors`.
        public var client_errors: Int
        /// Requests per second over the window.
        public var rps: Double
        /// Share of requests that did not fail (0…1); nil without traffic.
        public var success: Double?
        public var latency_ms_p50: Double?
        public var latency_ms_p90: Double?
        public var latency_ms_p95: Double?
        public var latency_ms_p99: Double?
        public var request_bytes: Int
        public var response_bytes: Int
        /// Share of requests seen over mutual TLS (0…1), of those whose security the proxies reported.
        public var mtls: Double?

        init(_ signals: Signals, seconds: Double, latency: ExponentialHistogram? = nil) {
            requests = Int(signals.requests)
            errors = Int(signals.errors)
            client_errors = Int(signals.clientErrors)
            rps = seconds > 0 ? Double(signals.requests) / seconds : 0
            success = signals.requests == 0 ? nil : 1 - Double(signals.errors) / Double(signals.requests)
            let histogram = latency ?? (signals.latency.isEmpty ? signals.serverLatency : signals.latency)
            func milliseconds(_ q: Double) -> Double? { histogram.quantile(q).map { $0 / 1e6 } }
            latency_ms_p50 = milliseconds(0.50)
            latency_ms_p90 = milliseconds(0.90)
            latency_ms_p95 = milliseconds(0.95)
            latency_ms_p99 = milliseconds(0.99)
            request_bytes = Int(signals.requestBytes)
            response_bytes = Int(signals.responseBytes)
            let secured = signals.mutualTLS + signals.plaintext
            mtls = secured == 0 ? nil : Double(signals.mutualTLS) / Double(secured)
        }
    }

    /// A query window and the namespace filter every answer shares.
    public struct Scope: Sendable {
        public var window: ClosedRange<UInt64>
        /// Only workloads in this namespace (either end, for edges); nil for all.
        public var namespace: String?

        public init(window: ClosedRange<UInt64>, namespace: String? = nil) {
            self.window = window
            self.namespace = namespace
        }

        var seconds: Double { Double(window.upperBound - window.lowerBound) / 1e9 }

        func admits(_ workload: Workload) -> Bool { namespace == nil || workload.namespace == namespace }
    }

    // MARK: Services and operations

    /// Services that reported spans in the window, sorted.
    public func services(_ scope: Scope) -> [String] {
        Set(operationKeys(scope).map(\.workload.service)).sorted()
    }

    /// One operation of one service.
    public struct Operation: Codable, Sendable, Hashable, Comparable {
        public var name: String
        public var span_kind: String

        public static func < (lhs: Operation, rhs: Operation) -> Bool { (lhs.name, lhs.span_kind) < (rhs.name, rhs.span_kind) }
    }

    /// The operations of `service` in the window, sorted; every kind when `kind` is nil.
    public func operations(of service: String, kind: SpanKind? = nil, _ scope: Scope) -> [Operation] {
        Set(operationKeys(scope).compactMap { key -> Operation? in
            guard key.workload.service == service, kind == nil || key.kind == kind else { return nil }
            return Operation(name: key.name, span_kind: key.kind.name)
        }).sorted()
    }

    private struct OperationKey: Hashable {
        var workload: Workload
        var kind: SpanKind
        var name: String
    }

    /// The operations with traffic in the window; their signals are not merged.
    private func operationKeys(_ scope: Scope) -> [OperationKey] {
        golden.series(in: scope.window).compactMap { key in
            guard case let .operation(workload, kind, name) = key, scope.admits(workload) else { return nil }
            return OperationKey(workload: workload, kind: kind, name: name)
        }
    }

    private func operations(_ scope: Scope) -> [(key: OperationKey, signals: Signals)] {
        golden.signals(in: scope.window).compactMap { key, signals in
            guard case let .operation(workload, kind, name) = key, scope.admits(workload) else { return nil }
            return (OperationKey(workload: workload, kind: kind, name: name), signals)
        }
    }

    // MARK: Stat

    /// A service's inbound traffic (its SERVER spans), like `linkerd viz stat`.
    public struct Stat: Codable, Sendable, Equatable {
        public var name: String
        public var namespace: String
        /// Versions that served requests, sorted.
        public var versions: [String]
        public var inbound: Figures
        /// Requests the service sent (its CLIENT spans).
        public var outbound_requests: Int
    }

    /// Per-service stats, sorted by namespace and name; services named in `services` only when given.
    public func stat(_ scope: Scope, services: Set<String>? = nil) -> [Stat] {
        struct Key: Hashable { var name: String; var namespace: String }
        var inbound: [Key: Signals] = [:]
        var outbound: [Key: UInt64] = [:]
        var versions: [Key: Set<String>] = [:]
        for (key, signals) in operations(scope) where services?.contains(key.workload.service) ?? true {
            let service = Key(name: key.workload.service, namespace: key.workload.namespace)
            // Every service gets a row, with no inbound traffic when it served none.
            var served = inbound[service] ?? Signals()
            switch key.kind {
            case .server, .consumer:
                served.merge(signals)
                if !key.workload.version.isEmpty { versions[service, default: []].insert(key.workload.version) }
            case .client, .producer:
                outbound[service, default: 0] += signals.requests
            default:
                break
            }
            inbound[service] = served
        }
        return inbound.keys.sorted { ($0.namespace, $0.name) < ($1.namespace, $1.name) }.map { key in
            Stat(name: key.name, namespace: key.namespace, versions: (versions[key] ?? []).sorted(),
                 inbound: Figures(inbound[key]!, seconds: scope.seconds), outbound_requests: Int(outbound[key] ?? 0))
        }
    }

    // MARK: Latency

    /// How latency is grouped.
    public enum Grouping: String, Codable, Sendable, CaseIterable {
        case service, operation, edge, version
    }

    /// One group's figures, and its time series when a step was asked for.
    public struct LatencyGroup: Codable, Sendable, Equatable {
        public var service: String?
        public var operation: String?
        public var span_kind: String?
        public var version: String?
        public var source: String?
        public var target: String?
        public var figures: Figures
        public var series: [Point]?
    }

    public struct Point: Codable, Sendable, Equatable {
        /// RFC 3339: the start of the step.
        public var time: String
        public var requests: Int
        public var errors: Int
        public var latency_ms_p50: Double?
        public var latency_ms_p95: Double?
        public var latency_ms_p99: Double?
    }

    /// Latency per group over the window; with `step` (nanoseconds), also a series of
    /// points, one per step. `service` narrows to one service (either end, for edges).
    /// Services and versions count their SERVER spans; operations every kind.
    public func latency(_ scope: Scope, by grouping: Grouping, service: String? = nil, step: UInt64? = nil) -> [LatencyGroup] {
        func groups(_ window: ClosedRange<UInt64>) -> [GroupKey: Signals] {
            var result: [GroupKey: Signals] = [:]
            for (key, signals) in golden.signals(in: window) {
                guard let group = GroupKey(key, grouping, scope: scope, service: service) else { continue }
                result[group, default: Signals()].merge(signals)
            }
            return result
        }
        let whole = groups(scope.window)
        var series: [GroupKey: [Point]] = [:]
        if let step, step > 0 {
            // Steps start on bucket boundaries and are whole buckets long, so that no
            // bucket is counted in two points.
            let width = max(golden.bucketNanoseconds, 1)
            let stride = (step + width - 1) / width * width
            var start = scope.window.lowerBound / width * width
            while start <= scope.window.upperBound {
                let (next, overflow) = start.addingReportingOverflow(stride)
                let slice = groups(start...(overflow ? UInt64.max : next - 1))
                for key in whole.keys {
                    let signals = slice[key] ?? Signals()
                    let latency = signals.latency.isEmpty ? signals.serverLatency : signals.latency
                    series[key, default: []].append(Point(
                        time: rfc3339(start), requests: Int(signals.requests), errors: Int(signals.errors),
                        latency_ms_p50: latency.quantile(0.50).map { $0 / 1e6 },
                        latency_ms_p95: latency.quantile(0.95).map { $0 / 1e6 },
                        latency_ms_p99: latency.quantile(0.99).map { $0 / 1e6 }))
                }
                if overflow { break }
                start = next
            }
        }
        return whole.keys.sorted().map { key in
            LatencyGroup(service: key.service, operation: key.operation, span_kind: key.kind, version: key.version,
                         source: key.source, target: key.target,
                         figures: Figures(whole[key]!, seconds: scope.seconds), series: series[key])
        }
    }

    private struct GroupKey: Hashable, Comparable {
        var service: String?
        var operation: String?
        var kind: String?
        var version: String?
        var source: String?
        var target: String?

        init?(_ key: SeriesKey, _ grouping: Grouping, scope: Scope, service: String?) {
            switch (grouping, key) {
            case let (.edge, .edge(client, server, _)):
                guard scope.admits(client) || scope.admits(server) else { return nil }
                guard service == nil || client.service == service || server.service == service else { return nil }
                source = client.service
                target = server.service
            case let (.operation, .operation(workload, kind, name)):
                guard scope.admits(workload), service == nil || workload.service == service else { return nil }
                self.service = workload.service
                operation = name
                self.kind = kind.name
            case let (.service, .operation(workload, kind, _)), let (.version, .operation(workload, kind, _)):
                guard kind == .server || kind == .consumer, scope.admits(workload), service == nil || workload.service == service else { return nil }
                self.service = workload.service
                if grouping == .version { version = workload.version }
            default:
                return nil
            }
        }

        static func < (lhs: GroupKey, rhs: GroupKey) -> Bool {
            func fields(_ key: GroupKey) -> [String] {
                [key.service ?? "", key.operation ?? "", key.kind ?? "", key.version ?? "", key.source ?? "", key.target ?? ""]
            }
            return fields(lhs).lexicographicallyPrecedes(fields(rhs))
        }
    }

    // MARK: Edges

    /// One caller → callee pair between workloads (namespaces kept apart).
    public struct Edge: Codable, Sendable, Equatable {
        public var source: String
        public var source_namespace: String
        public var target: String
        public var target_namespace: String
        /// `""` between two workloads with sidecars; `virtual_node`, `database` or
        /// `messaging_system` when the callee has none; callers `user` and `unknown` are virtual too.
        public var connection_type: String
        public var figures: Figures
    }

    /// The edges of the window, sorted; with `service`, only those touching it.
    public func edges(_ scope: Scope, service: String? = nil) -> [Edge] {
        struct Key: Hashable, Comparable {
            var source: String, sourceNamespace: String, target: String, targetNamespace: String, connection: ConnectionType
            static func < (lhs: Key, rhs: Key) -> Bool {
                (lhs.source, lhs.target, lhs.sourceNamespace, lhs.targetNamespace, lhs.connection)
                    < (rhs.source, rhs.target, rhs.sourceNamespace, rhs.targetNamespace, rhs.connection)
            }
        }
        var merged: [Key: Signals] = [:]
        for edge in golden.serviceGraph(in: scope.window).edges {
            guard scope.admits(edge.client) || scope.admits(edge.server) else { continue }
            guard service == nil || edge.client.service == service || edge.server.service == service else { continue }
            let key = Key(source: edge.client.service, sourceNamespace: edge.client.namespace,
                          target: edge.server.service, targetNamespace: edge.server.namespace, connection: edge.connection)
            merged[key, default: Signals()].merge(edge.signals)
        }
        return merged.keys.sorted().map { key in
            Edge(source: key.source, source_namespace: key.sourceNamespace, target: key.target, target_namespace: key.targetNamespace,
                 connection_type: key.connection.label, figures: Figures(merged[key]!, seconds: scope.seconds))
        }
    }

    /// Jaeger's dependency links: callers and callees by service, with call counts;
    /// the virtual caller `user` (the mesh's entry) is left out, as Jaeger has no such service.
    public func dependencies(_ scope: Scope, service: String? = nil) -> [(parent: String, child: String, calls: Int, errors: Int)] {
        var merged: [[String]: (calls: Int, errors: Int)] = [:]
        for edge in edges(scope, service: service) where edge.source != Workload.user.service {
            let existing = merged[[edge.source, edge.target]] ?? (0, 0)
            merged[[edge.source, edge.target]] = (existing.calls + edge.figures.requests, existing.errors + edge.figures.errors)
        }
        return merged.keys.sorted { $0.lexicographicallyPrecedes($1) }.map { key in
            (key[0], key[1], merged[key]!.calls, merged[key]!.errors)
        }
    }

    // MARK: Audit

    /// Where the mesh is not secured or not enrolled.
    public struct Audit: Codable, Sendable, Equatable {
        public struct Finding: Codable, Sendable, Equatable {
            /// `plaintext_edge`, `unknown_caller` or `unenrolled_workload`.
            public var kind: String
            public var source: String
            public var target: String
            public var requests: Int
            public var detail: String

            public init(kind: String, source: String, target: String, requests: Int, detail: String) {
                self.kind = kind
                self.source = source
                self.target = target
                self.requests = requests
                self.detail = detail
            }
        }

        public var findings: [Finding]
    }

    /// Plaintext edges (requests the proxies saw without mutual TLS), callers outside
    /// the mesh (SERVER spans with no CLIENT span), and callees without a sidecar.
    public func audit(_ scope: Scope) -> Audit {
        var findings: [Audit.Finding] = []
        for edge in edges(scope) {
            let plaintext = Int((Double(edge.figures.requests) * (1 - (edge.figures.mtls ?? 1))).rounded())
            if let mtls = edge.figures.mtls, mtls < 1 {
                findings.append(.init(kind: "plaintext_edge", source: edge.source, target: edge.target, requests: plaintext,
                                      detail: "\(percentText(1 - mtls)) of requests without mutual TLS"))
            }
            if edge.source == Workload.unknown.service {
                findings.append(.init(kind: "unknown_caller", source: edge.source, target: edge.target, requests: edge.figures.requests,
                                      detail: "SERVER spans without a CLIENT span: a caller outside the mesh"))
            }
            if !edge.connection_type.isEmpty && edge.source != Workload.user.service && edge.source != Workload.unknown.service {
                findings.append(.init(kind: "unenrolled_workload", source: edge.source, target: edge.target, requests: edge.figures.requests,
                                      detail: "callee reports no spans (\(edge.connection_type))"))
            }
        }
        return Audit(findings: findings)
    }

    // MARK: Compare

    /// One version of a service against the baseline (the version with the most requests).
    public struct VersionComparison: Codable, Sendable, Equatable {
        public var version: String
        public var baseline: Bool
        public var figures: Figures
        /// This version's error rate minus the baseline's, in percentage points.
        public var error_rate_delta_points: Double?
        /// This version's p99 over the baseline's.
        public var p99_ratio: Double?
    }

    /// The versions of `service` side by side, from its SERVER spans.
    public func compare(service: String, _ scope: Scope) -> [VersionComparison] {
        let groups = latency(scope, by: .version, service: service)
        guard let baseline = groups.max(by: { ($0.figures.requests, $1.version ?? "") < ($1.figures.requests, $0.version ?? "") }) else { return [] }
        func errorRate(_ figures: Figures) -> Double? { figures.success.map { 1 - $0 } }
        return groups.map { group in
            var delta: Double?
            if let mine = errorRate(group.figures), let theirs = errorRate(baseline.figures) { delta = (mine - theirs) * 100 }
            var ratio: Double?
            if let mine = group.figures.latency_ms_p99, let theirs = baseline.figures.latency_ms_p99, theirs > 0 { ratio = mine / theirs }
            return VersionComparison(version: group.version ?? "", baseline: group.version == baseline.version,
                                     figures: group.figures, error_rate_delta_points: delta, p99_ratio: ratio)
        }
    }
}

/// A fraction as a percentage with two decimals: `3.85%`.
public func percentText(_ fraction: Double) -> String {
    let hundredths = Int((fraction * 10_000).rounded())
    let fractional = hundredths % 100
    return "\(hundredths / 100).\(fractional < 10 ? "0" : "")\(fractional)%"
}
