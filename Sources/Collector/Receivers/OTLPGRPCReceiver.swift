import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import Logging
import NIOCore
import NIOPosix
import OTLPWire
import ServiceLifecycle
import Synchronization

/// OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export` and
/// `opentelemetry.proto.collector.metrics.v1.MetricsService/Export`.
///
/// As the OTLP specification says: the response comes once the request is durable;
/// spans refused for bad ids are counted in `partial_success`; a store that cannot
/// write answers UNAVAILABLE with a `RetryInfo`; a message that does not decode is
/// INVALID_ARGUMENT and one over the size limit RESOURCE_EXHAUSTED (both without
/// retry information, so clients do not resend them).
struct OTLPGRPCService: RegistrableRPCService {
    let ingest: TraceIngest
    let maxMessageBytes: Int
    let budget: IngestBudget
    let metrics: CollectorMetrics

    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        router.registerHandler(
            forMethod: Opentelemetry_Proto_Collector_Trace_V1_TraceService.Method.Export.descriptor,
            deserializer: LimitedDeserializer(maxBytes: maxMessageBytes, metrics: metrics, messageName: "ExportTraceServiceRequest") {
                try DecodedTraceExport(protobuf: $0)
            },
            serializer: ProtobufSerializer<ExportTraceServiceResponse>(),
            handler: { request, context in
                let received = try await ServerRequest(stream: request).message
                let response = try await charged(bytes: received.encoded.count) { () throws(TraceIngest.Unavailable) in
                    try await ingest.export(received, from: .otlpGRPC, peer: ingest.peer(grpc: context.remotePeer))
                }
                return StreamingServerResponse(single: ServerResponse(message: response))
            })
        router.registerHandler(
            forMethod: Opentelemetry_Proto_Collector_Metrics_V1_MetricsService.Method.Export.descriptor,
            deserializer: LimitedDeserializer(maxBytes: maxMessageBytes, metrics: metrics, messageName: "ExportMetricsServiceRequest") {
                (request: try ExportMetricsServiceRequest(serializedBytes: $0), bytes: $0)
            },
            serializer: ProtobufSerializer<ExportMetricsServiceResponse>(),
            handler: { request, _ in
                let received = try await ServerRequest(stream: request).message
                let response = try await charged(bytes: received.bytes.count) { () throws(TraceIngest.Unavailable) in
                    try await ingest.exportMetrics(received.request, encoded: received.bytes, from: .otlpGRPC)
                }
                return StreamingServerResponse(single: ServerResponse(message: response))
            })
    }

    /// Runs `store` within the memory budget, turning refusals into gRPC statuses.
    private func charged<Response>(
        bytes: Int, _ store: () async throws(TraceIngest.Unavailable) -> Response
    ) async throws -> Response {
        guard budget.charge(bodyBytes: bytes) else {
            metrics.refused(.otlpGRPC, .overBudget)
            throw GoogleRPCStatus(
                code: .resourceExhausted, message: "the collector's memory budget for requests in flight is spent; retry later",
                details: .retryInfo(delay: budget.retryAfter))
        }
        defer { budget.release(bodyBytes: bytes) }
        do {
            return try await store()
        } catch {
            metrics.refused(.otlpGRPC, .unavailable)
            throw GoogleRPCStatus(code: .unavailable, message: error.message, details: .retryInfo(delay: error.retryAfter))
        }
    }
}

/// Decodes request messages, refusing those over the collector's limit with
/// RESOURCE_EXHAUSTED (the transport itself would only reset the stream, which
/// clients take for a retryable cancellation) and malformed ones with INVALID_ARGUMENT.
struct LimitedDeserializer<Message: Sendable>: MessageDeserializer {
    let maxBytes: Int
    let metrics: CollectorMetrics
    /// The protobuf message's name, for errors.
    let messageName: String
    let decode: @Sendable ([UInt8]) throws -> Message

    func deserialize<Bytes: GRPCContiguousBytes>(_ serialized: Bytes) throws -> Message {
        guard serialized.count <= maxBytes else {
            metrics.refused(.otlpGRPC, .tooLarge)
            throw RPCError(
                code: .resourceExhausted,
                message: "request message is \(serialized.count) bytes, over the limit of \(maxBytes)")
        }
        do {
            return try decode(serialized.withUnsafeBytes { Array($0) })
        } catch {
            metrics.refused(.otlpGRPC, .invalid)
            throw RPCError(code: .invalidArgument, message: "malformed \(messageName): \(error)")
        }
    }
}

/// Serves OTLP/gRPC (HTTP/2 over TCP, or over TLS as the collector's TLS mode says;
/// gzip or deflate message compression) until graceful shutdown, which lets RPCs
/// in flight finish.
struct OTLPGRPCReceiver: Service {
    let address: ListenAddress
    let security: ConnectionSecurity?
    let ingest: TraceIngest
    /// Largest request message, in bytes; larger ones are refused with RESOURCE_EXHAUSTED.
    let maxMessageBytes: Int
    let budget: IngestBudget
    let metrics: CollectorMetrics
    let onListening: @Sendable (ListenAddress) -> Void

