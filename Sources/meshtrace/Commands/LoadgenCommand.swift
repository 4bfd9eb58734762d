import ArgumentParser
import AsyncHTTPClient
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import MeshCore
import MeshSim
import NIOCore
import OTLPWire
import Synchronization

/// `meshtrace loadgen`: drives MeshSim traffic at a collector over OTLP/gRPC or
/// OTLP/HTTP at a fixed span rate, and reports what was acknowledged and refused,
/// the rate reached, and request latency percentiles.
struct LoadgenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loadgen",
        abstract: "Send simulated mesh traffic to a collector and report throughput, refusals and latency.",
        discussion: """
            Requests are generated before the clock starts (MeshSim, one OTLP export request \
            per pod and batch of at most --spans-per-request spans), then sent on schedule to \
            average --rate spans per second, or as soon as a connection is free when the \
            collector is slower. \
            Refused requests (HTTP 429/503, gRPC RESOURCE_EXHAUSTED/UNAVAILABLE) are counted, \
            not retried. More traffic than 1,000,000 spans is sent again from the start.
            """)

    enum Transport: String, ExpressibleByArgument, CaseIterable {
        case grpc
        case http
    }

    @Option(help: "The collector: http://host:port of its OTLP/HTTP or OTLP/gRPC listener.")
    var target: String

    @Option(name: .customLong("protocol"), help: "grpc or http.")
    var transport: Transport = .grpc

    @Option(help: "Spans per second to send.")
    var rate = 10_000

    @Option(help: "How long to send, e.g. 10s or 2m.")
    var duration = "10s"

    @Option(help: "Concurrent connections (gRPC) or requests in flight (HTTP).")
    var connections = 4

    @Option(help: "Spans per export request.")
    var spansPerRequest = 200

    @Option(help: "MeshSim seed.")
    var seed: UInt64 = 42

    @Option(name: .shortAndLong, help: "table or json.")
    var output: OutputFormat = .table

    func validate() throws {
        guard rate > 0, connections > 0, connections <= 1024, spansPerRequest > 0 else {
            throw ValidationError("--rate, --connections (at most 1024) and --spans-per-request must be positive")
        }
        guard let nanoseconds = DurationText.nanoseconds(duration), nanoseconds > 0 else {
            throw ValidationError("--duration must be a duration like 10s or 2m, got \(duration)")
        }
        guard URL(string: target)?.host != nil else { throw ValidationError("--target must be http://host:port, got \(target)") }
    }

    /// What happened to the requests sent.
    struct Report: Encodable {
        var requests = 0
        var spansSent = 0
        var spansAcknowledged = 0
        var spansRejected = 0
        var requestsRefused = 0
        var requestsFailed = 0
        var seconds = 0.0
        var latenciesMilliseconds: [Double] = []
        var firstFailure: String?

        enum CodingKeys: String, CodingKey {
            case requests, spansSent = "spans_sent", spansAcknowledged = "spans_acknowledged", spansRejected = "spans_rejected"
            case requestsRefused = "requests_refused", requestsFailed = "requests_failed", seconds
            case spansPerSecond = "spans_per_second", acknowledgedPerSecond = "acknowledged_spans_per_second"
            case latency = "latency_ms", firstFailure = "first_failure"
        }

        /// The nearest-rank percentile (`q` in 0…1) of the latencies.
        func percentile(_ q: Double) -> Double {
            let sorted = latenciesMilliseconds.sorted()
            guard !sorted.isEmpty else { return 0 }
            let rank = Int((q * Double(sorted.count)).rounded(.up))
            return sorted[min(max(rank, 1), sorted.count) - 1]
        }

        func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(requests, forKey: .requests)
            try container.encode(spansSent, forKey: .spansSent)
            try container.encode(spansAcknowledged, forKey: .spansAcknowledged)
            try container.encode(spansRejected, forKey: .spansRejected)
            try container.encode(requestsRefused, forKey: .requestsRefused)
            try container.encode(requestsFailed, forKey: .requestsFailed)
            try container.encode(seconds, forKey: .seconds)
            try container.encode(seconds > 0 ? Double(spansSent) / seconds : 0, forKey: .spansPerSecond)
            try container.encode(seconds > 0 ? Double(spansAcknowledged) / seconds : 0, forKey: .acknowledgedPerSecond)
            try container.encode(["p50": percentile(0.5), "p90": percentile(0.9), "p99": percentile(0.99),
                                  "max": latenciesMilliseconds.max() ?? 0], forKey: .latency)
            try container.encodeIfPresent(firstFailure, forKey: .firstFailure)
        }
    }

    /// How one request ended.
    enum Outcome {
        case acknowledged(rejected: Int)
        case refused
        case failed(String)
    }

    func run() async throws {
        let seconds = Double(DurationText.nanoseconds(duration)!) / 1e9
        let wanted = min(1_000_000, max(spansPerRequest, Int(Double(rate) * seconds)))
        let requests = try Self.traffic(spans: wanted, perRequest: spansPerRequest, seed: seed)
        let clock = ContinuousClock()
        // Requests hold a pod's spans, so some are smaller than --spans-per-request.
        let averageSpans = Double(requests.reduce(0) { $0 + $1.1 }) / Double(requests.count)
        let schedule = Schedule(start: clock.now, seconds: seconds, interval: averageSpans / Double(rate))
        let start = schedule.start

        switch transport {
        case .http:
            let url = target.trimmingSuffix("/") + "/v1/traces"
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<connections {
                    group.addTask {
                        await schedule.drive(requests, clock: clock) { await Self.postHTTP(url: url, body: $0) }
                    }
                }
            }
        case .grpc:
            let url = URL(string: target)!
            try await withThrowingTaskGroup(of: Void.self) { group in
                var clients: [GRPCClient<HTTP2ClientTransport.Posix>] = []
                for _ in 0..<connections {
                    let client = GRPCClient(transport: try .http2NIOPosix(
                        target: .ipv4(address: url.host!, port: url.port ?? 4317), transportSecurity: .plaintext))
                    clients.append(client)
                    group.addTask { try await client.runConnections() }
                }
                await withTaskGroup(of: Void.self) { senders in
                    for client in clients {
                        senders.addTask {
                            await schedule.drive(requests, clock: clock) { await Self.exportGRPC(client: client, body: $0) }
                        }
                    }
                }
                for client in clients { client.beginGracefulShutdown() }
                try await group.waitForAll()
            }
        }

        var final = schedule.report.withLock { $0 }
        let elapsed = start.duration(to: clock.now)
        final.seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        switch output {
        case .json:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(final), as: UTF8.self))
        case .table:
            print(String(format: "sent         %d spans in %d requests over %.1f s: %.0f spans/s (asked for %d)",
                         final.spansSent, final.requests, final.seconds, Double(final.spansSent) / max(final.seconds, 1e-9), rate))
            print(String(format: "acknowledged %d spans (%.0f spans/s), %d rejected one by one",
                         final.spansAcknowledged, Double(final.spansAcknowledged) / max(final.seconds, 1e-9), final.spansRejected))
            print("refused      \(final.requestsRefused) requests; failed \(final.requestsFailed)" + (final.firstFailure.map { " (first: \($0))" } ?? ""))
            print(String(format: "latency      p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms",
                         final.percentile(0.5), final.percentile(0.9), final.percentile(0.99), final.latenciesMilliseconds.max() ?? 0))
        }
        if final.requestsFailed > 0 && final.spansAcknowledged == 0 { throw ExitCode(2) }
    }

    /// MeshSim traffic as serialized export requests of up to `perRequest` spans each,
    /// in the order sidecars send them: a pod's batch leaves when full or a second
    /// (simulated) after its first span ended, so a trace's spans arrive close together.
    private static func traffic(spans: Int, perRequest: Int, seed: UInt64) throws -> [([UInt8], Int)] {
        var simulator = MeshSim(configuration: MeshSim.Configuration(seed: seed))
        var emitted: [MeshSim.EmittedSpan] = []
        var time = UInt64(Date().timeIntervalSince1970 * 1e9)
        while emitted.count < spans {
            emitted += simulator.request(at: time)
            time += 1_000_000
        }
        return try simulator.proxyExports(emitted, maxSpansPerRequest: perRequest).map { request in
            (try request.serializedBytes(), request.resourceSpans.reduce(0) { $0 + $1.scopeSpans.reduce(0) { $0 + $1.spans.count } })
        }
    }

    private static func postHTTP(url: String, body: [UInt8]) async -> Outcome {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-protobuf")
        request.body = .bytes(ByteBuffer(bytes: body))
        do {
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
            let bytes = try await response.body.collect(upTo: 1 << 20)
            switch response.status.code {
            case 200:
                let answer = try? ExportTraceServiceResponse(serializedBytes: Array(bytes.readableBytesView))
                return .acknowledged(rejected: Int(answer?.partialSuccess.rejectedSpans ?? 0))
            case 429, 503: return .refused
            default: return .failed("HTTP \(response.status.code)")
            }
        } catch {
            return .failed("\(error)")
        }
    }

    private static func exportGRPC(client: GRPCClient<HTTP2ClientTransport.Posix>, body: [UInt8]) async -> Outcome {
        do {
            let answer = try await client.unary(
                request: ClientRequest(message: body),
                descriptor: Opentelemetry_Proto_Collector_Trace_V1_TraceService.Method.Export.descriptor,
                serializer: SerializedBytes(),
                deserializer: ProtobufDeserializer<ExportTraceServiceResponse>(),
                options: .defaults
            ) { response in try response.message }
            return .acknowledged(rejected: Int(answer.partialSuccess.rejectedSpans))
        } catch let error as RPCError where error.code == .resourceExhausted || error.code == .unavailable {
            return .refused
        } catch {
            return .failed("\(error)")
        }
    }
}

