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
        var simulator = MeshSim(configuration: MeshSim.Configuration(seed: seed, errorRate: 0.01))
        var requests: [[UInt8]] = []
        var pending: [MeshSim.EmittedSpan] = []
        var emitted = 0
        var time: UInt64 = 1_767_225_600_000_000_000
        while emitted < spans {
            let next = simulator.request(at: time)
            time += 1_000_000
            emitted += next.count
            pending += next
            if pending.count >= 20_000 || emitted >= spans {
                for request in simulator.exportRequests(pending, maxSpansPerRequest: spansPerRequest) {
                    requests.append(try request.serializedBytes())
                }
                pending = []
            }
        }
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