    func run() async throws {
        try await GRPCLaneServer.serve(
            at: address, security: security, maxMessageBytes: maxMessageBytes,
            services: [OTLPGRPCService(ingest: ingest, maxMessageBytes: maxMessageBytes, budget: budget, metrics: metrics)],
            onListening: onListening)
    }
}

/// grpc-swift served as the OTLP/gRPC receiver serves it: one lane per event loop.
/// Each lane listens on the same address (`SO_REUSEPORT`, so the kernel spreads
/// connections over them) and runs grpc-swift's tasks for its connections on its own
/// loop, where their bytes arrive. An RPC then stays on one thread from its first
/// frame to its answer, except while its spans are written, instead of passing
/// between the loop and Swift's global executor several times.
public enum GRPCLaneServer {
    /// Serves `services` without TLS until graceful shutdown (what
    /// `meshtrace-bench transport-floor` measures the transport with).
    public static func serve(
        at address: ListenAddress, maxMessageBytes: Int, services: [any RegistrableRPCService],
        onListening: @escaping @Sendable (ListenAddress) -> Void
    ) async throws {
        try await serve(at: address, security: nil, maxMessageBytes: maxMessageBytes, services: services, onListening: onListening)
    }

    static func serve(
        at address: ListenAddress, security: ConnectionSecurity?, maxMessageBytes: Int, services: [any RegistrableRPCService],
        onListening: @escaping @Sendable (ListenAddress) -> Void
    ) async throws {
        var config = HTTP2ServerTransport.Custom<GatedGRPCListener>.Config.defaults
        // Messages up to 4× the limit reach the deserializer, which refuses those over
        // it with RESOURCE_EXHAUSTED; the transport resets streams beyond that.
        config.rpc.maxRequestPayloadSize = maxMessageBytes <= Int.max / 4 ? maxMessageBytes * 4 : Int.max
        config.compression.enabledAlgorithms = [.gzip, .deflate]
        // An export is tens to hundreds of KiB: with HTTP/2's default 64 KiB window and
        // 16 KiB frames, a sender stops for window updates several times per request,
        // and each stop and frame wakes both sides. The request size limit and the
        // memory budget bound what is buffered, not the window.
        config.http2.targetWindowSize = 1 << 20
        config.http2.maxFrameSize = 1 << 18
        if address.port != 0 {
            // Lanes share their port with sockets that say so; a port someone already
            // listens on must still refuse the receiver, as it would without lanes, and
            // while the lanes listen a plain bind (another collector's) fails the same way.
            let probe = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(to: try NIOCore.SocketAddress.makeAddressResolvingHost(address.host, port: address.port)).get()
            try await probe.close()
        }
        let lanes = GRPCLanes()
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                var bound: NIOCore.SocketAddress?
                for loop in MultiThreadedEventLoopGroup.singleton.makeIterator() {
                    // The first lane binds the address asked for; the others the port it got
                    // (which differs when port 0 asked for any).
                    let laneAddress = try bound ?? NIOCore.SocketAddress.makeAddressResolvingHost(address.host, port: address.port)
                    let transport = HTTP2ServerTransport.Custom(
                        listenerFactory: GatedGRPCListener(address: laneAddress, security: security, loop: loop), config: config)
                    let server = GRPCServer(transport: transport, services: services)
                    guard lanes.add(server) else { break }
                    group.addTask {
                        try await withTaskExecutorPreference(EventLoopTaskExecutor(loop)) { try await server.serve() }
                    }
                    guard bound == nil else { continue }
                    guard let listening = await transport.listeningAddress,
                          let (host, port) = listening.ipv4.map({ ($0.host, $0.port) }) ?? listening.ipv6.map({ ($0.host, $0.port) })
                    else { break }
                    bound = try .init(ipAddress: host, port: port)
                    onListening(ListenAddress(host: host, port: port))
                }
            }
        } onGracefulShutdown: {
            lanes.shutDown()
        }
    }
}

/// The gRPC servers of a receiver's lanes; once shutting down, every one started is
/// told to finish and no more start.
private final class GRPCLanes: Sendable {
    private let state = Mutex((servers: [GRPCServer<HTTP2ServerTransport.Custom<GatedGRPCListener>>](), shuttingDown: false))

    /// Adds a lane's server, unless the receiver is shutting down.
    func add(_ server: GRPCServer<HTTP2ServerTransport.Custom<GatedGRPCListener>>) -> Bool {
        state.withLock { state in
            guard !state.shuttingDown else { return false }
            state.servers.append(server)
            return true
        }
    }

    func shutDown() {
        let servers = state.withLock { state in
            state.shuttingDown = true
            return state.servers
        }
        for server in servers { server.beginGracefulShutdown() }
    }
}
