import ArgumentParser
import Foundation
import MeshCore
import OTLPWire
import QueryEngine

/// `meshtrace services`: services that reported spans.
struct ServicesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "services", abstract: "List the services that reported spans.")

    @OptionGroup var options: QueryOptions

    func run() async throws {
        try await reportingFailures {
            struct Answer: Decodable { var services: [String] }
            let answer = try await options.fetch(Answer.self, "/api/v1/services", options.parameters(defaultSince: "1h"))
            if options.output == .json { try options.printJSON(answer.services) } else { print(QueryTables.services(answer.services), terminator: "") }
        }
    }
}

/// `meshtrace operations SERVICE`: a service's operations.
struct OperationsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "operations", abstract: "List a service's operations and span kinds.")

    @Argument(help: "The service.")
    var service: String

    @OptionGroup var options: QueryOptions

    func run() async throws {
        try await reportingFailures {
            struct Answer: Decodable { var operations: [SignalQueries.Operation] }
            var parameters = options.parameters(defaultSince: "1h")
            parameters.set("service", service)
            let answer = try await options.fetch(Answer.self, "/api/v1/operations", parameters)
            if options.output == .json { try options.printJSON(answer.operations) } else { print(QueryTables.operations(answer.operations), terminator: "") }
        }
    }
}

/// `meshtrace topology`: the service graph.
struct TopologyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "topology",
        abstract: "Show the service graph: every caller → callee edge with requests, errors and latency.",
        discussion: "-o dot and -o mermaid print a diagram (Graphviz, Mermaid).")

    @OptionGroup var options: QueryOptions

    func run() async throws {
        try await reportingFailures {
            var parameters = options.parameters(defaultSince: "1h")
            switch options.output {
            case .dot, .mermaid:
                parameters.set("format", options.output.rawValue)
                print(String(decoding: try await options.fetch("/api/v1/topology", parameters), as: UTF8.self), terminator: "")
            case .json:
                try options.printJSON(try await options.fetch(TopologyJSON.self, "/api/v1/topology", parameters))
            case .wide:
                print(QueryTables.topologyWide(try await options.fetch(TopologyJSON.self, "/api/v1/topology", parameters)), terminator: "")
            case .table:
                print(TopologyTable.render(try await options.fetch(TopologyJSON.self, "/api/v1/topology", parameters)), terminator: "")
            }
        }
    }
}

/// `meshtrace edges [SERVICE]`: edges with their security, like `linkerd viz edges`.
struct EdgesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edges", abstract: "List caller → callee edges with success, rate, p99 and whether they are mTLS.")

    @Argument(help: "Only edges to or from this service.")
    var service: String?

    @OptionGroup var options: QueryOptions

    func run() async throws {
        try await reportingFailures {
            struct Answer: Decodable { var edges: [SignalQueries.Edge] }
            var parameters = options.parameters(defaultSince: "5m")
            parameters.set("service", service)
            let answer = try await options.fetch(Answer.self, "/api/v1/edges", parameters)
            if options.output == .json { try options.printJSON(answer.edges) } else {
                print(QueryTables.edges(answer.edges, wide: options.output == .wide, colour: options.colour), terminator: "")
            }
        }
    }
}

/// `meshtrace stat [SERVICE…]`: per-service success, rate and latency, like `linkerd viz stat`.
struct StatCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stat", abstract: "Show each service's inbound success rate, requests per second and latency percentiles.")

    @Argument(help: "Only these services.")
    var services: [String] = []

    @OptionGroup var options: QueryOptions

    func run() async throws {
        try await reportingFailures {
            struct Answer: Decodable { var stats: [SignalQueries.Stat] }
            var parameters = options.parameters(defaultSince: "1m")
            for service in services { parameters.add("service", service) }
            let answer = try await options.fetch(Answer.self, "/api/v1/stat", parameters)
            if options.output == .json { try options.printJSON(answer.stats) } else {
                print(QueryTables.stat(answer.stats, wide: options.output == .wide, colour: options.colour), terminator: "")
            }
        }
    }
}

