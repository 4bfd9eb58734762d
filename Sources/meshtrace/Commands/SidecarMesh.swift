import AsyncHTTPClient
import Foundation
import HTTPTypes
import Logging
import Hummingbird
import MeshCore
import MeshExporter
import MeshSim
import NIOCore
import Synchronization

/// A small shop whose services are HTTP servers in this process, each behind its own
/// `meshtrace-sidecar` process: the spans come from the sidecars, as in a mesh.
/// A service answers after a log-normal delay, calls its downstreams through its
/// sidecar's outbound listener (passing on `traceparent` and `x-request-id`), and
/// fails a share of its answers with a 503.
struct SidecarMesh {
    struct Service {
        var name: String
        var calls: [(service: String, path: String)]
        /// Milliseconds: the median of its own work.
        var median: Double
    }

    static let services = [
        Service(name: "frontend", calls: [("catalog", "/api/products/17"), ("cart", "/api/cart")], median: 1.5),
        Service(name: "catalog", calls: [], median: 3),
        Service(name: "cart", calls: [("checkout", "/api/checkout")], median: 1),
        Service(name: "checkout", calls: [("payments", "/api/payments/charge"), ("inventory", "/api/stock/42")], median: 2),
        Service(name: "payments", calls: [], median: 6),
        Service(name: "inventory", calls: [], median: 1.5),
    ]

    struct Result {
        /// Calls between services as the services made them: requests, failures, client-side durations.
        var truth: GroundTruth
        var slowestTrace: TraceID
    }

    /// Runs the shop, sends it `rate` requests per second for `duration` seconds, and
    /// stops the sidecars (which send what they hold to the collector as they exit).
    static func run(rate: Int, duration: Double, errorRate: Double, seed: UInt64, collector: String, status: (String) -> Void) async throws -> Result {
        let sidecarBinary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("meshtrace-sidecar")
        guard FileManager.default.isExecutableFile(atPath: sidecarBinary.path) else {
            throw CLIFailure.server("--sidecars needs meshtrace-sidecar beside meshtrace (\(sidecarBinary.path)); swift build builds both")
        }
        var clientConfiguration = HTTPClient.Configuration()
        clientConfiguration.connectionPool.retryConnectionEstablishment = false
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)
        let shared = Shared(seed: seed)

        // The services, each on a free port.
        var servicePorts: [String: Int] = [:]
        var serverTasks: [Task<Void, any Error>] = []
        // The services stop by cancellation when the demo ends; that is not worth a log line.
        var logger = Logger(label: "meshtrace.demo.shop")
        logger.logLevel = .critical
        for service in services {
            let router = Router()
            let handler: @Sendable (Request, BasicRequestContext) async throws -> Response = { request, _ in
                let (delay, fails) = shared.generator.withLock { random in
                    (random.logNormal(median: service.median, sigma: 0.5), random.chance(errorRate))
                }
                try await Task.sleep(for: .microseconds(Int64(delay * 1000)))
                var status = fails ? 503 : 200
                let sidecar = shared.outbound.withLock { $0[service.name] } ?? ""
                for call in service.calls {
                    var outgoing = HTTPClientRequest(url: "http://\(sidecar)\(call.path)")
                    outgoing.headers.add(name: "Host", value: call.service)
                    for name in ["traceparent", "tracestate", "x-request-id"] {
                        if let value = request.headers[HTTPField.Name(name)!] { outgoing.headers.add(name: name, value: value) }
                    }
                    let began = ContinuousClock.now
                    let code = (try? await client.execute(outgoing, timeout: .seconds(10)))?.status.code ?? 503
                    let elapsed = began.duration(to: .now)
                    shared.truth.withLock {
                        $0.record(edge: .init(source: service.name, target: call.service),
                                  duration: UInt64(elapsed.components.seconds) * 1_000_000_000 + UInt64(elapsed.components.attoseconds / 1_000_000_000),
                                  failed: code >= 500)
                    }
                    if code >= 500 { status = 502 }
                }
                return Response(status: .init(code: status), body: ResponseBody(byteBuffer: ByteBuffer(string: "\(service.name)\n")))
            }
            // `**` matches every path but the root.
            router.get("/", use: handler)
            router.get("**", use: handler)
            let port = PortBox()
            let application = Application(
                router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                onServerRunning: { port.set($0.localAddress?.port ?? 0) }, logger: logger)
            serverTasks.append(Task { try await application.runService() })
            servicePorts[service.name] = try await port.wait()
        }

