import AsyncHTTPClient
import NIOSSL
import Compression
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import NIOCore
import OTLPWire
import SwiftProtobuf

/// What the collector said to one export request.
enum ExportOutcome: Sendable, Equatable {
    /// Accepted; `rejected` items were refused one by one (OTLP `partial_success`): never resent.
    case accepted(rejected: Int64, message: String)
    /// Refused for now (throttled, unavailable, unreachable): send again, not before `after` when given.
    case retry(after: Duration?, reason: String)
    /// Refused for good (bad data, too large): dropping it is all that is left.
    case refused(reason: String)
}

/// The signal an export carries, and so its path or gRPC method.
enum ExportSignal: Sendable {
    case traces, metrics
}

/// Sends serialized OTLP export requests to the collector.
protocol ExportTransport: Sendable {
    func send(_ body: [UInt8], signal: ExportSignal, timeout: Duration) async -> ExportOutcome
    func shutdown() async
}

/// OTLP/HTTP: `POST /v1/traces` and `/v1/metrics`, protobuf, gzip or zstd bodies.
struct HTTPExportTransport: ExportTransport {
    let baseURL: String
    let compression: MeshExporter.Configuration.Compression
    let headers: [(String, String)]
    /// A refused connection fails the attempt at once: the exporter's own backoff
    /// (and its counters) decide when to try again, not the client's pool.
    private let client: HTTPClient

    init(baseURL: String, compression: MeshExporter.Configuration.Compression, headers: [(String, String)], tls: ClientTLS.Material? = nil) throws {
        self.baseURL = baseURL
        self.compression = compression
        self.headers = headers
        var configuration = HTTPClient.Configuration()
        if let tls {
            var settings = TLSConfiguration.makeClientConfiguration()
            settings.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(tls.trustBundle))
            if let chain = tls.certificateChain, let key = tls.key {
                settings.certificateChain = try NIOSSLCertificate.fromPEMBytes(chain).map { .certificate($0) }
                settings.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: key, format: .pem))
            }
            configuration.tlsConfiguration = settings
        }
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.timeout.connect = .seconds(5)
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    func send(_ body: [UInt8], signal: ExportSignal, timeout: Duration) async -> ExportOutcome {
        var request = HTTPClientRequest(url: baseURL + (signal == .traces ? "/v1/traces" : "/v1/metrics"))
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-protobuf")
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        do {
            switch compression {
            case .none:
                request.body = .bytes(ByteBuffer(bytes: body))
            case .gzip:
                request.headers.add(name: "Content-Encoding", value: "gzip")
                // The fastest level: a proxy's CPU is dearer than a few more bytes.
                request.body = .bytes(ByteBuffer(bytes: try Deflate.gzip(body, level: 1)))
            case .zstd:
                request.headers.add(name: "Content-Encoding", value: "zstd")
                request.body = .bytes(ByteBuffer(bytes: try Zstd.compress(body, level: 1)))
            }
        } catch {
            return .refused(reason: "could not compress the request: \(error)")
        }
        do {
            let response = try await client.execute(request, timeout: .nanoseconds(timeout.nanoseconds))
            let answer = try await response.body.collect(upTo: 1 << 20)
            let bytes = Array(answer.readableBytesView)
            switch response.status.code {
            case 200..<300:
                switch signal {
                case .traces:
                    let decoded = (try? ExportTraceServiceResponse(serializedBytes: bytes))?.partialSuccess
                    return .accepted(rejected: decoded?.rejectedSpans ?? 0, message: decoded?.errorMessage ?? "")
                case .metrics:
                    let decoded = (try? ExportMetricsServiceResponse(serializedBytes: bytes))?.partialSuccess
                    return .accepted(rejected: decoded?.rejectedDataPoints ?? 0, message: decoded?.errorMessage ?? "")
                }
            case 429, 502, 503, 504:
                // Retry-After in seconds (the OTLP specification's form); an HTTP date is not honoured.
                let after = response.headers.first(name: "Retry-After").flatMap { Int($0.trimmingPrefix(" ")) }.map { Duration.seconds($0) }
                return .retry(after: after, reason: "HTTP \(response.status.code)\(Self.message(bytes))")
            default:
                return .refused(reason: "HTTP \(response.status.code)\(Self.message(bytes))")
            }
        } catch {
            return .retry(after: nil, reason: "\(error)")
        }
    }

    /// The message of a `google.rpc.Status` body, as `: message`.
    private static func message(_ bytes: [UInt8]) -> String {
        guard let status = try? RPCStatus(serializedBytes: bytes), !status.message.isEmpty else { return "" }
        return ": " + status.message
    }

    func shutdown() async {
        try? await client.shutdown()
    }
}

