import ArgumentParser
import Foundation
import MeshCore
import MeshSim
import OTLPWire
import Sampling

/// `meshtrace-bench sampling`: the tail sampler's cost per span and its memory per open trace.
struct SamplingBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sampling",
        abstract: "Decision cost per span, and memory per open trace, of the tail sampler.")

    @Option(help: "MeshSim requests to replay (about 17 spans each).")
    var requests = 60_000

    @Option(help: "Traces held open at once for the memory figure (0: no memory figure).")
    var openTraces = 100_000

    @Option(help: "Passes over the traffic; the fastest counts.")
    var passes = 3

    func run() throws {
        print("CPU: \(cpuModel())")
        let traffic = MeshSim.arrivals(requests: requests, rate: 1_000, requestErrorRate: 0.01, seed: 42)
        let spans = traffic.reduce(0) { $0 + $1.batch.count }
        print("traffic: \(requests) MeshSim requests, \(spans) spans in \(traffic.count) batches (100 ms of traffic each)")

        // slow_for_edge reads live quantiles: it gets the traffic's own, as warmed-up golden signals would give.
        let policies: [(String, PolicyFile)] = [
            ("built-in policy", .builtIn()),
            ("probabilistic 1 % only (decided by trace id)", try PolicyFile.parse(
                yaml: "policies: [{name: p, type: probabilistic, probabilistic: {sampling_percentage: 1}}]", file: "bench")),
        ]
        let edges = Self.edges(traffic)
        // The facts the collector's decoder reads from each span as it decodes it.
        let facts = traffic.map { $0.batch.requestFacts() }
        let requests = try traffic.map { try $0.batch.exportRequestBytes() }
        for (name, policy) in policies {
            var fastest = Double.infinity
            var kept = 0
            for _ in 0..<passes {
                let sampler = TailSampler(policy: policy)
                sampler.update(edges: edges)
                var output = SpanBatch()
                let (_, measured) = Measurement.run {
                    for ((batch, at), facts) in zip(traffic, facts) { sampler.admit(batch, facts: facts, now: at, into: &output) }
                    sampler.releaseAll(now: .max, into: &output)
                }
                fastest = min(fastest, measured.cpuSeconds)
                kept = output.count
            }
            print(String(format: "%@: %.0f ns of CPU per span (fastest of %d), %d of %d spans kept (%.2f%%)",
                         name, fastest * 1e9 / Double(spans), passes, kept, spans, 100 * Double(kept) / Double(spans)))
            // As in the collector, where a request's spans reach the sampler right after
            // they are decoded (the loop above admits batches decoded long before, so each
            // arrives out of the cache): each decoded just before it is admitted, only the
            // sampler timed, on this thread's CPU clock (it runs on the calling thread).
            var fastestInPipeline = Double.infinity
            for _ in 0..<passes {
                let sampler = TailSampler(policy: policy)
                sampler.update(edges: edges)
                var output = SpanBatch()
                var sampling = 0.0
                for (bytes, (_, at)) in zip(requests, traffic) {
                    let export = try DecodedTraceExport(protobuf: bytes)
                    let before = ExporterBench.threadCPU()
                    sampler.admit(export.spans, facts: export.facts, now: at, into: &output)
                    sampling += ExporterBench.threadCPU() - before
                }
                let before = ExporterBench.threadCPU()
                sampler.releaseAll(now: .max, into: &output)
                sampling += ExporterBench.threadCPU() - before
                fastestInPipeline = min(fastestInPipeline, sampling)
                kept = output.count
            }
            print(String(format: "  right after each batch's decode, as in the collector: %.0f ns of CPU per span (fastest of %d), %d spans kept",
                         fastestInPipeline * 1e9 / Double(spans), passes, kept))
        }

        // Memory per open trace: hold traces undecided, then compare resident memory.
        guard openTraces > 0 else { return }
        let hold = try PolicyFile.parse(yaml: """
            decision_wait: 1h
            root_wait: 1h
            max_buffer_bytes: 16GiB
            num_traces: 100000000
            policies: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}]
            """, file: "bench")
        // Fresh traffic as the collector's decoder hands it over, referenced by nothing
        // but the sampler once admitted.
        var sampler: TailSampler? = TailSampler(policy: hold)
        var heldSpans = 0
        do {
            var output = SpanBatch()
            let requests = try MeshSim.arrivals(requests: openTraces, rate: 1_000, requestErrorRate: 0.01, seed: 7)
                .map { try $0.batch.exportRequestBytes() }
            trimAllocator()
            for bytes in requests {
                let export = try DecodedTraceExport(protobuf: bytes)
                heldSpans += export.spans.count
                sampler!.admit(export.spans, facts: export.facts, now: 1, into: &output)
            }
        }
        trimAllocator()
        let holding = residentBytes()
        let statistics = sampler!.statistics
        sampler = nil
        trimAllocator()
        let resident = holding - residentBytes()
        print(String(format: "open traces: %d traces (%d spans) held undecided: %.0f MiB resident, %.0f bytes per open trace (%.0f per span); the byte budget counted %.0f per trace",
                     statistics.openTraces, heldSpans, Double(resident) / 1048576, Double(resident) / Double(statistics.openTraces),
                     Double(resident) / Double(heldSpans), Double(statistics.heldBytes) / Double(statistics.openTraces)))
    }

    /// Each edge's p99 over `traffic`, read as the collector reads the golden signals'.
    static func edges(_ traffic: [(batch: SpanBatch, at: UInt64)]) -> EdgeKnowledge {
        EdgeLatencyHistograms.from(traffic.map(\.batch)).knowledge(quantiles: [0.99], minimumRequests: 100)
    }
}
