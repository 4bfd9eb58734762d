import ArgumentParser
import Logging
import MeshCore
import MeshExporter
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `meshtrace-sidecar`: a reference HTTP/1.1 proxy beside one workload, recording a
/// span of every request through MeshExporter, as a mesh proxy does.
///
/// - Inbound (`--inbound`): requests to the workload. Records a SERVER span that
///   continues the caller's W3C (or B3) context, or starts a trace, and forwards
///   the request to `--app` with `traceparent` naming that span.
/// - Outbound (`--outbound`): requests from the workload to other services, named
///   by their `Host` header and routed by `--route NAME=HOST:PORT` (another
///   sidecar's inbound). Records a CLIENT span, child of the `traceparent` the
///   workload passed on, and forwards with `traceparent` naming the CLIENT span.
///
/// Spans carry Envoy's attributes: method, path, status code, `upstream_cluster`,
/// `peer.address`, `peer.service`, `response_flags` (`UF` when the upstream could not
/// be reached, `UC` when it closed the connection before answering, `UT` when it did
/// not answer in time, `NR` when no route names the host, `DC` when the downstream
/// went away first, `-` otherwise), request id, sizes.
///
/// The proxy is SwiftNIO alone: requests and responses stream through on the
/// downstream connection's event loop (`--threads` of them), with an upstream
/// connection per downstream connection, kept while requests go to the same place.
@main
struct SidecarCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meshtrace-sidecar",
        abstract: "A reference HTTP/1.1 sidecar proxy that records a span per request through MeshExporter.")

    @Option(help: "service.name of the workload beside it.")
    var service: String

    @Option(help: "Where the workload listens (HOST:PORT).")
    var app: String

    @Option(help: "Inbound listener (HOST:PORT; port 0 picks one).")
    var inbound = "127.0.0.1:15006"

    @Option(help: "Outbound listener the workload sends to (HOST:PORT; port 0 picks one).")
    var outbound = "127.0.0.1:15001"

    @Option(name: .customLong("route"), help: "Outbound route NAME=HOST:PORT: requests with Host NAME go there (repeatable).")
    var routes: [String] = []

    @Option(help: "The collector's OTLP endpoint.")
    var collector = "http://127.0.0.1:4318"

    @Option(help: "OTLP transport: http or grpc.")
    var transport = "http"

    @Option(help: "Head sampling probability of traces that start here.")
    var sampling = 1.0

    @Option(help: "k8s.namespace.name of the workload.")
    var namespace = "default"

    @Option(help: "Event loop threads that proxy requests.")
    var threads = 1

    @Option(help: "Bytes the exporter may hold (spans waiting and the request in flight).")
    var exporterMemory = 4 << 20

    @Option(help: "Seconds an upstream may take to answer a request (504, response flag UT, after that).")
    var upstreamTimeout = 30

    @Option(help: "CA bundle (PEM) that signs the collector's certificate; turns on TLS to the collector.")
    var tlsCa: String?

    @Option(help: "This workload's certificate (PEM, its SPIFFE ID as URI SAN) for mTLS to the collector; reloaded when it changes.")
    var tlsCert: String?

    @Option(help: "The key of --tls-cert (PEM).")
    var tlsKey: String?

    mutating func validate() throws {
        guard (1...64).contains(threads) else { throw ValidationError("--threads \(threads): expected 1 to 64") }
        guard upstreamTimeout > 0 else { throw ValidationError("--upstream-timeout \(upstreamTimeout): expected seconds above 0") }
        if tlsCa == nil && (tlsCert != nil || tlsKey != nil) {
            throw ValidationError("--tls-cert and --tls-key need --tls-ca, the CA that signs the collector's certificate")
        }
    }

    mutating func run() async throws {
        let appAddress = try Self.address(app, option: "--app")
        let inboundAddress = try Self.address(inbound, option: "--inbound")
        let outboundAddress = try Self.address(outbound, option: "--outbound")
        var routeTable: [String: Upstream] = [:]
        for route in routes {
            let parts = route.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { throw ValidationError("--route \(route): expected NAME=HOST:PORT") }
            let name = String(parts[0]).lowercased()
            let target = try Self.address(String(parts[1]), option: "--route \(route)")
            routeTable[name] = Upstream(
                name: target.text, address: target.socket, kind: .client, peerService: name,
                cluster: "outbound|\(target.socket.port ?? 0)||\(name)")
        }

        var configuration = MeshExporter.Configuration(
            endpoint: collector, transport: transport == "grpc" ? .grpc : .http, serviceName: service)
        configuration.resourceAttributes = [("k8s.namespace.name", namespace), ("k8s.pod.name", "\(service)-\(getpid())")]
        configuration.samplingProbability = sampling
        configuration.memoryLimit = exporterMemory
        if let tlsCa { configuration.tls = ClientTLS(trustBundleFile: tlsCa, certificateFile: tlsCert, keyFile: tlsKey) }
        let exporter = try MeshExporter(configuration: configuration)

        let application = Upstream(
            name: appAddress.text, address: appAddress.socket, kind: .server, peerService: "",
            cluster: "inbound|\(appAddress.socket.port ?? 0)||")
        let timeout = TimeAmount.seconds(Int64(upstreamTimeout))
        let routed = routeTable
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let listeners = Listeners(group: group, listeners: [
            ("inbound", inboundAddress.socket,
             ProxyRules(exporter: exporter, route: { _ in application }, upstreamTimeout: timeout, connectTimeout: .seconds(5))),
            ("outbound", outboundAddress.socket,
             ProxyRules(exporter: exporter, route: { routed[$0] }, upstreamTimeout: timeout, connectTimeout: .seconds(5))),
        ])
        var logger = Logger(label: "meshtrace-sidecar")
        logger.logLevel = .warning
        // SIGTERM or SIGINT: stop listening, then send what the exporter holds.
        let services = ServiceGroup(configuration: .init(
            services: [listeners], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await services.run()
        } catch {
            await exporter.shutdown()
            try? await group.shutdownGracefully()
            throw error
        }
        await exporter.shutdown()
        try await group.shutdownGracefully()
    }

    /// `HOST:PORT` (`[v6]:PORT` too), resolved once, at start.
    static func address(_ text: String, option: String) throws -> (text: String, socket: SocketAddress) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            throw ValidationError("\(option) \(text): expected HOST:PORT")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        do {
            let socket = try SocketAddress.makeAddressResolvingHost(host, port: port)
            return (text, socket)
        } catch {
            throw ValidationError("\(option) \(text): \(error)")
        }
    }
}

/// The inbound and outbound listeners, as one service: bound at start, closed on
/// graceful shutdown (connections already open finish their requests).
struct Listeners: Service {
    let group: MultiThreadedEventLoopGroup
    let listeners: [(name: String, address: SocketAddress, rules: ProxyRules)]

    func run() async throws {
        var channels: [any Channel] = []
        for listener in listeners {
            let rules = listener.rules
            let channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandler(DownstreamHandler(rules: rules))
                    }
                }
                .bind(to: listener.address)
                .get()
            channels.append(channel)
            let bound = channel.localAddress.map(Self.text) ?? "?"
            print("meshtrace-sidecar: \(listener.name) listening on \(bound)")
            fflush(nil)
        }
        try? await gracefulShutdown()
        for channel in channels { try? await channel.close() }
    }

    /// `host:port`, `[v6]:port` for IPv6.
    static func text(_ address: SocketAddress) -> String {
        let host = address.ipAddress ?? ""
        return (host.contains(":") ? "[\(host)]" : host) + ":\(address.port ?? 0)"
    }
}
