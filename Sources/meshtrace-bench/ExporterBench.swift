import ArgumentParser
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

    @Option(help: "Instead: record at --down-rate spans/s for this many seconds with no collector listening, and report memory.")
    var downSeconds = 0

    @Option(help: "Spans per second recorded while the collector is down.")
    var downRate = 10_000

    mutating func run() async throws {
        if downSeconds > 0 { return try await collectorDown() }
        var collector: Process?
        var target = endpoint
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meshtrace-exporter-bench-\(getpid())").path
        if target.isEmpty {
            let port = 24_318 + Int(getpid() % 1000)
            let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("meshtrace-collector")
            let process = Process()
            process.executableURL = binary
            process.arguments = ["--data-dir", directory, "--otlp-http", "127.0.0.1:\(port)", "--otlp-grpc", "off", "--zipkin", "off",
                                 "--query", "127.0.0.1:0"]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            collector = process
            target = "http://127.0.0.1:\(port)"
            try await Task.sleep(for: .seconds(2))
        }
        defer {
            collector?.terminate()
            collector?.waitUntilExit()
            try? FileManager.default.removeItem(atPath: directory)
        }

        var configuration = MeshExporter.Configuration(endpoint: target, serviceName: "frontend")
        configuration.flushInterval = .milliseconds(200)
        configuration.samplingProbability = probability
        switch compression {
        case "zstd": configuration.compression = .zstd
        case "none": configuration.compression = .none
        default: configuration.compression = .gzip
        }
        let exporter = try MeshExporter(configuration: configuration)

        // The spans a proxy would record: distinct ids, the same shapes of strings.
        var generator = SeededGenerator(seed: 42)
        let start = UInt64(Date().timeIntervalSince1970 * 1e9)
        let paths = (0..<64).map { "/api/orders/\($0 * 7919)" }
        var template = RequestSpan(
            traceID: .zero, spanID: .zero, name: "GET /api/orders/{id}", kind: .client, startTime: start, endTime: start + 2_000_000,
            httpStatus: 200, method: "GET", path: paths[0], peerService: "payments",
            upstreamCluster: "outbound|8080||payments.shop.svc.cluster.local", peerAddress: "10.0.3.7:8080", responseFlags: "-",
            requestID: "0b1f6e0c-5d7a-4c1e-9d55-3f6a1c2b9e77", userAgent: "envoy", requestBytes: 120, responseBytes: 2048, mutualTLS: true)

        var batchNanoseconds: [Double] = []
        var allocations: UInt64 = 0
        var recorded = 0
        let cpuBefore = Measurement.cpuTime()
        let began = ContinuousClock.now
        var recordingCPU = 0.0
        while recorded < spans {
            let count = min(batch, spans - recorded)
            var ids: [(TraceID, SpanID)] = []
            ids.reserveCapacity(count)
            for _ in 0..<count { ids.append((TraceID(high: generator.next(), low: generator.next()), SpanID(generator.next() | 1))) }
            let threadCPU = Self.threadCPU()
            let began = ContinuousClock.now
            meshtrace_count_allocations(1)
            let allocationsBefore = meshtrace_allocations()
            for (index, id) in ids.enumerated() {
                template.traceID = id.0
                template.spanID = id.1
                template.path = paths[index & 63]
                let (sampled, traceState) = exporter.decide(traceID: id.0, parent: nil)
                template.traceState = traceState
                exporter.record(template, exported: sampled)
            }
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
        var generator = SeededGenerator(seed: 7)
        let start = UInt64(Date().timeIntervalSince1970 * 1e9)
        var span = RequestSpan(
            traceID: .zero, spanID: .zero, name: "GET /api/orders/{id}", kind: .client, startTime: start, endTime: start + 2_000_000,
            httpStatus: 200, method: "GET", path: "/api/orders/17", peerService: "payments",
            upstreamCluster: "outbound|8080||payments.shop.svc.cluster.local", peerAddress: "10.0.3.7:8080", responseFlags: "-",
            requestID: "0b1f6e0c-5d7a-4c1e-9d55-3f6a1c2b9e77", userAgent: "envoy", requestBytes: 120, responseBytes: 2048, mutualTLS: true)
        let before = residentBytes()
        var peak = before
        var samples: [Int] = []
        let clock = ContinuousClock()
        let began = clock.now
        let perTick = max(1, downRate / 100)
        var tick = 0
        while clock.now - began < .seconds(downSeconds) {
            for _ in 0..<perTick {
                span.traceID = TraceID(high: generator.next(), low: generator.next())
                span.spanID = SpanID(generator.next() | 1)
                exporter.record(span)
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
