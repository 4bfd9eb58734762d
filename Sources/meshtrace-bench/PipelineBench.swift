import ArgumentParser
import Foundation
import GoldenSignals
import MeshCore
import OTLPWire
import Sampling
import SegmentStore
import Synchronization

/// `meshtrace-bench pipeline`: what the collector does with a decoded request — WAL
/// record, golden signals, tail sampler, head block, group commit — driven by many
/// threads at once, with the per-trace work in one shard and in several.
struct PipelineBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipeline",
        abstract: "Spans per second through the store's append (WAL, golden signals, tail sampler) from many threads, by shard count.")

    @Option(help: "MeshSim spans, decoded before timing.")
    var spans = 600_000

    @Option(help: "Spans per request.")
    var spansPerRequest = 200

    @Option(help: "Threads appending at once (the collector runs requests on a pool of 32).")
    var threads = 32

    @Option(parsing: .upToNextOption, help: "Shard counts to compare, run alternately.")
    var shards: [Int] = [1, 2]

    @Option(help: "Rounds over the shard counts.")
    var rounds = 3

    @Option(help: "Time the WAL waits between syncs, milliseconds (0: one sync per group of requests).")
    var walSyncMilliseconds = 10

    @Option(help: "Working directory (emptied first).")
    var directory = "/tmp/meshtrace-bench-pipeline"

    func run() throws {
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(cpuModel())")
        let (requests, _, _) = simulatedCorpus(spans: spans, seed: 42, spansPerRequest: spansPerRequest)
        let exports = try requests.map { try DecodedTraceExport(protobuf: try $0.serializedBytes()) }
        let total = exports.reduce(0) { $0 + $1.spans.count }
        print("corpus: \(total) spans in \(exports.count) requests; \(threads) threads; WAL sync every \(walSyncMilliseconds) ms; built-in sampling policy")
        for round in 1...rounds {
            for count in shards {
                let measured = try pass(exports, shards: count)
                print(String(format: "round %d, %d shard(s): %.0f spans/s, %.2f µs of CPU per span, %.2f s",
                             round, count, Double(total) / measured.seconds, measured.cpuSeconds * 1e6 / Double(total), measured.seconds))
            }
        }
    }

    private func pass(_ exports: [DecodedTraceExport], shards: Int) throws -> Measurement {
        try? FileManager.default.removeItem(atPath: directory)
        var series = GoldenSignals.Configuration(directory: directory + "/series")
        series.shards = shards
        let golden = try GoldenSignals(configuration: series)
        var configuration = SpanStore.Configuration(dataDirectory: directory)
        configuration.walSyncInterval = .milliseconds(walSyncMilliseconds)
        let store = try SpanStore(configuration: configuration, follower: golden, admission: TailSampler(policy: .builtIn(), shards: shards))
        let next = Mutex(0)
        let failures = Mutex(0)
        let (_, measured) = Measurement.run {
            let done = DispatchGroup()
            for _ in 0..<threads {
                done.enter()
                Thread.detachNewThread {
                    defer { done.leave() }
                    while true {
                        let index = next.withLock { index in
                            defer { index += 1 }
                            return index
                        }
                        guard index < exports.count else { return }
                        do { _ = try store.append(exports[index]) } catch { failures.withLock { $0 += 1 } }
                    }
                }
            }
            done.wait()
        }
        if failures.withLock({ $0 }) > 0 { throw ValidationError("\(failures.withLock { $0 }) appends failed") }
        return measured
    }
}