/// `meshtrace latency`: percentiles per service, operation, edge or version.
struct LatencyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "latency", abstract: "Show latency percentiles per service, operation, edge or version, optionally as a time series.")

    @Option(name: .long, help: "Group by service, operation, edge or version.")
    var by = "service"

    @Option(name: .long, help: "Only this service (either end, for edges).")
    var service: String?

    @Option(name: .long, help: "Also a series with one point per step (1m, 5m).")
    var step: String?

    @OptionGroup var options: QueryOptions

    func validate() throws {
        guard SignalQueries.Grouping(rawValue: by) != nil else { throw ValidationError("--by must be service, operation, edge or version, got \(by)") }
        if let step, DurationText.nanoseconds(step) == nil { throw ValidationError("--step must be a duration like 1m, got \(step)") }
    }

    func run() async throws {
        try await reportingFailures {
            struct Answer: Decodable { var groups: [SignalQueries.LatencyGroup] }
            var parameters = options.parameters(defaultSince: "1h")
            parameters.set("by", by)
            parameters.set("service", service)
            parameters.set("step", step)
            let answer = try await options.fetch(Answer.self, "/api/v1/latency", parameters)
            if options.output == .json { try options.printJSON(answer.groups) } else {
                print(QueryTables.latency(answer.groups, by: SignalQueries.Grouping(rawValue: by)!, wide: options.output == .wide), terminator: "")
            }
        }
    }
}

/// `meshtrace trace ID`: one trace as a waterfall, or OTLP/JSON.
struct TraceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trace",
        abstract: "Show one trace: a waterfall (table) or OTLP/JSON (json).",
        discussion: "Exit code 3 when no span of the trace is stored.")

    @Argument(help: "Trace id: 32 hex digits (or 16 for a 64-bit id).")
    var id: String

    @OptionGroup var options: QueryOptions

    func validate() throws {
        guard TraceID(hex: id) != nil else { throw ValidationError("trace id must be 16 or 32 hex digits, got \(id)") }
    }

    func run() async throws {
        try await reportingFailures {
            let traceID = TraceID(hex: id)!
            let bytes: [UInt8]
            do {
                bytes = try await options.fetch("/api/traces/\(traceID.hex)", QueryParameters(), accept: "application/protobuf")
            } catch CLIFailure.notFound {
                throw CLIFailure.notFound("trace \(traceID.hex) not found")
            }
            let data: TracesData
            do {
                data = try TracesData(serializedBytes: bytes)
            } catch {
                throw CLIFailure.server("the answer is not OTLP TracesData: \(error)")
            }
            if options.output == .json {
                print(String(decoding: try OTLPJSON.encode(data), as: UTF8.self))
            } else {
                var batch = SpanBatch()
                batch.append(ExportTraceServiceRequest.with { $0.resourceSpans = data.resourceSpans })
                print(TraceTree.render(batch.sortedByTrace(), barWidth: options.output == .wide ? 60 : 30, colour: options.colour), terminator: "")
            }
        }
    }
}

/// `meshtrace search`: traces with a span matching every filter.
struct SearchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "search",
        abstract: "Find traces that hold a span matching the filters, newest first.",
        discussion: """
            The filters apply to one span together: --service cart --min-duration 300ms finds \
            traces with a span of cart that took 300 ms or more, and prints each trace's own \
            root, duration and span count. -q takes a TraceQL query instead.
            """)

    @Option(name: .long, help: "The span's service.")
    var service: String?

    @Option(name: .long, help: "The span's operation (name).")
    var operation: String?

    @Option(name: .long, help: "An attribute of the span or its resource, key=value (repeatable).")
    var tag: [String] = []

    @Option(name: .long, help: "The span took at least this long (100ms).")
    var minDuration: String?

    @Option(name: .long, help: "The span took at most this long.")
    var maxDuration: String?

    @Option(name: .long, help: "The span's status: error, ok or unset.")
    var status: String?

    @Option(name: .short, help: "A TraceQL query ({ resource.service.name = \"cart\" && duration > 300ms }) instead of the filters.")
    var q: String?

    @Option(name: .long, help: "At most this many traces.")
    var limit = 20

    @OptionGroup var options: QueryOptions

    func validate() throws {
        for text in tag where !text.contains("=") { throw ValidationError("--tag must be key=value, got \(text)") }
        for (name, value) in [("min-duration", minDuration), ("max-duration", maxDuration)] {
            if let value, DurationText.nanoseconds(value) == nil { throw ValidationError("--\(name) must be a duration like 300ms, got \(value)") }
        }
        if let status, !["error", "ok", "unset"].contains(status) { throw ValidationError("--status must be error, ok or unset, got \(status)") }
        if q != nil && (service != nil || operation != nil || !tag.isEmpty || minDuration != nil || maxDuration != nil || status != nil) {
            throw ValidationError("-q cannot be combined with the other filters")
        }
        guard limit > 0 else { throw ValidationError("--limit must be at least 1") }
        if let q {
            do { _ = try TraceQL.parse(q) } catch { throw ValidationError("-q: \(error)") }
        }
    }

    func run() async throws {
        try await reportingFailures {
            struct Answer: Decodable { var traces: [QueryService.SearchResult] }
            var parameters = options.parameters(defaultSince: "1h")
            parameters.set("service", service)
            parameters.set("operation", operation)
            for text in tag { parameters.add("tag", text) }
            parameters.set("min_duration", minDuration)
            parameters.set("max_duration", maxDuration)
            parameters.set("status", status)
            parameters.set("q", q)
            parameters.set("limit", String(limit))
            let answer = try await options.fetch(Answer.self, "/api/v1/search", parameters)
            if options.output == .json { try options.printJSON(answer.traces) } else {
                print(QueryTables.search(answer.traces, wide: options.output == .wide, colour: options.colour), terminator: "")
            }
        }
    }
}

