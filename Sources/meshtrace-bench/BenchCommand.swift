import ArgumentParser
import Foundation

/// `meshtrace-bench`: measurements recorded in BENCHMARKS.md. Run in release mode.
@main
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meshtrace-bench",
        abstract: "Benchmarks of meshtrace; prints figures with their units.",
        subcommands: [StorageBench.self, DecodeBench.self])
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

/// The CPU model as /proc/cpuinfo names it.
func cpuModel() -> String {
    let info = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
    return info.split(separator: "\n").first { $0.hasPrefix("model name") }?
        .split(separator: ":").last?.trimmingCharacters(in: .whitespaces) ?? "unknown CPU"
}
