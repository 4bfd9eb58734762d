import ArgumentParser
import AsyncHTTPClient
import CAllocationCounter
import Foundation
import MeshCore
import MeshExporter
import MeshSim

/// What recording a span costs a proxy: MeshExporter's `record` timed in batches on
/// the request thread, its heap allocations counted, while the exporter sends to a
/// real collector in the background.
struct ExporterBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exporter",
        abstract: "MeshExporter: record cost and allocations per span, export CPU per span, against a running collector.")

    @Option(help: "Spans to record.")
    var spans = 1_000_000

    @Option(help: "Spans recorded back to back per timed batch; a pause lets the exporter drain between batches.")
    var batch = 256

    @Option(help: "OTLP/HTTP endpoint of a running collector (empty: start meshtrace-collector from this build).")
    var endpoint = ""

    @Option(help: "Head sampling probability.")
    var probability = 1.0

    @Option(help: "Body compression: gzip, zstd or none.")
    var compression = "gzip"

    @Flag(help: "Record the strings a proxy repeats (name, method, peer service, cluster, flags, user agent) by label.")
    var labels = false

    @Flag(help: "Time the loop without its record call (ids, the head sampler's decision): what the bench itself adds to the figure.")
    var withoutRecord = false

    @Option(help: "Instead: record at --down-rate spans/s for this many seconds with no collector listening, and report memory.")
    var downSeconds = 0

    @Option(help: "Spans per second recorded while the collector is down.")
    var downRate = 10_000

    mutating func run() async throws {
        if downSeconds > 0 { return try await collectorDown() }
        var collector: BenchCollector?
        var target = endpoint
        if target.isEmpty {
            let started = try await BenchCollector.start(name: "exporter")
            collector = started
            target = started.otlpHTTP
        }
        defer { collector?.stop() }

        var configuration = MeshExporter.Configuration(endpoint: target, serviceName: "frontend")
        configuration.flushInterval = .milliseconds(200)
        configuration.samplingProbability = probability
        switch compression {
        case "zstd": configuration.compression = .zstd
        case "none": configuration.compression = .none
        default: configuration.compression = .gzip
        }
        let exporter = try MeshExporter(configuration: configuration)
        var workload = SpanWorkload(seed: 42)
        if labels { workload.label(with: exporter) }

        var batchNanoseconds: [Double] = []
        var allocations: UInt64 = 0
        var recorded = 0
        let cpuBefore = Measurement.cpuTime()
        let began = ContinuousClock.now
        var recordingCPU = 0.0
        while recorded < spans {
            let count = min(batch, spans - recorded)
            let ids = workload.nextIDs(count)
            let threadCPU = Self.threadCPU()
            let began = ContinuousClock.now
            meshtrace_count_allocations(1)
            let allocationsBefore = meshtrace_allocations()
            workload.record(ids, into: exporter, calling: !withoutRecord)
            allocations += meshtrace_allocations() - allocationsBefore
            meshtrace_count_allocations(0)
            let elapsed = began.duration(to: .now)
            recordingCPU += Self.threadCPU() - threadCPU
            batchNanoseconds.append((Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9) / Double(count))
            recorded += count
            // A proxy records between requests: the next batch waits while a full export
            // batch is waiting, so what is timed is recording, not dropping.
            while exporter.pending >= 512 { try await Task.sleep(for: .milliseconds(1)) }
        }
        await exporter.flush()
        let cpu = Measurement.cpuTime() - cpuBefore
        let elapsed = began.duration(to: .now)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let statistics = exporter.statistics
        await exporter.shutdown()

        batchNanoseconds.sort()
        func percentile(_ q: Double) -> Double { batchNanoseconds[min(batchNanoseconds.count - 1, Int(q * Double(batchNanoseconds.count)))] }
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores")
        print("recorded \(statistics.recorded) spans, exported \(statistics.exported), sampled out \(statistics.sampledOut), "
            + "dropped (full) \(statistics.droppedBufferFull), dropped (export) \(statistics.droppedExportFailed), requests \(statistics.requests)")
        print(String(format: "record: median %.1f ns/span over batches of %d (p90 %.1f, p99 %.1f); %.4f heap allocations per span",
                     percentile(0.5), batch, percentile(0.9), percentile(0.99), Double(allocations) / Double(spans)))
        print(String(format: "CPU: recording thread %.1f ns/span; the rest of the process (encoding, %@, HTTP) %.0f ns per exported span",
                     recordingCPU / Double(spans) * 1e9, compression, (cpu - recordingCPU) / Double(max(1, statistics.exported)) * 1e9))
        print(String(format: "throughput: %.0f spans/s recorded and exported, closed loop", Double(statistics.exported) / seconds))
        if let error = statistics.lastError { print("last error: \(error)") }
    }

    /// Records at `downRate` for `downSeconds` towards a port nothing listens on: the
    /// exporter retries and drops; its memory must stay within its bound.
    private func collectorDown() async throws {
        var configuration = MeshExporter.Configuration(endpoint: "http://127.0.0.1:1", serviceName: "frontend")
        configuration.retry.initial = .milliseconds(200)
        configuration.retry.maximum = .seconds(2)
        let exporter = try MeshExporter(configuration: configuration)
        var workload = SpanWorkload(seed: 7)
        let before = residentBytes()
        var peak = before
        var samples: [Int] = []
        let clock = ContinuousClock()
        let began = clock.now
        let perTick = max(1, downRate / 100)
        var tick = 0
        while clock.now - began < .seconds(downSeconds) {
            for (index, id) in workload.nextIDs(perTick).enumerated() {
                workload.prepare(id, index: index)
                exporter.record(workload.span)
            }
            tick += 1
            if tick % 100 == 0 { peak = max(peak, residentBytes()) }
            if tick % 1000 == 0 { samples.append(residentBytes()) }
            try await clock.sleep(until: began + .milliseconds(10 * tick))
        }
        let statistics = exporter.statistics
        let after = residentBytes()
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores; no collector for \(downSeconds) s, \(downRate) spans/s recorded")
        print("recorded \(statistics.recorded), dropped (full) \(statistics.droppedBufferFull), retries \(statistics.retries), requests \(statistics.requests)")
        print(String(format: "RSS: %.1f MB before, %.1f MB after, %.1f MB peak (sampled each second); memory limit %.1f MB",
                     Double(before) / 1e6, Double(after) / 1e6, Double(max(peak, after)) / 1e6, Double(configuration.memoryLimit) / 1e6))
        print("RSS every 10 s (MB): " + samples.map { String(format: "%.1f", Double($0) / 1e6) }.joined(separator: ", "))
        if let error = statistics.lastError { print("last error: \(error)") }
        await exporter.shutdown()
    }

    /// CPU time of the calling thread, in seconds.
    static func threadCPU() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}

