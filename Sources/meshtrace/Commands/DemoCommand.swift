import ArgumentParser
import Collector
import Foundation
import Logging
import MeshCore
import MeshSim
import OTLPWire
import QueryEngine
import Sampling
import SwiftProtobuf

/// `meshtrace demo`: an embedded collector fed with simulated mesh traffic over real OTLP/HTTP.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run a collector, send it simulated mesh traffic, show the topology and a slow trace.",
        discussion: """
            Needs nothing else running: the collector listens on free loopback ports and \
            keeps its data in a temporary directory (or --data-dir). Traffic comes from \
            MeshSim and travels over OTLP/HTTP like any exporter's. With -o json the \
            output also holds MeshSim's own ground truth for every edge.
            """)

    @Option(name: .long, help: "How long to send traffic, in seconds (at most 20).")
    var duration: Double = 5

    @Option(name: .long, help: "Requests per second entering the mesh.")
    var rate = 100

    @Option(name: .long, help: "Share of hops that fail with a 5xx, 0…1.")
    var errorRate = 0.02

    @Option(name: .long, help: "Seed for MeshSim; the same seed gives the same traffic.")
    var seed: UInt64 = 42

    @Option(name: .long, help: "Keep the collector's data here instead of a temporary directory.")
    var dataDir: String?

    @Option(name: [.short, .long], help: "Output format: table or json.")
    var output: OutputFormat = .table

    @Flag(help: "Run a small shop of HTTP services, each behind a meshtrace-sidecar process, instead of MeshSim: the spans come from the sidecars.")
    var sidecars = false

    func validate() throws {
        guard duration > 0, duration <= 20 else { throw ValidationError("--duration must be in (0, 20] seconds") }
        guard rate > 0, rate <= 10_000 else { throw ValidationError("--rate must be in 1…10000") }
        guard (0...1).contains(errorRate) else { throw ValidationError("--error-rate must be in 0…1") }
    }

    func run() async throws {
        let directory = dataDir ?? FileManager.default.temporaryDirectory
            .appendingPathComponent("meshtrace-demo-\(ProcessInfo.processInfo.processIdentifier)").path
        defer { if dataDir == nil { try? FileManager.default.removeItem(atPath: directory) } }

        var configuration = CollectorConfiguration(dataDirectory: directory)
        configuration.otlpHTTP = ListenAddress(host: "127.0.0.1", port: 0)
        configuration.otlpGRPC = nil
        configuration.zipkin = nil
        configuration.query = ListenAddress(host: "127.0.0.1", port: 0)
        // The demo shows every trace it sent; `meshtrace policy test --sim` shows what a policy keeps.
        configuration.sampling = .policy(try PolicyFile.parse(yaml: "policies: [{name: everything, type: always_sample}]", file: "<demo>"))
        var logger = Logger(label: "meshtrace.demo")
        logger.logLevel = .warning
        let server = CollectorServer(configuration: configuration, logger: logger)
        let shutdown = ShutdownTrigger()
        let (addresses, continuation) = AsyncStream.makeStream(of: (CollectorServer.Endpoint, ListenAddress).self)
        let collector = Task {
            defer { continuation.finish() }
            try await server.run(handleSignals: false, shutdown: shutdown) { endpoint, address in
                continuation.yield((endpoint, address))
            }
        }

        var otlpURL: String?
        var queryURL: String?
        for await (endpoint, address) in addresses {
            switch endpoint {
            case .otlpHTTP: otlpURL = "http://\(address)"
            case .query: queryURL = "http://\(address)"
            case .otlpGRPC, .zipkin: break
            }
            if otlpURL != nil && queryURL != nil { break }
        }
        guard let otlpURL, let queryURL else {
            _ = try? await collector.value
            throw CLIFailure.server("the embedded collector did not start").exitCode
        }
        status("collector: OTLP/HTTP on \(otlpURL), query API on \(queryURL), data in \(directory)")

        let sent: Traffic
        do {
            if sidecars {
                let mesh = try await SidecarMesh.run(
                    rate: rate, duration: duration, errorRate: errorRate, seed: seed, collector: otlpURL, status: status)
                sent = Traffic(truth: mesh.truth, requestsSent: 0, slowestTrace: mesh.slowestTrace)
            } else {
                sent = try await sendTraffic(to: QueryClient(baseURL: otlpURL))
            }
        } catch {
            await shutdown.trigger()
            _ = try? await collector.value
            FileHandle.standardError.write(Data("meshtrace demo: \(error)\n".utf8))
            throw ExitCode(2)
        }

        let query = QueryClient(baseURL: queryURL)
        let topologyAnswer = try await query.fetch("/api/v1/topology?since=1h", accept: "application/json")
        let topology = try JSONDecoder().decode(TopologyJSON.self, from: Data(topologyAnswer.body))
        let traceAnswer = try await query.fetch("/api/traces/\(sent.slowestTrace.hex)", accept: "application/protobuf")
        var slowTrace = SpanBatch()
        if traceAnswer.status == 200 {
            slowTrace.append(ExportTraceServiceRequest.with {
                $0.resourceSpans = (try? TracesData(serializedBytes: traceAnswer.body))?.resourceSpans ?? []
            })
        }

        await shutdown.trigger()
        try await collector.value

        switch output {
        case .table:
            if sidecars {
                print("Sent \(sent.truth.requests) requests through \(SidecarMesh.services.count) sidecars (\(sent.truth.spans) spans, "
                      + "\(String(format: "%.1f", sent.truth.hopsPerRequest)) hops per request), exported by MeshExporter.\n")
            } else {
                print("Sent \(sent.truth.requests) requests (\(sent.truth.spans) spans, "
                      + "\(String(format: "%.1f", sent.truth.hopsPerRequest)) hops per request) in \(sent.requestsSent) OTLP/HTTP requests.\n")
            }
            print("Topology (last hour):")
            print(TopologyTable.render(topology))
            print("Slowest trace:")
            print(TraceTree.render(slowTrace.sortedByTrace()), terminator: "")
        case .json:
            let report = DemoReport(
                requests: sent.truth.requests, spans: sent.truth.spans, otlp_requests: sent.requestsSent,
                hops_per_request: sent.truth.hopsPerRequest, topology: topology,
                truth: sent.truth.edges.keys.sorted().map { edge in
                    let stats = sent.truth.edges[edge]!
                    return DemoReport.TruthEdge(
                        source: edge.source, target: edge.target, requests: stats.requests, errors: stats.errors,
                        latency_ms_p50: Double(stats.percentile(0.50)) / 1e6,
                        latency_ms_p95: Double(stats.percentile(0.95)) / 1e6,
                        latency_ms_p99: Double(stats.percentile(0.99)) / 1e6)
                },
                slow_trace_id: sent.slowestTrace.hex, slow_trace_spans: slowTrace.count)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        }
    }

    private struct Traffic {
        var truth: GroundTruth
        var requestsSent: Int
        var slowestTrace: TraceID
    }

    /// Sends `rate` requests per second for `duration` seconds, in ticks of 100 ms.
    /// Like a proxy, it reports each span only once the span has ended.
    private func sendTraffic(to client: QueryClient) async throws -> Traffic {
        var simulator = MeshSim(configuration: MeshSim.Configuration(seed: seed, errorRate: errorRate))
        let total = Int((Double(rate) * duration).rounded())
        let tick = Duration.milliseconds(100)
        let perTick = max(1, Int((Double(rate) / 10).rounded()))
        var generated = 0
        var requestsSent = 0
        var slowest: (TraceID, UInt64) = (.zero, 0)
        var pending: [MeshSim.EmittedSpan] = []
        let clock = ContinuousClock()
        var deadline = clock.now
        while generated < total || !pending.isEmpty {
            let now = UInt64(Date().timeIntervalSince1970 * 1e9)
            for _ in 0..<min(perTick, total - generated) {
                let requestSpans = simulator.request(at: now)
                if let root = requestSpans.first(where: { $0.span.parentSpanID.isEmpty }) {
                    let length = root.span.endTimeUnixNano - root.span.startTimeUnixNano
                    if length > slowest.1 { slowest = (TraceID(bytes: root.span.traceID)!, length) }
                }
                pending += requestSpans
                generated += 1
            }
            let ended = pending.filter { $0.span.endTimeUnixNano <= now }
            pending.removeAll { $0.span.endTimeUnixNano <= now }
            for request in simulator.exportRequests(ended) {
                let (status, body) = try await client.post("/v1/traces", body: try request.serializedBytes(), contentType: "application/x-protobuf")
                guard status == 200 else {
                    throw CLIFailure.server("collector answered \(status): \(String(decoding: body.prefix(300), as: UTF8.self))")
                }
                requestsSent += 1
            }
            deadline = deadline.advanced(by: tick)
            try await clock.sleep(until: deadline, tolerance: .milliseconds(5))
        }
        return Traffic(truth: simulator.truth, requestsSent: requestsSent, slowestTrace: slowest.0)
    }

    private func status(_ message: String) {
        FileHandle.standardError.write(Data((message + "\n").utf8))
    }
}

/// `meshtrace demo -o json`: what was sent, what the collector answered, and MeshSim's ground truth.
struct DemoReport: Encodable {
    struct TruthEdge: Encodable {
        var source: String
        var target: String
        var requests: Int
        var errors: Int
        var latency_ms_p50: Double
        var latency_ms_p95: Double
        var latency_ms_p99: Double
    }

    var requests: Int
    var spans: Int
    var otlp_requests: Int
    var hops_per_request: Double
    var topology: TopologyJSON
    var truth: [TruthEdge]
    var slow_trace_id: String
    var slow_trace_spans: Int
}
