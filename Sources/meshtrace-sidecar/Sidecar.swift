import ArgumentParser
import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import MeshCore
import MeshExporter
import NIOCore
import NIOHTTP1
import ServiceLifecycle

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
/// be reached, `NR` when no route names the host, `-` otherwise), request id, sizes.
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

    @Option(help: "Largest request or response body forwarded, in bytes.")
    var maxBody = 16 << 20

    @Option(help: "CA bundle (PEM) that signs the collector's certificate; turns on TLS to the collector.")
    var tlsCa: String?

    @Option(help: "This workload's certificate (PEM, its SPIFFE ID as URI SAN) for mTLS to the collector; reloaded when it changes.")
    var tlsCert: String?

    @Option(help: "The key of --tls-cert (PEM).")
    var tlsKey: String?

    mutating func run() async throws {
        var routeTable: [String: (host: String, port: Int)] = [:]
        for route in routes {
            let parts = route.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let address = Self.address(String(parts[1])) else {
                throw ValidationError("--route \(route): expected NAME=HOST:PORT")
            }
            routeTable[String(parts[0]).lowercased()] = address
        }
        guard let appAddress = Self.address(app) else { throw ValidationError("--app \(app): expected HOST:PORT") }
        guard let inboundAddress = Self.address(inbound) else { throw ValidationError("--inbound \(inbound): expected HOST:PORT") }
        guard let outboundAddress = Self.address(outbound) else { throw ValidationError("--outbound \(outbound): expected HOST:PORT") }

        var configuration = MeshExporter.Configuration(
            endpoint: collector, transport: transport == "grpc" ? .grpc : .http, serviceName: service)
        configuration.resourceAttributes = [("k8s.namespace.name", namespace), ("k8s.pod.name", "\(service)-\(getpid())")]
        configuration.samplingProbability = sampling
        if let tlsCa {
            configuration.tls = ClientTLS(trustBundleFile: tlsCa, certificateFile: tlsCert, keyFile: tlsKey)
        } else if tlsCert != nil || tlsKey != nil {
            throw ValidationError("--tls-cert and --tls-key need --tls-ca, the CA that signs the collector's certificate")
        }
        let exporter = try MeshExporter(configuration: configuration)
        var clientConfiguration = HTTPClient.Configuration()
        clientConfiguration.connectionPool.retryConnectionEstablishment = false
        clientConfiguration.timeout.connect = .seconds(5)
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)
        let proxy = Proxy(service: service, exporter: exporter, client: client, maxBody: maxBody)
        var logger = Logger(label: "meshtrace-sidecar")
        logger.logLevel = .warning

        let routed = routeTable
        let inboundApp = proxy.application(at: inboundAddress, name: "inbound", logger: logger) { _ in
            .init(host: appAddress.host, port: appAddress.port, kind: .server, peerService: "", cluster: "inbound|\(appAddress.port)||")
        }
        let outboundApp = proxy.application(at: outboundAddress, name: "outbound", logger: logger) { host in
            guard let target = routed[host] else { return nil }
            return .init(host: target.host, port: target.port, kind: .client, peerService: host,
                         cluster: "outbound|\(target.port)||\(host)")
        }
        // SIGTERM or SIGINT: stop listening, then send what the exporter holds.
        let group = ServiceGroup(configuration: .init(
            services: [inboundApp, outboundApp], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        try? await client.shutdown()
        await exporter.shutdown()
    }

    static func address(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        return (String(text[..<colon]), port)
    }
}

/// Where a listener sends a request, and how its span is labelled.
struct Upstream {
    var host: String
    var port: Int
    var kind: SpanKind
    var peerService: String
    var cluster: String
}

/// The request context: the downstream connection's address, for `peer.address`.
struct SidecarContext: RequestContext, RemoteAddressRequestContext {
    var coreContext: CoreRequestContextStorage
    let remoteAddress: SocketAddress?

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }
}

/// Forwards requests and records their spans.
struct Proxy: Sendable {
    let service: String
    let exporter: MeshExporter
    let client: HTTPClient
    let maxBody: Int