/// When each request leaves, and what came back.
private final class Schedule: Sendable {
    let start: ContinuousClock.Instant
    let end: ContinuousClock.Instant
    /// Seconds between requests.
    let interval: Double
    let report = Mutex(LoadgenCommand.Report())
    private let next = Mutex(0)

    init(start: ContinuousClock.Instant, seconds: Double, interval: Double) {
        self.start = start
        end = start + .nanoseconds(Int64(seconds * 1e9))
        self.interval = interval
    }

    /// Sends requests (serialized bytes and span count) as they fall due, until the time is up.
    func drive(
        _ requests: [([UInt8], Int)], clock: ContinuousClock, send: @Sendable ([UInt8]) async -> LoadgenCommand.Outcome
    ) async {
        while let (index, due) = take() {
            try? await Task.sleep(until: due, clock: clock)
            let (bytes, spans) = requests[index % requests.count]
            let sent = clock.now
            let outcome = await send(bytes)
            record(outcome, spans: spans, latency: sent.duration(to: clock.now))
        }
    }

    /// The next request to send and when, or nil once the time is up.
    private func take() -> (index: Int, due: ContinuousClock.Instant)? {
        let index = next.withLock { value in
            defer { value += 1 }
            return value
        }
        let due = start + .nanoseconds(Int64(Double(index) * interval * 1e9))
        return due < end ? (index, due) : nil
    }

    private func record(_ outcome: LoadgenCommand.Outcome, spans: Int, latency: Duration) {
        report.withLock { report in
            report.requests += 1
            report.spansSent += spans
            report.latenciesMilliseconds.append(Double(latency.components.seconds) * 1000 + Double(latency.components.attoseconds) / 1e15)
            switch outcome {
            case .acknowledged(let rejected):
                report.spansAcknowledged += spans - rejected
                report.spansRejected += rejected
            case .refused: report.requestsRefused += 1
            case .failed(let reason):
                report.requestsFailed += 1
                if report.firstFailure == nil { report.firstFailure = reason }
            }
        }
    }
}

/// Sends bytes that are already a serialized message.
private struct SerializedBytes: MessageSerializer {
    func serialize<Bytes: GRPCContiguousBytes>(_ message: [UInt8]) throws -> Bytes {
        Bytes(message)
    }
}
