import ArgumentParser
import Foundation
import MeshCore
import MeshSim
import OTLPWire
import SwiftProtobuf

/// The direct OTLP decoder against swift-protobuf on the same MeshSim request bytes.
struct DecodeBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decode",
        abstract: "OTLP trace export requests decoded into columns: the direct decoder against swift-protobuf, on one thread.")

    @Option(help: "Spans in the corpus.")
    var spans = 1_000_000

    @Option(help: "Spans per export request (the OpenTelemetry SDKs' default batch is 512).")
    var spansPerRequest = 512

    @Option(help: "Timed passes over the corpus per decoder; the fastest is reported.")
    var passes = 3

    @Option(help: "MeshSim seed.")
    var seed: UInt64 = 42

    @Flag(help: "Time only the direct decoder (for profiling it).")
    var directOnly = false

    func run() throws {
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(cpuModel())")
        let (corpus, simulator, _) = simulatedCorpus(spans: spans, seed: seed, spansPerRequest: spansPerRequest)
        let requests: [[UInt8]] = try corpus.map { try $0.serializedBytes() }
        let emitted = simulator.truth.spans
        let bytes = requests.reduce(0) { $0 + $1.count }
        print("corpus: \(emitted) spans in \(requests.count) requests, \(bytes) bytes (\(String(format: "%.1f", Double(bytes) / Double(emitted))) B/span)")

        func report(_ name: String, _ work: () throws -> Int) rethrows -> Double {
            var best = Double.infinity
            for _ in 0..<passes {
                let (decoded, measured) = try Measurement.run(work)
                precondition(decoded == emitted, "\(name) decoded \(decoded) of \(emitted) spans")
                best = min(best, measured.cpuSeconds)
            }
            let spansPerSecond = Double(emitted) / best
            print(String(format: "%@: %.0f spans/s, %.1f MB/s per CPU-second (best of %d; %.3f µs/span)",
                         name, spansPerSecond, Double(bytes) / best / 1e6, passes, best / Double(emitted) * 1e6))
            return spansPerSecond
        }

        let direct = try report("direct decoder into SpanBatch") {
            var total = 0
            for request in requests { total += try DecodedTraceExport(protobuf: request).spans.count }
            return total
        }
        if directOnly { return }
        let messages = try report("swift-protobuf, messages only") {
            var total = 0
            for request in requests {
                total += try ExportTraceServiceRequest(serializedBytes: request).resourceSpans
                    .reduce(0) { $0 + $1.scopeSpans.reduce(0) { $0 + $1.spans.count } }
            }
            return total
        }
        let converted = try report("swift-protobuf, then into SpanBatch") {
            var total = 0
            for request in requests {
                var batch = SpanBatch()
                total += batch.append(try ExportTraceServiceRequest(serializedBytes: request)).accepted
            }
            return total
        }
        print(String(format: "direct decoder: %.2f× swift-protobuf messages alone, %.2f× swift-protobuf into SpanBatch",
                     direct / messages, direct / converted))
    }
}