/// OTLP/gRPC: `TraceService/Export` and `MetricsService/Export`, optionally gzip-compressed.
final class GRPCExportTransport: ExportTransport {
    private let client: GRPCClient<HTTP2ClientTransport.Posix>
    private let connections: Task<Void, Never>
    private let compression: MeshExporter.Configuration.Compression
    private let metadata: Metadata

    init(
        host: String, port: Int, compression: MeshExporter.Configuration.Compression, headers: [(String, String)],
        tls: ClientTLS.Material? = nil
    ) throws {
        var config = HTTP2ClientTransport.Posix.Config.defaults
        config.compression.enabledAlgorithms = .all
        let security: HTTP2ClientTransport.Posix.TransportSecurity
        if let tls {
            let trust = TLSConfig.TrustRootsSource.certificates([.bytes(tls.trustBundle, format: .pem)])
            if let chain = tls.certificateChain, let key = tls.key {
                security = .mTLS(certificateChain: [.bytes(chain, format: .pem)], privateKey: .bytes(key, format: .pem)) {
                    $0.trustRoots = trust
                }
            } else {
                security = .tls { $0.trustRoots = trust }
            }
        } else {
            security = .plaintext
        }
        let client = GRPCClient(transport: try .http2NIOPosix(
            target: .dns(host: host, port: port), transportSecurity: security, config: config))
        self.client = client
        self.compression = compression
        var metadata = Metadata()
        for (name, value) in headers { metadata.addString(value, forKey: name.lowercased()) }
        self.metadata = metadata
        connections = Task { try? await client.runConnections() }
    }

    func send(_ body: [UInt8], signal: ExportSignal, timeout: Duration) async -> ExportOutcome {
        var options = CallOptions.defaults
        options.timeout = timeout
        // gRPC names gzip and deflate; zstd bodies go over HTTP only, so gRPC falls back to gzip.
        options.compression = compression == .none ? CompressionAlgorithm.none : .gzip
        do {
            switch signal {
            case .traces:
                return try await export(body, Opentelemetry_Proto_Collector_Trace_V1_TraceService.Method.Export.descriptor, options) {
                    (answer: ExportTraceServiceResponse) in (answer.partialSuccess.rejectedSpans, answer.partialSuccess.errorMessage)
                }
            case .metrics:
                return try await export(body, Opentelemetry_Proto_Collector_Metrics_V1_MetricsService.Method.Export.descriptor, options) {
                    (answer: ExportMetricsServiceResponse) in (answer.partialSuccess.rejectedDataPoints, answer.partialSuccess.errorMessage)
                }
            }
        } catch let error as RPCError {
            // The OTLP specification's table: these are retryable; RESOURCE_EXHAUSTED only with RetryInfo.
            let delay = Self.retryDelay(error)
            switch error.code {
            case .cancelled, .deadlineExceeded, .aborted, .outOfRange, .unavailable, .dataLoss:
                return .retry(after: delay, reason: "gRPC \(error.code): \(error.message)")
            case .resourceExhausted where delay != nil:
                return .retry(after: delay, reason: "gRPC \(error.code): \(error.message)")
            default:
                return .refused(reason: "gRPC \(error.code): \(error.message)")
            }
        } catch {
            return .retry(after: nil, reason: "\(error)")
        }
    }

    /// One unary export call; `partial` reads the response's partial success.
    private func export<Response: SwiftProtobuf.Message>(
        _ body: [UInt8], _ descriptor: MethodDescriptor, _ options: CallOptions, partial: @escaping @Sendable (Response) -> (Int64, String)
    ) async throws -> ExportOutcome {
        let (rejected, message) = try await client.unary(
            request: ClientRequest(message: body, metadata: metadata), descriptor: descriptor,
            serializer: PassThroughSerializer(), deserializer: ProtobufDeserializer<Response>(), options: options
        ) { partial(try $0.message) }
        return .accepted(rejected: rejected, message: message)
    }

    /// The `RetryInfo` delay of a rich error status, when it carries one.
    private static func retryDelay(_ error: RPCError) -> Duration? {
        guard let status = try? error.unpackGoogleRPCStatus() else { return nil }
        for detail in status.details {
            if let info = detail.retryInfo { return info.delay }
        }
        return nil
    }

    func shutdown() async {
        client.beginGracefulShutdown()
        await connections.value
    }
}

/// Sends bytes already serialized as they are.
private struct PassThroughSerializer: MessageSerializer {
    func serialize<Bytes: GRPCContiguousBytes>(_ message: [UInt8]) throws -> Bytes { Bytes(message) }
}

extension Duration {
    var nanoseconds: Int64 {
        components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000
    }
}
