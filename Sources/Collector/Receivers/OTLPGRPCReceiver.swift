import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import Logging
import NIOCore
import OTLPWire
import ServiceLifecycle

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
        let transport = HTTP2ServerTransport.Custom(
            listenerFactory: GatedGRPCListener(address: try NIOCore.SocketAddress.makeAddressResolvingHost(address.host, port: address.port), security: security),
            config: config)
        let server = GRPCServer(
            transport: transport, services: [OTLPGRPCService(ingest: ingest, maxMessageBytes: maxMessageBytes, budget: budget, metrics: metrics)])
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { try await server.serve() }
                if let bound = await transport.listeningAddress {
                    if let ipv4 = bound.ipv4 {
                        onListening(ListenAddress(host: ipv4.host, port: ipv4.port))
                    } else if let ipv6 = bound.ipv6 {
                        onListening(ListenAddress(host: ipv6.host, port: ipv6.port))
                    }
                }
            }
        } onGracefulShutdown: {
            server.beginGracefulShutdown()
        }
    }
}