/// `meshtrace audit`: where the mesh is not secured or not enrolled.
struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit", abstract: "List plaintext edges, callers outside the mesh and workloads without a sidecar.")

    @OptionGroup var options: QueryOptions

    func run() async throws {
        try await reportingFailures {
            let audit = try await options.fetch(SignalQueries.Audit.self, "/api/v1/audit", options.parameters(defaultSince: "1h"))
            if options.output == .json { try options.printJSON(audit) } else { print(QueryTables.audit(audit, colour: options.colour), terminator: "") }
        }
    }
}

/// `meshtrace compare SERVICE`: a service's versions side by side (canary against stable).
struct CompareCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Compare a service's versions (service.version): success, latency, and each against the busiest (marked *).")

    @Argument(help: "The service.")
    var service: String

    @OptionGroup var options: QueryOptions

    func run() async throws {
        try await reportingFailures {
            var parameters = options.parameters(defaultSince: "1h")
            parameters.set("service", service)
            let comparison = try await options.fetch(QueryService.Comparison.self, "/api/v1/compare", parameters)
            if options.output == .json { try options.printJSON(comparison) } else { print(QueryTables.compare(comparison, colour: options.colour), terminator: "") }
        }
    }
}

/// `meshtrace top`: the busiest operations, refreshed until interrupted.
struct TopCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "Show the busiest operations over the last --since, refreshed every --interval until interrupted.")

    @Option(name: .long, help: "Only this service's operations.")
    var service: String?

    @Option(name: .long, help: "Seconds between refreshes.")
    var interval = 2.0

    @Option(name: .long, help: "Stop after this many refreshes (0: until interrupted).")
    var iterations = 0

    @Option(name: .long, help: "Rows shown.")
    var rows = 20

    @OptionGroup var options: QueryOptions

    func validate() throws {
        guard interval >= 0.1 else { throw ValidationError("--interval must be at least 0.1 seconds") }
        guard iterations >= 0, rows > 0 else { throw ValidationError("--iterations must be 0 or more and --rows more than 0") }
    }

    func run() async throws {
        try await reportingFailures {
            struct Answer: Decodable { var groups: [SignalQueries.LatencyGroup] }
            let terminal = isatty(STDOUT_FILENO) != 0
            var round = 0
            while iterations == 0 || round < iterations {
                if round > 0 { try await Task.sleep(for: .milliseconds(Int(interval * 1000))) }
                round += 1
                var parameters = options.parameters(defaultSince: "30s")
                parameters.set("by", "operation")
                parameters.set("service", service)
                let answer = try await options.fetch(Answer.self, "/api/v1/latency", parameters)
                let inbound = answer.groups.filter { $0.span_kind == "server" || $0.span_kind == "consumer" }
                if options.output == .json {
                    try options.printJSON(inbound)
                    continue
                }
                // On a terminal, redraw in place; otherwise one table after another.
                if terminal { print("\u{1B}[H\u{1B}[2J", terminator: "") } else if round > 1 { print("") }
                print("\(rfc3339(TimeWindow.now()))  last \(options.since ?? "30s")")
                print(QueryTables.top(inbound, limit: rows, colour: options.colour), terminator: "")
            }
        }
    }
}
