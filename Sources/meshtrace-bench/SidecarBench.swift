import ArgumentParser
import AsyncHTTPClient
import Foundation
import Hummingbird
import NIOCore
import Synchronization

/// What meshtrace-sidecar adds to a hop: the same requests at a fixed rate against a
/// small HTTP service directly and through a sidecar process (recording and
/// exporting a span per request to a running collector); latency percentiles of
/// both, and the sidecar's CPU and memory.
struct SidecarBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sidecar",
        abstract: "meshtrace-sidecar: added latency per hop at a fixed request rate, its CPU per 1,000 requests/s, its RSS.")

    @Option(help: "Requests per second.")
    var rate = 1000

    @Option(help: "Seconds of load for each of the two runs (after a warm-up of a tenth of it).")
    var seconds = 20

    @Option(help: "The sidecar's head sampling probability (0 records every span and exports none).")
    var sampling = 1.0

    mutating func run() async throws {
        let binaries = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()

        // The service: answers every request with a small body.
        let router = Router()
        router.get("**") { _, _ in "ok\n" }
        let bound = Mutex<Int?>(nil)
        let service = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in bound.withLock { $0 = channel.localAddress?.port ?? 0 } })
        let serviceTask = Task { try await service.runService() }
        var servicePort = 0
        while servicePort == 0 {
            try await Task.sleep(for: .milliseconds(10))
            servicePort = bound.withLock { $0 } ?? 0
        }

        let collector = try await BenchCollector.start(name: "sidecar")
        let sidecarPort = 26_006 + Int(getpid() % 1000)
        let sidecar = try Self.launch(binaries.appendingPathComponent("meshtrace-sidecar"), [
            "--service", "bench", "--app", "127.0.0.1:\(servicePort)", "--inbound", "127.0.0.1:\(sidecarPort)",
            "--outbound", "127.0.0.1:0", "--collector", collector.otlpHTTP, "--sampling", "\(sampling)"])
        defer {
            sidecar.terminate()
            sidecar.waitUntilExit()
            collector.stop()
            serviceTask.cancel()
        }
        try await Task.sleep(for: .seconds(2))

        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        let direct = try await load(client, url: "http://127.0.0.1:\(servicePort)/api/orders/17")
        let cpuBefore = Self.cpuSeconds(of: sidecar.processIdentifier)
        let proxied = try await load(client, url: "http://127.0.0.1:\(sidecarPort)/api/orders/17")
        let cpu = Self.cpuSeconds(of: sidecar.processIdentifier) - cpuBefore
        let memory = Self.memory(of: sidecar.processIdentifier)
        try await client.shutdown()
        // The sidecar sends its spans each second: what it recorded is in the collector by now.
        try await Task.sleep(for: .seconds(3))
        let stored = try await collector.storedSpans()

        func percentile(_ values: [Double], _ q: Double) -> Double { values[min(values.count - 1, Int(q * Double(values.count)))] }
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores; \(rate) requests/s for \(seconds) s each")
        for (name, values) in [("direct", direct.latencies), ("through the sidecar", proxied.latencies)] {
            print(String(format: "%@: %d requests, %d failed; latency p50 %.3f ms, p90 %.3f ms, p99 %.3f ms", name, values.count,
                         name == "direct" ? direct.failed : proxied.failed, percentile(values, 0.5), percentile(values, 0.9), percentile(values, 0.99)))
        }
        print(String(format: "added per hop: p50 %.3f ms, p99 %.3f ms",
                     percentile(proxied.latencies, 0.5) - percentile(direct.latencies, 0.5),
                     percentile(proxied.latencies, 0.99) - percentile(direct.latencies, 0.99)))
        print("collector stored \(stored) spans from the sidecar (it proxied \(proxied.latencies.count) measured requests after a warm-up)")
        print(String(format: "sidecar CPU: %.3f vCPU at %d requests/s (%.3f vCPU per 1,000 requests/s); RSS %.1f MB, peak %.1f MB "
            + "(anonymous %.1f MB; file-backed %.1f MB: code and libraries, shared by every process that maps them)",
                     cpu / Double(seconds), rate, cpu / Double(seconds) / (Double(rate) / 1000), memory.rss / 1e6, memory.peak / 1e6,
                     memory.anonymous / 1e6, memory.file / 1e6))
    }

    /// Sends `rate` requests per second for `seconds` (after a warm-up), each on its own schedule.
    private func load(_ client: HTTPClient, url: String) async throws -> (latencies: [Double], failed: Int) {
        let clock = ContinuousClock()
        let interval = Duration.nanoseconds(1_000_000_000 / Int64(rate))
        let warmUp = rate * seconds / 10
        let total = warmUp + rate * seconds
        let start = clock.now
        let results = try await withThrowingTaskGroup(of: (Int, Double?).self) { group in
            for index in 0..<total {
                let due = start + interval * index
                try await clock.sleep(until: due)
                group.addTask {
                    let began = clock.now
                    var request = HTTPClientRequest(url: url)
                    request.method = .GET
                    guard let response = try? await client.execute(request, timeout: .seconds(10)),
                          (try? await response.body.collect(upTo: 1 << 20)) != nil, response.status.code == 200
                    else { return (index, nil) }
                    let elapsed = began.duration(to: clock.now)
                    return (index, Double(elapsed.components.seconds) * 1e3 + Double(elapsed.components.attoseconds) / 1e15)
                }
            }
            var collected: [(Int, Double?)] = []
            for try await result in group { collected.append(result) }
            return collected
        }
        let measured = results.filter { $0.0 >= warmUp }
        return (measured.compactMap(\.1).sorted(), measured.filter { $0.1 == nil }.count)
    }

    static func launch(_ binary: URL, _ arguments: [String]) throws -> Process {
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// User plus system CPU seconds of process `pid`, from /proc.
    static func cpuSeconds(of pid: Int32) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // utime and stime are fields 14 and 15 of the line; 12 and 13 after the command.
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Resident, peak resident, anonymous and file-backed resident bytes of process `pid`, from /proc.
    static func memory(of pid: Int32) -> (rss: Double, peak: Double, anonymous: Double, file: Double) {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        func kilobytes(_ key: String) -> Double {
            status.split(separator: "\n").first { $0.hasPrefix(key) }
                .flatMap { $0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first }
                .flatMap { Double($0) }.map { $0 * 1024 } ?? 0
        }
        return (kilobytes("VmRSS:"), kilobytes("VmHWM:"), kilobytes("RssAnon:"), kilobytes("RssFile:"))
    }
}