        // Their sidecars, callees first so that callers can route to them.
        var inbound: [String: String] = [:]
        var sidecars: [Process] = []
        defer {
            for task in serverTasks { task.cancel() }
        }
        for service in services.reversed() {
            var arguments = ["--service", service.name, "--app", "127.0.0.1:\(servicePorts[service.name]!)",
                             "--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0", "--collector", collector]
            for call in service.calls { arguments += ["--route", "\(call.service)=\(inbound[call.service]!)"] }
            let (process, addresses) = try startSidecar(sidecarBinary, arguments)
            sidecars.append(process)
            inbound[service.name] = addresses["inbound"]
            shared.outbound.withLock { $0[service.name] = addresses["outbound"] }
        }
        status("mesh: \(services.count) services, each behind a meshtrace-sidecar (frontend's inbound on \(inbound["frontend"]!))")

        // The load, entering at frontend's sidecar, each request with a trace of its own.
        let clock = ContinuousClock()
        let interval = Duration.nanoseconds(1_000_000_000 / Int64(max(1, rate)))
        let total = Int((Double(rate) * duration).rounded())
        let start = clock.now
        let entry = "http://\(inbound["frontend"]!)/"
        await withTaskGroup(of: Void.self) { group in
            for index in 0..<total {
                try? await clock.sleep(until: start + interval * index)
                let traceID = shared.generator.withLock { TraceID(high: $0.next() | 1, low: $0.next()) }
                let parent = TraceContext(traceID: traceID, spanID: SpanID(UInt64(index) + 1))
                group.addTask {
                    var request = HTTPClientRequest(url: entry)
                    request.headers.add(name: "traceparent", value: parent.traceparent)
                    let began = clock.now
                    _ = try? await client.execute(request, timeout: .seconds(10))
                    let elapsed = began.duration(to: clock.now)
                    shared.truth.withLock { $0.requests += 1 }
                    shared.slowest.withLock { if elapsed > $0.1 { $0 = (traceID, elapsed) } }
                }
            }
        }

        for process in sidecars { process.terminate() }
        for process in sidecars { process.waitUntilExit() }
        try? await client.shutdown()
        var counted = shared.truth.withLock { $0 }
        // Per request: one SERVER span at the entry, and a CLIENT and a SERVER span per call.
        counted.spans = counted.requests + 2 * counted.edges.values.reduce(0) { $0 + $1.requests }
        return Result(truth: counted, slowestTrace: shared.slowest.withLock { $0.0 })
    }

    private static func startSidecar(_ binary: URL, _ arguments: [String]) throws -> (Process, [String: String]) {
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        var addresses: [String: String] = [:]
        var buffer = ""
        while addresses.count < 2 {
            let chunk = output.fileHandleForReading.availableData
            guard !chunk.isEmpty else { throw CLIFailure.server("meshtrace-sidecar exited before it listened") }
            buffer += String(decoding: chunk, as: UTF8.self)
            for line in buffer.split(separator: "\n") where line.hasPrefix("meshtrace-sidecar: ") {
                let words = line.split(separator: " ")
                if words.count == 5 { addresses[String(words[1])] = String(words[4]) }
            }
        }
        return (process, addresses)
    }
}

/// What the shop's services and the load share across tasks.
private final class Shared: Sendable {
    let truth = Mutex(GroundTruth())
    /// Per service, its sidecar's outbound listener.
    let outbound = Mutex<[String: String]>([:])
    let generator: Mutex<SeededGenerator>
    /// The slowest request so far: its trace and how long it took.
    let slowest = Mutex<(TraceID, Duration)>((.zero, .zero))

    init(seed: UInt64) { generator = Mutex(SeededGenerator(seed: seed)) }
}

/// The port a server bound, handed from its start callback to the code waiting for it.
final class PortBox: Sendable {
    private let port = Mutex<Int?>(nil)

    func set(_ value: Int) { port.withLock { $0 = value } }

    func wait() async throws -> Int {
        while true {
            if let value = port.withLock({ $0 }) { return value }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}
