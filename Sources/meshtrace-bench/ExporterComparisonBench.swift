#if SwiftOTelComparison
import ArgumentParser
import CAllocationCounter
import Foundation
import MeshCore
import MeshExporter
import OTel
import ServiceLifecycle
import Tracing

/// MeshExporter beside swift-otel's OTLP exporter in one run: the same Envoy-like
/// CLIENT spans recorded through each — MeshExporter's `record`, and
/// swift-distributed-tracing's `startSpan`, attributes, `end` on swift-otel's tracer
/// with its batch span processor — at the same pace, both exporting OTLP/HTTP
/// protobuf to one collector. Built only with the `SwiftOTelComparison` trait
/// (`swift build -c release --traits SwiftOTelComparison --product meshtrace-bench`).
struct ExporterComparisonBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exporter-compare",
        abstract: "MeshExporter against swift-otel: record cost and allocations per span, the same spans in one run.")

    @Option(help: "Spans each exporter records.")
    var spans = 300_000

    @Option(help: "Spans recorded back to back per timed batch.")
    var batch = 256

    @Option(help: "Spans per second: batches are paced so that neither exporter's queue fills.")
    var rate = 20_000

    mutating func run() async throws {
        let collector = try await BenchCollector.start(name: "exporter-compare")
        defer { collector.stop() }

        // MeshExporter.
        var configuration = MeshExporter.Configuration(endpoint: collector.otlpHTTP, serviceName: "frontend")
        configuration.flushInterval = .milliseconds(200)
        let exporter = try MeshExporter(configuration: configuration)
        let mesh = try await pace(seed: 42) { workload, id, index in
            workload.prepare(id, index: index)
            let (sampled, traceState) = exporter.decide(traceID: id.0, parent: nil)
            workload.span.traceState = traceState
            exporter.record(workload.span, exported: sampled)
        }
        await exporter.flush()
        let meshStatistics = exporter.statistics
        await exporter.shutdown()

        // swift-otel, through swift-distributed-tracing.
        var otel = OTel.Configuration.default
        otel.serviceName = "frontend"
        otel.logs.enabled = false
        otel.metrics.enabled = false
        otel.diagnosticLogLevel = .error
        otel.traces.sampler = .alwaysOn
        otel.traces.batchSpanProcessor.scheduleDelay = .milliseconds(200)
        otel.traces.otlpExporter.endpoint = collector.otlpHTTP + "/v1/traces"
        otel.traces.otlpExporter.protocol = .httpProtobuf
        let backend = try OTel.makeTracingBackend(configuration: otel)
        let tracer = backend.factory
        let service = Task { try await backend.service.run() }
        let swiftOTel = try await pace(seed: 42) { workload, id, index in
            // The tracer draws its own ids; the rest of the span is the same.
            let template = workload.span
            let span = tracer.startSpan(template.name, context: ServiceContext.topLevel, ofKind: .client)
            // One update for all twelve attributes: the span's lock is taken once.
            span.updateAttributes { attributes in
                attributes["http.request.method"] = template.method
                attributes["url.path"] = workload.paths[index & 63]
                attributes["http.response.status_code"] = Int(template.httpStatus)
                attributes["peer.service"] = template.peerService
                attributes["upstream_cluster"] = template.upstreamCluster
                attributes["peer.address"] = template.peerAddress
                attributes["response_flags"] = template.responseFlags
                attributes["guid:x-request-id"] = template.requestID
                attributes["user_agent.original"] = template.userAgent
                attributes["http.request.body.size"] = Int(template.requestBytes)
                attributes["http.response.body.size"] = Int(template.responseBytes)
                attributes["connection_security_policy"] = "mutual_tls"
            }
            span.end()
        }
        try await Task.sleep(for: .seconds(2))
        service.cancel()
        _ = await service.result

        let stored = try await collector.storedSpans()
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores; \(spans) spans through each exporter at \(rate) spans/s, "
            + "batches of \(batch)")
        print("MeshExporter: recorded \(meshStatistics.recorded), exported \(meshStatistics.exported), dropped \(meshStatistics.droppedBufferFull)")
        print("swift-otel: \(stored - Int(meshStatistics.exported)) of \(spans) reached the collector (its batch span processor drops when its queue is full)")
        for (name, result) in [("MeshExporter", mesh), ("swift-otel", swiftOTel)] {
            print(String(format: "%@: record median %.1f ns/span (p90 %.1f, p99 %.1f); %.4f heap allocations per span; "
                + "whole process %.0f ns CPU per span", name, result.median, result.p90, result.p99, result.allocations, result.cpuPerSpan))
        }
        print(String(format: "ratio swift-otel / MeshExporter: record %.1f×, process CPU %.1f×; allocations per span %.2f against %.4f",
                     swiftOTel.median / mesh.median, swiftOTel.cpuPerSpan / mesh.cpuPerSpan, swiftOTel.allocations, mesh.allocations))
    }

    struct Result {
        var median: Double
        var p90: Double
        var p99: Double
        var allocations: Double
        var cpuPerSpan: Double
    }

    /// Runs `body` for `spans` spans, timed in batches paced at `rate`.
    private func pace(seed: UInt64, _ body: (inout SpanWorkload, (TraceID, SpanID), Int) -> Void) async throws -> Result {
        var workload = SpanWorkload(seed: seed)
        let clock = ContinuousClock()
        let interval = Duration.nanoseconds(Int64(1e9 * Double(batch) / Double(rate)))
        var perSpan: [Double] = []
        var allocations: UInt64 = 0
        let cpuBefore = Measurement.cpuTime()
        let start = clock.now
        var index = 0
        var batches = 0
        while index < spans {
            let end = min(index + batch, spans)
            let ids = workload.nextIDs(end - index)
            let began = clock.now
            meshtrace_count_allocations(1)
            let allocationsBefore = meshtrace_allocations()
            for (offset, id) in ids.enumerated() { body(&workload, id, offset) }
            allocations += meshtrace_allocations() - allocationsBefore
            meshtrace_count_allocations(0)
            let elapsed = began.duration(to: clock.now)
            perSpan.append((Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9) / Double(end - index))
            index = end
            batches += 1
            try await clock.sleep(until: start + interval * batches)
        }
        let cpu = Measurement.cpuTime() - cpuBefore
        perSpan.sort()
        func percentile(_ q: Double) -> Double { perSpan[min(perSpan.count - 1, Int(q * Double(perSpan.count)))] }
        return Result(median: percentile(0.5), p90: percentile(0.9), p99: percentile(0.99),
                      allocations: Double(allocations) / Double(spans), cpuPerSpan: cpu / Double(spans) * 1e9)
    }
}
#endif
