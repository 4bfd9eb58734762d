import ArgumentParser
import Foundation
import GoldenSignals
import MeshCore
import MeshSim
import OTLPWire

/// What golden signals cost: aggregation per span, memory per series and bucket,
/// and a p99-per-edge query over a day of 10-second buckets.
struct GoldenBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "golden",
        abstract: "Golden signals: aggregation cost per span, memory per series, and a day's p99-per-edge query.")

    @Option(help: "MeshSim spans aggregated for the cost per span.")
    var spans = 1_000_000

    @Option(help: "Edges in the query benchmark.")
    var edges = 1_000

    @Option(help: "Hours of 10-second buckets in the query benchmark.")
    var hours = 24

    @Option(help: "Timed passes; the fastest is reported.")
    var passes = 3

    @Option(help: "Which part to run: all, aggregation or query.")
    var part = "all"

    func run() throws {
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(cpuModel())")
        if part != "query" { try aggregationCost() }
        if part != "aggregation" { try dayOfEdges() }
    }

    private func scratch() -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("meshtrace-golden-\(UUID().uuidString)").path
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// `body` with golden signals over a scratch directory of their own (removed after),
    /// one 10-second resolution kept for good.
    private func withFreshGoldenSignals(_ body: (GoldenSignals) throws -> Void) throws {
        let directory = scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = GoldenSignals.Configuration(directory: directory)
        configuration.resolutions = [.init(width: .seconds(10), retention: .seconds(100 * 365 * 86400))]
        try body(try GoldenSignals(configuration: configuration))
    }

    /// Every span of a MeshSim corpus through the aggregator (decoded beforehand: the
    /// decoder gathers each span's facts, see `decode`).
    private func aggregationCost() throws {
        let (corpus, simulator, _) = simulatedCorpus(spans: spans, seed: 42)
        let requests = try corpus.map { try $0.serializedBytes() as [UInt8] }
        let exports = try requests.map { try DecodedTraceExport(protobuf: $0) }
        let emitted = simulator.truth.spans
        var best = Double.infinity
        var statistics: PairingStatistics?
        for _ in 0..<passes {
            try withFreshGoldenSignals { golden in
                let (_, measured) = Measurement.run {
                    for export in exports { golden.follow(export) }
                }
                best = min(best, measured.cpuSeconds)
                statistics = golden.pairingStatistics
            }
        }
        print(String(format: "aggregation: %.0f ns/span over %d MeshSim spans (best of %d; RED per operation and edge, pairing, Prometheus totals)",
                     best / Double(emitted) * 1e9, emitted, passes))
        // As in the collector, where a request's spans are counted as soon as they are
        // decoded: each export decoded just before it is followed, only the following timed
        // (on this thread's CPU clock; `follow` runs on the calling thread).
        var bestInPipeline = Double.infinity
        for _ in 0..<passes {
            try withFreshGoldenSignals { golden in
                var following = 0.0
                for request in requests {
                    let export = try DecodedTraceExport(protobuf: request)
                    let before = ExporterBench.threadCPU()
                    golden.follow(export)
                    following += ExporterBench.threadCPU() - before
                }
                bestInPipeline = min(bestInPipeline, following)
            }
        }
        print(String(format: "aggregation right after each request's decode, as in the collector: %.0f ns/span (best of %d)",
                     bestInPipeline / Double(emitted) * 1e9, passes))
        if let statistics {
            print("  pairs \(statistics.paired), roots \(statistics.roots), unpaired \(statistics.unpairedClients + statistics.unpairedServers), series \(statistics.series)")
        }
    }

    /// `edges` edges with one request each per 10-second bucket for `hours` hours, then
    /// the p99 of every edge over the whole day.
    private func dayOfEdges() throws {
        let directory = scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let golden = try GoldenSignals(configuration: GoldenSignals.Configuration(directory: directory))
        let services = Int((Double(edges).squareRoot() * 1.5).rounded(.up)) + 1
        var pairs: [(Int, Int)] = []
        outer: for client in 0..<services {
            for server in 0..<services where server != client {
                pairs.append((client, server))
                if pairs.count == edges { break outer }
            }
        }
        let second: UInt64 = 1_000_000_000
        let hour = 3600 * second
        let now = GoldenSignals.wallClock() / hour * hour
        let start = now - UInt64(hours) * hour
        var random = SeededGenerator(seed: 5)
        let residentBefore = residentBytes()
        var sequence: UInt64 = 0
        var spanCount = 0
        let (_, load) = try Measurement.run {
            for bucket in stride(from: start, to: now, by: Int(10 * second)) {
                var batch = SpanBatch()
                let resources = (0..<services).map { batch.intern(resource: ResourceEntry(serviceName: "service-\($0)", encoded: [])) }
                let scope = batch.intern(scope: [])
                for (client, server) in pairs {
                    let trace = TraceID(high: random.next(), low: random.next() | 1)
                    let clientSpan = SpanID(random.next() | 1)
                    let latency = UInt64(random.logNormal(median: 20e6, sigma: 0.6))
                    let begin = bucket + UInt64(random.int(in: 0...8_000_000_000))
                    for (kind, resource, id, parent, duration) in [
                        (SpanKind.client, resources[client], clientSpan, SpanID(random.next() | 1), latency + 300_000),
                        (SpanKind.server, resources[server], SpanID(random.next() | 1), clientSpan, latency),
                    ] {
                        batch.append(SpanBatch.Row(
                            traceID: trace, spanID: id, parentSpanID: parent, name: "GET /", kind: kind,
                            startTime: begin, endTime: begin + duration, statusCode: .unset, statusMessage: "",
                            httpStatusCode: random.chance(0.01) ? 503 : 200, resourceIndex: resource, scopeIndex: scope,
                            attributes: [], extras: []))
                    }
                }
                spanCount += batch.count
                golden.follow(spans: batch, facts: batch.requestFacts())
                if (bucket - start) % hour == hour - 10 * second {
                    sequence += 1
                    try golden.checkpoint(upTo: sequence)()
                }
            }
            try golden.rollUp()
        }
        // Give the allocator's free lists back to the system, so the figure is what stays held.
        trimAllocator()
        let resident = residentBytes() - residentBefore
        let bucketsHeld = golden.bucketsHeld
        print(String(format: "day of edges: %d edges, %d h of 10 s buckets, %d spans aggregated and written in %.1f s",
                     pairs.count, hours, spanCount, load.seconds))
        print("  series files: \(golden.seriesFiles.sorted { $0.key < $1.key }.map { "\($0.value) at \($0.key / second) s" }.joined(separator: ", "))")
        print("  series-buckets held in memory: \(bucketsHeld.map { "\($0.count) at \($0.width / second) s" }.joined(separator: ", "))")
        let total = bucketsHeld.reduce(0) { $0 + $1.count }
        // Memory freed by the aggregation part is reused here: run `--part query` alone for this figure.
        print(String(format: "  resident memory held for them (after malloc_trim): %.0f MiB, %.0f bytes per series-bucket", Double(resident) / 1048576,
                     Double(resident) / Double(max(1, total))))

        func timeQuery(_ name: String, _ window: ClosedRange<UInt64>) {
            var fastest = Double.infinity
            var answered = 0
            for _ in 0..<max(passes, 5) {
                let (p99s, measured) = Measurement.run {
                    golden.serviceGraph(in: window).edges.compactMap { $0.signals.latency.quantile(0.99) }
                }
                fastest = min(fastest, measured.seconds)
                answered = p99s.count
            }
            print(String(format: "  p99 per edge, %@: %.2f ms for %d edges (fastest of %d)", name, fastest * 1e3, answered, max(passes, 5)))
        }
        timeQuery("last \(hours) h on hour boundaries", start...(now - 1))
        timeQuery("last \(hours) h from an instant mid-bucket", (start + 1_234 * second + 5 * second)...(now - 1))
    }
}
