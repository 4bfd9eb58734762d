import ArgumentParser
import Foundation
import MeshSim
import OTLPWire

/// `meshtrace-bench`: measurements recorded in BENCHMARKS.md. Run in release mode.
@main
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meshtrace-bench",
        abstract: "Benchmarks of meshtrace; prints figures with their units.",
        subcommands: [StorageBench.self, DecodeBench.self, GoldenBench.self, SamplingBench.self, PipelineBench.self, QueryBench.self, ExporterBench.self, SidecarBench.self, TLSBench.self,
                      TransportFloorBench.self]
            + comparisons)

    #if SwiftOTelComparison
    static let comparisons: [any ParsableCommand.Type] = [ExporterComparisonBench.self]
    #else
    static let comparisons: [any ParsableCommand.Type] = []
    #endif
}

/// Wall-clock and CPU time of a piece of work.
struct Measurement {
    var seconds: Double
    var cpuSeconds: Double

    static func run<T>(_ work: () throws -> T) rethrows -> (T, Measurement) {
        let cpuBefore = cpuTime()
        let start = ContinuousClock.now
        let result = try work()
        let elapsed = start.duration(to: .now)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return (result, Measurement(seconds: seconds, cpuSeconds: cpuTime() - cpuBefore))
    }

    /// User plus system CPU time of this process, in seconds.
    static func cpuTime() -> Double {
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
            + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
    }
}

/// Resident set size of this process, in bytes.
func residentBytes() -> Int {
    let statm = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8)) ?? ""
    let pages = statm.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// Gives the allocator's free lists back to the system, so resident memory is what stays held.
func trimAllocator() {
    if let trim = dlsym(nil, "malloc_trim") {
        _ = unsafeBitCast(trim, to: (@convention(c) (Int) -> Int32).self)(0)
    }
}

/// The CPU model as /proc/cpuinfo names it.
func cpuModel() -> String {
    let info = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
    return info.split(separator: "\n").first { $0.hasPrefix("model name") }?
        .split(separator: ":").last?.trimmingCharacters(in: .whitespaces) ?? "unknown CPU"
}

/// At least `spans` spans of MeshSim traffic (1% errors), a millisecond apart, as
/// OTLP export requests of up to `spansPerRequest` spans (one per pod and batch of
/// 20,000 spans), with the simulator that made them and the time its next request
/// would start (nanoseconds since the Unix epoch).
func simulatedCorpus(spans: Int, seed: UInt64, spansPerRequest: Int = 512)
    -> (requests: [ExportTraceServiceRequest], simulator: MeshSim, next: UInt64)
{
    var simulator = MeshSim(configuration: MeshSim.Configuration(seed: seed, errorRate: 0.01))
    var requests: [ExportTraceServiceRequest] = []
    var pending: [MeshSim.EmittedSpan] = []
    var time: UInt64 = 1_767_225_600_000_000_000
    while simulator.truth.spans < spans {
        pending += simulator.request(at: time)
        time += 1_000_000
        if pending.count >= 20_000 {
            requests += simulator.exportRequests(pending, maxSpansPerRequest: spansPerRequest)
            pending = []
        }
    }
    return (requests + simulator.exportRequests(pending, maxSpansPerRequest: spansPerRequest), simulator, time)
}
