import ArgumentParser
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MeshIdentity
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization

/// What mTLS costs the collector: the same OTLP/gRPC export requests sent in
/// plaintext and over mTLS to one collector process in permissive mode (which takes
/// both on one port), its CPU per span for each; and connections set up per second
/// (TCP, or TCP and a TLS 1.3 handshake with a client certificate), with the
/// collector's CPU per connection.
struct TLSBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tls",
        abstract: "mTLS against plaintext: collector CPU per ingested span, and connections (handshakes) per second.")

    @Option(help: "Spans per measured run (each mode runs twice, alternating).")
    var spans = 200_000

    @Option(help: "Spans per export request.")
    var spansPerRequest = 512

    @Option(help: "Export requests in flight at once.")
    var concurrency = 4

    @Option(help: "Seconds of back-to-back connections per mode.")
    var handshakeSeconds = 5

    mutating func run() async throws {
        let binaries = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meshtrace-tls-bench-\(getpid())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }

        let ca = try DevCA.create(trustDomain: "bench.local", validFor: 86400)
        try ca.write(certificateFile: directory + "/ca.pem", keyFile: directory + "/ca-key.pem")
        var server = DevCA.Leaf(spiffeID: try SPIFFEID("spiffe://bench.local/meshtrace/collector"), validFor: 86400)
        server.dnsNames = ["localhost"]
        let serverCertificate = try ca.issue(server)
        try PEMFiles.write(certificate: serverCertificate.certificate, key: serverCertificate.key,
                           certificateFile: directory + "/collector.pem", keyFile: directory + "/collector-key.pem")
        // MeshSim's spans come from many services: the load generator's identity may claim any
        // (as an agent forwarding other workloads' spans would), so spans are labelled, not refused.
        let client = try ca.issue(DevCA.Leaf(spiffeID: try SPIFFEID("spiffe://bench.local/ns/mesh/sa/loadgen"), validFor: 86400))
        try PEMFiles.write(certificate: client.certificate, key: client.key,
                           certificateFile: directory + "/client.pem", keyFile: directory + "/client-key.pem")

        // Three collectors on the same corpus: TLS off (the baseline), permissive (plaintext
        // accepted and labelled), strict (mTLS, identity checked and recorded).
        let base = 24_317 + Int(getpid() % 1000) * 3
        var collectors: [(name: String, port: Int, process: Process, security: HTTP2ClientTransport.Posix.TransportSecurity)] = []
        defer {
            for collector in collectors {
                collector.process.terminate()
                collector.process.waitUntilExit()
            }
        }
        let mtls = HTTP2ClientTransport.Posix.TransportSecurity.mTLS(
            certificateChain: [.file(path: directory + "/client.pem", format: .pem)],
            privateKey: .file(path: directory + "/client-key.pem", format: .pem)
        ) { $0.trustRoots = .certificates([.file(path: directory + "/ca.pem", format: .pem)]) }
        for (offset, (name, mode, security)) in [
            ("plaintext, TLS off", "off", HTTP2ClientTransport.Posix.TransportSecurity.plaintext),
            ("plaintext, permissive", "permissive", .plaintext),
            ("mTLS, strict", "strict", mtls),
        ].enumerated() {
            let port = base + offset
            let process = try SidecarBench.launch(binaries.appendingPathComponent("meshtrace-collector"), [
                "--data-dir", directory + "/data-\(mode)", "--otlp-grpc", "127.0.0.1:\(port)", "--otlp-http", "off", "--zipkin", "off",
                "--query", "127.0.0.1:0", "--tls-dir", directory, "--tls-mode", mode,
                "--identity-bind", "ns/mesh/sa/loadgen => *"])
            collectors.append((name, port, process, security))
        }
        try await Task.sleep(for: .seconds(2))

        let (corpus, simulator, _) = simulatedCorpus(spans: spans, seed: 42, spansPerRequest: spansPerRequest)
        let requests: [[UInt8]] = try corpus.map { try $0.serializedBytes() }
        let spanCount = simulator.truth.spans
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores; \(spanCount) spans in \(requests.count) requests per run, \(concurrency) in flight")

        var cpuPerSpan: [String: [Double]] = [:]
        for round in 0..<3 {
            for collector in collectors {
                let before = SidecarBench.cpuSeconds(of: collector.process.processIdentifier)
                let clock = ContinuousClock()
                let started = clock.now
                try await send(requests, port: collector.port, security: collector.security)
                let elapsed = clock.now - started
                let cpu = SidecarBench.cpuSeconds(of: collector.process.processIdentifier) - before
                // The first round warms every collector up and is not counted.
                if round > 0 { cpuPerSpan[collector.name, default: []].append(cpu / Double(spanCount) * 1e6) }
                print(String(format: "round %d %@: collector CPU %.3f s, %.2f µs/span; %.0f spans/s", round, collector.name, cpu,
                             cpu / Double(spanCount) * 1e6, Double(spanCount) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)))
            }
        }
        let baseline = cpuPerSpan[collectors[0].name]!.min()!
        for collector in collectors {
            let best = cpuPerSpan[collector.name]!.min()!
            print(String(format: "ingest CPU per span, best of 2, %@: %.2f µs (%.2f× TLS off)", collector.name, best, best / baseline))
        }
        var tlsConfiguration = TLSConfiguration.makeClientConfiguration()
        tlsConfiguration.trustRoots = .file(directory + "/ca.pem")
        tlsConfiguration.certificateChain = try NIOSSLCertificate.fromPEMFile(directory + "/client.pem").map { .certificate($0) }
        tlsConfiguration.privateKey = .privateKey(try NIOSSLPrivateKey(file: directory + "/client-key.pem", format: .pem))
        tlsConfiguration.applicationProtocols = ["h2"]
        let context = try NIOSSLContext(configuration: tlsConfiguration)
        var rates: [String: (perSecond: Double, cpu: Double)] = [:]
        // Plaintext connections to the collector with TLS off, mTLS ones to the strict one.
        for (name, tls, target) in [("plaintext", nil, collectors[0]), ("mTLS", context, collectors[2])] as [(String, NIOSSLContext?, (name: String, port: Int, process: Process, security: HTTP2ClientTransport.Posix.TransportSecurity))] {
            let (port, collector) = (target.port, target.process)
            let before = SidecarBench.cpuSeconds(of: collector.processIdentifier)
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(handshakeSeconds)
            var connections = 0
            while clock.now < deadline {
                try await Self.connect(port: port, tls: tls)
                connections += 1
            }
            let cpu = SidecarBench.cpuSeconds(of: collector.processIdentifier) - before
            rates[name] = (Double(connections) / Double(handshakeSeconds), cpu / Double(connections) * 1e6)
            print(String(format: "%@ connections: %.0f/s back to back, collector CPU %.0f µs each", name,
                         Double(connections) / Double(handshakeSeconds), cpu / Double(connections) * 1e6))
        }
        print(String(format: "connection setup: mTLS handshakes %.2f× the plaintext rate; %.1f× the collector CPU per connection",
                     rates["mTLS"]!.perSecond / rates["plaintext"]!.perSecond, rates["mTLS"]!.cpu / rates["plaintext"]!.cpu))
    }

    /// Sends every request over one connection, `concurrency` at a time.
    private func send(_ requests: [[UInt8]], port: Int, security: HTTP2ClientTransport.Posix.TransportSecurity) async throws {
        let client = GRPCClient(transport: try .http2NIOPosix(
            target: .dns(host: "localhost", port: port), transportSecurity: security, config: .defaults))
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { try await client.runConnections() }
            let descriptor = MethodDescriptor(fullyQualifiedService: "opentelemetry.proto.collector.trace.v1.TraceService", method: "Export")
            let concurrency = self.concurrency
            try await withThrowingTaskGroup(of: Void.self) { senders in
                for sender in 0..<concurrency {
                    senders.addTask {
                        // Each sender takes every concurrency-th request.
                        for index in stride(from: sender, to: requests.count, by: concurrency) {
                            try await client.unary(
                                request: ClientRequest(message: requests[index]), descriptor: descriptor,
                                serializer: RawBytes(), deserializer: RawBytes(), options: .defaults) { _ = try $0.message }
                        }
                    }
                }
                try await senders.waitForAll()
            }
            client.beginGracefulShutdown()
        }
    }

    /// Opens a connection, sends HTTP/2's client preface, waits for the collector's
    /// SETTINGS (so the connection is ready for an export), and closes it.
    private static func connect(port: Int, tls: NIOSSLContext?) async throws {
        let answered = MultiThreadedEventLoopGroup.singleton.any().makePromise(of: Void.self)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: "localhost"))
                    }
                    try channel.pipeline.syncOperations.addHandler(PrefaceExchange(tls: tls != nil, answered: answered))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        try await answered.futureResult.get()
        try await channel.close().get()
    }
}

private final class PrefaceExchange: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let tls: Bool
    let answered: EventLoopPromise<Void>

    init(tls: Bool, answered: EventLoopPromise<Void>) {
        self.tls = tls
        self.answered = answered
    }

    private func sendPreface(_ context: ChannelHandlerContext) {
        var preface = ByteBuffer(string: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        preface.writeBytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
        context.writeAndFlush(wrapOutboundOut(preface), promise: nil)
    }

    func channelActive(context: ChannelHandlerContext) {
        if !tls { sendPreface(context) }
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event { sendPreface(context) }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        answered.succeed()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        answered.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        answered.fail(ChannelError.ioOnClosedChannel)
    }
}

private struct RawBytes: MessageSerializer, MessageDeserializer {
    func serialize<Bytes: GRPCContiguousBytes>(_ message: [UInt8]) throws -> Bytes { Bytes(message) }
    func deserialize<Bytes: GRPCContiguousBytes>(_ serialized: Bytes) throws -> [UInt8] { serialized.withUnsafeBytes { Array($0) } }
}
