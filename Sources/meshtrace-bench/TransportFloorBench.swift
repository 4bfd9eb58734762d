import ArgumentParser
import Collector
import GRPCCore
import GRPCNIOTransportHTTP2
import Hummingbird
import NIOCore
import Synchronization

/// `meshtrace-bench transport-floor`: an OTLP trace endpoint that does nothing with what it
/// receives. It serves OTLP/gRPC as the collector serves it (grpc-swift over HTTP/2 in the
/// receiver's lanes, with its window, frame and message sizes; the request copied out of
/// the transport as the collector's deserializer copies it), or OTLP/HTTP on Hummingbird
/// (the body read into one array, as the collector's receiver reads it), and answers each
/// export with an empty response at once: no decode, no WAL, no sync, no sampling. The CPU
/// it spends under a load is what the transport alone costs the collector for that load
/// (`Benchmarks/transport_floor.sh` runs loadgen against it and reads its CPU time).
struct TransportFloorBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "transport-floor",
        abstract: "Serve OTLP traces and store nothing: the transport's own CPU per span under a load.")

    enum TransportProtocol: String, ExpressibleByArgument {
        case grpc
        case http
    }

    @Option(help: "grpc (OTLP/gRPC on grpc-swift) or http (OTLP/HTTP on Hummingbird).")
    var `protocol`: TransportProtocol = .grpc

    @Option(help: "Address to serve on.")
    var host = "127.0.0.1"

    @Option(help: "Port to serve on.")
    var port = 34_317

    mutating func run() async throws {
        let received = Received()
        print("serving OTLP/\(self.protocol == .grpc ? "gRPC" : "HTTP") on \(host):\(port); nothing is stored")
        switch self.protocol {
        case .grpc: try await serveGRPC(received)
        case .http: try await serveHTTP(received)
        }
    }

    private func serveGRPC(_ received: Received) async throws {
        try await GRPCLaneServer.serve(
            at: ListenAddress(host: host, port: port), maxMessageBytes: CollectorConfiguration().maxGRPCMessageBytes,
            services: [DiscardingTraceService(received: received)], onListening: { _ in })
    }

    private func serveHTTP(_ received: Received) async throws {
        let router = Router()
        router.post("/v1/traces") { request, _ -> Response in
            var bytes: [UInt8] = []
            for try await chunk in request.body { bytes.append(contentsOf: chunk.readableBytesView) }
            received.add(bytes.count)
            // An empty ExportTraceServiceResponse is zero bytes of protobuf.
            return Response(status: .ok, headers: [.contentType: "application/x-protobuf"], body: ResponseBody(byteBuffer: ByteBuffer()))
        }
        let app = Application(router: router, configuration: .init(address: .hostname(host, port: port)))
        try await app.runService()
    }
}

/// Requests and bytes received, so that the copies are not optimised away.
private final class Received: Sendable {
    private let counts = Mutex((requests: 0, bytes: 0))

    func add(_ bytes: Int) {
        counts.withLock {
            $0.requests += 1
            $0.bytes += bytes
        }
    }
}

/// `TraceService/Export` that copies each request out of the transport and answers it empty.
private struct DiscardingTraceService: RegistrableRPCService {
    let received: Received

    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        router.registerHandler(
            forMethod: MethodDescriptor(fullyQualifiedService: "opentelemetry.proto.collector.trace.v1.TraceService", method: "Export"),
            deserializer: CopyingDeserializer(),
            serializer: EmptySerializer(),
            handler: { request, _ in
                let bytes = try await ServerRequest(stream: request).message
                received.add(bytes.count)
                return StreamingServerResponse(single: ServerResponse(message: ()))
            })
    }
}

/// The request's bytes as one array, as the collector's deserializer has them before it decodes.
private struct CopyingDeserializer: MessageDeserializer {
    func deserialize<Bytes: GRPCContiguousBytes>(_ serialized: Bytes) throws -> [UInt8] {
        serialized.withUnsafeBytes { Array($0) }
    }
}

/// An empty message: zero bytes of protobuf.
private struct EmptySerializer: MessageSerializer {
    func serialize<Bytes: GRPCContiguousBytes>(_ message: Void) throws -> Bytes {
        Bytes(repeating: 0, count: 0)
    }
}