    /// Hop-by-hop headers (RFC 9110 §7.6.1) and those the proxy sets itself.
    private static let notForwarded: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "content-length",
        "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags",
    ]

    func application(
        at address: (host: String, port: Int), name: String, logger: Logger, route: @escaping @Sendable (String) -> Upstream?
    ) -> some ApplicationProtocol {
        let router = Router(context: SidecarContext.self)
        let methods: [HTTPRequest.Method] = [.get, .post, .put, .delete, .patch, .head, .options]
        // `**` matches every path but the root.
        for method in methods {
            for path: RouterPath in ["/", "**"] {
                router.on(path, method: method) { request, context in
                    let host = (request.head.authority ?? "").split(separator: ":").first.map { String($0).lowercased() } ?? ""
                    return await forward(request, context: context, upstream: route(host), host: host)
                }
            }
        }
        return Application(
            router: router, configuration: .init(address: .hostname(address.host, port: address.port)),
            onServerRunning: { channel in
                let line = "meshtrace-sidecar: \(name) listening on \(address.host):\(channel.localAddress?.port ?? 0)\n"
                FileHandle.standardOutput.write(Data(line.utf8))
            },
            logger: logger)
    }

    private func forward(_ request: Request, context: SidecarContext, upstream: Upstream?, host: String) async -> Response {
        let start = Self.now()
        var fields: [(String, String)] = []
        for field in request.headers { fields.append((field.name.canonicalName, field.value)) }
        func header(_ name: String) -> String? { fields.first { $0.0 == name }?.1 }
        let parent = header("traceparent").flatMap { TraceContext(traceparent: $0, tracestate: header("tracestate")) }
            ?? TraceContext(b3: header)
        let traceID = parent?.traceID ?? TraceID(high: .random(in: 1...UInt64.max), low: .random(in: 0...UInt64.max))
        let spanID = SpanID(.random(in: 1...UInt64.max))
        let (sampled, traceState) = exporter.decide(traceID: traceID, parent: parent)
        let requestID = header("x-request-id") ?? UUID().uuidString.lowercased()
        let path = request.uri.path
        let method = request.method.rawValue

        var status: UInt16 = 0
        var flags = "-"
        var requestBytes = 0
        var responseBytes = 0
        var response: Response
        if let upstream {
            do {
                let body = try await request.body.collect(upTo: maxBody)
                requestBytes = body.readableBytes
                var outgoing = HTTPClientRequest(url: "http://\(upstream.host):\(upstream.port)\(request.uri.description)")
                outgoing.method = HTTPMethod(rawValue: method)
                for (name, value) in fields where !Self.notForwarded.contains(name) { outgoing.headers.add(name: name, value: value) }
                let context = TraceContext(traceID: traceID, spanID: spanID, flags: sampled ? 1 : 0, traceState: traceState)
                for (name, value) in context.w3cHeaders { outgoing.headers.replaceOrAdd(name: name, value: value) }
                outgoing.headers.replaceOrAdd(name: "x-request-id", value: requestID)
                if requestBytes > 0 { outgoing.body = .bytes(body) }
                let answer = try await client.execute(outgoing, timeout: .seconds(30))
                let answerBody = try await answer.body.collect(upTo: maxBody)
                responseBytes = answerBody.readableBytes
                status = UInt16(answer.status.code)
                var headers = HTTPFields()
                for header in answer.headers where !Self.notForwarded.contains(header.name.lowercased()) {
                    if let name = HTTPField.Name(header.name) { headers.append(HTTPField(name: name, value: header.value)) }
                }
                response = Response(status: .init(code: Int(status)), headers: headers, body: ResponseBody(byteBuffer: answerBody))
            } catch {
                status = 503
                flags = "UF"
                response = Response(status: .serviceUnavailable, body: ResponseBody(byteBuffer: ByteBuffer(string: "upstream connect error: \(error)\n")))
            }
        } else {
            status = 404
            flags = "NR"
            response = Response(status: .notFound, body: ResponseBody(byteBuffer: ByteBuffer(string: "no route to \(host.isEmpty ? "(no host)" : host)\n")))
        }
        let kind = upstream?.kind ?? .client
        let peerAddress: String
        if kind == .server {
            peerAddress = context.remoteAddress.map { "\($0.ipAddress ?? ""):\($0.port ?? 0)" } ?? ""
        } else {
            peerAddress = upstream.map { "\($0.host):\($0.port)" } ?? ""
        }
        exporter.record(RequestSpan(
            traceID: traceID, spanID: spanID, parentSpanID: parent?.spanID ?? .zero,
            name: "\(method) \(Self.template(path))", kind: kind, startTime: start, endTime: Self.now(),
            httpStatus: status, failed: status >= 500, method: method, path: path,
            peerService: kind == .client ? (upstream?.peerService ?? host) : "", upstreamCluster: upstream?.cluster ?? "",
            peerAddress: peerAddress, responseFlags: flags, requestID: requestID,
            userAgent: header("user-agent") ?? "", requestBytes: UInt64(requestBytes), responseBytes: UInt64(responseBytes),
            mutualTLS: false, traceState: traceState),
            exported: sampled)
        return response
    }

    /// The path with its numeric and id-like segments as `{id}`: an operation name of bounded cardinality.
    static func template(_ path: String) -> String {
        path.split(separator: "/", omittingEmptySubsequences: false).map { segment -> String in
            let digits = segment.filter(\.isNumber).count
            return !segment.isEmpty && (digits == segment.count || (segment.count >= 16 && digits * 3 >= segment.count)) ? "{id}" : String(segment)
        }.joined(separator: "/")
    }

    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}