/// The spans the exporter benchmarks record: an Envoy-like CLIENT span (ten strings,
/// about 190 bytes of them), with distinct ids and one of 64 paths.
struct SpanWorkload {
    var span: RequestSpan
    /// The paths not in `span` now: `prepare` swaps one in, which moves the strings
    /// without retaining or releasing them, so a timed loop measures the exporter's
    /// calls rather than the bench replacing a string.
    private(set) var paths = (0..<64).map { "/api/orders/\($0 * 7919)" }
    private var generator: SeededGenerator

    init(seed: UInt64) {
        generator = SeededGenerator(seed: seed)
        let start = UInt64(Date().timeIntervalSince1970 * 1e9)
        span = RequestSpan(
            traceID: .zero, spanID: .zero, name: "GET /api/orders/{id}", kind: .client, startTime: start, endTime: start + 2_000_000,
            httpStatus: 200, method: "GET", path: "/api/orders/0", peerService: "payments",
            upstreamCluster: "outbound|8080||payments.shop.svc.cluster.local", peerAddress: "10.0.3.7:8080", responseFlags: "-",
            requestID: "0b1f6e0c-5d7a-4c1e-9d55-3f6a1c2b9e77", userAgent: "envoy", requestBytes: 120, responseBytes: 2048, mutualTLS: true)
    }

    /// Names the span's repeated strings by `exporter`'s labels instead of copying them.
    mutating func label(with exporter: MeshExporter) {
        span.labels = SpanLabels(
            name: exporter.label(span.name), method: exporter.label(span.method), peerService: exporter.label(span.peerService),
            upstreamCluster: exporter.label(span.upstreamCluster), responseFlags: exporter.label(span.responseFlags),
            userAgent: exporter.label(span.userAgent))
    }

    /// Records a span for each of `ids` as a proxy does: the head sampler's decision,
    /// then `record`. Synchronous, as a proxy's request path is (an async caller would
    /// keep the span in its task's frame and copy it out for every call). Without
    /// `calling`, everything but the `record` call, to time what the loop adds.
    @inline(never)
    mutating func record(_ ids: [(TraceID, SpanID)], into exporter: MeshExporter, calling: Bool = true) {
        for (index, id) in ids.enumerated() {
            prepare(id, index: index)
            let (sampled, traceState) = exporter.decide(traceID: id.0, parent: nil)
            // Only a trace state that changes is assigned (at probability 1 it stays empty).
            if !traceState.isEmpty || !span.traceState.isEmpty { span.traceState = traceState }
            if calling { exporter.record(span, exported: sampled) }
        }
    }

    /// Trace and span ids for the next `count` spans, drawn before the timed loop.
    mutating func nextIDs(_ count: Int) -> [(TraceID, SpanID)] {
        (0..<count).map { _ in (TraceID(high: generator.next(), low: generator.next()), SpanID(generator.next() | 1)) }
    }

    /// Sets `span` to the span with ids `id`, the `index`th of its batch.
    @inline(__always)
    mutating func prepare(_ id: (TraceID, SpanID), index: Int) {
        span.traceID = id.0
        span.spanID = id.1
        swap(&span.path, &paths[index & 63])
    }
}

/// A `meshtrace-collector` from the same build, on loopback ports of its own, storing
/// into a temporary directory; stopped (and the directory removed) by `stop`.
struct BenchCollector {
    let process: Process
    let directory: String
    let otlpHTTP: String
    let queryURL: String

    static func start(name: String, arguments: [String] = []) async throws -> BenchCollector {
        let binaries = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meshtrace-\(name)-bench-\(getpid())").path
        let port = 24_318 + Int(getpid() % 1000) * 2
        let process = try SidecarBench.launch(binaries.appendingPathComponent("meshtrace-collector"), [
            "--data-dir", directory, "--otlp-http", "127.0.0.1:\(port)", "--otlp-grpc", "off", "--zipkin", "off",
            "--query", "127.0.0.1:\(port + 1)"] + arguments)
        try await Task.sleep(for: .seconds(2))
        return BenchCollector(process: process, directory: directory, otlpHTTP: "http://127.0.0.1:\(port)",
                              queryURL: "http://127.0.0.1:\(port + 1)")
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Spans the collector stored from OTLP/HTTP requests, from its `/metrics`.
    func storedSpans() async throws -> Int {
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: queryURL + "/metrics"), timeout: .seconds(10))
        let text = String(buffer: try await response.body.collect(upTo: 16 << 20))
        let line = text.split(separator: "\n").first { $0.hasPrefix("meshtrace_receiver_spans_total{receiver=\"otlp_http\",outcome=\"stored\"}") }
        return line.flatMap { $0.split(separator: " ").last }.flatMap { Int($0) } ?? 0
    }
}
