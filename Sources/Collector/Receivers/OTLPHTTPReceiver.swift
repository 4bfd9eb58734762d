import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import OTLPWire
import SegmentStore
import SwiftProtobuf

/// OTLP/HTTP: `POST /v1/traces` and `POST /v1/metrics` with a protobuf or JSON
/// export request, uncompressed or with `Content-Encoding: gzip`, `deflate` or `zstd`.
///
/// The response is sent only once the request is durable in the WAL.
/// Errors follow the OTLP specification: a 4xx whose body is a `google.rpc.Status`,
/// encoded like the request (JSON for anything that is not protobuf).
struct OTLPHTTPReceiver: Sendable {
    let ingest: TraceIngest
    let maxBodyBytes: Int
    /// Time a client has to send its body.
    let readTimeout: Duration
    let budget: IngestBudget
    let metrics: CollectorMetrics

    enum Encoding {
        case protobuf
        case json

        var contentType: String {
            switch self {
            case .protobuf: return "application/x-protobuf"
            case .json: return "application/json"
            }
        }
    }

    func register(on router: Router<IngestContext>) {
        router.post("/v1/traces") { request, context in
            await receive(request, messageName: "ExportTraceServiceRequest") { bytes, encoding in
                switch encoding {
                case .protobuf: return try DecodedTraceExport(protobuf: bytes)
                case .json: return DecodedTraceExport(try OTLPJSON.decode(ExportTraceServiceRequest.self, from: bytes))
                }
            } store: { (export: DecodedTraceExport) throws(TraceIngest.Unavailable) in
                try await ingest.export(export, from: .otlpHTTP, peer: ingest.peer(at: context.remoteAddress))
            }
        }
        router.post("/v1/metrics") { request, context in
            await receive(request, messageName: "ExportMetricsServiceRequest") { bytes, encoding in
                switch encoding {
                case .protobuf: return (try ExportMetricsServiceRequest(serializedBytes: bytes), bytes)
                case .json:
                    let request = try OTLPJSON.decode(ExportMetricsServiceRequest.self, from: bytes)
                    return (request, try request.serializedBytes())
                }
            } store: { (received: (request: ExportMetricsServiceRequest, encoded: [UInt8])) throws(TraceIngest.Unavailable) in
                try await ingest.exportMetrics(received.request, encoded: received.encoded, from: .otlpHTTP)
            }
        }
    }

    /// Reads, checks and decodes a request body, stores it, and answers as OTLP/HTTP says.
    private func receive<Decoded, Answer: SwiftProtobuf.Message>(
        _ request: Request, messageName: String,
        decode: ([UInt8], Encoding) throws -> Decoded,
        store: (Decoded) async throws(TraceIngest.Unavailable) -> Answer
    ) async -> Response {
        let contentType = request.headers[.contentType]?
            .split(separator: ";").first?.trimmingCharacters(in: .whitespaces).lowercased() ?? ""
        let encoding: Encoding
        switch contentType {
        case "application/x-protobuf", "application/protobuf": encoding = .protobuf
        case "application/json": encoding = .json
        default:
            return failure(.unsupportedMediaType, code: 3, encoding: .json,
                           "unsupported content type \(contentType.isEmpty ? "(none)" : contentType.debugDescription); send application/x-protobuf or application/json")
        }
        let contentEncoding = request.headers[.contentEncoding]?.trimmingCharacters(in: .whitespaces).lowercased() ?? "identity"
        guard ["identity", "gzip", "x-gzip", "deflate", "zstd"].contains(contentEncoding) else {
            return failure(.unsupportedMediaType, code: 3, encoding: encoding,
                           "unsupported content encoding \(contentEncoding.debugDescription); send gzip, deflate, zstd or identity")
        }

        let body: HTTPBody
        do {
            body = try await HTTPBody.read(request, encoding: contentEncoding, maxBytes: maxBodyBytes, timeout: readTimeout, budget: budget)
        } catch {
            switch error {
            case .tooLarge(let message): return failure(.contentTooLarge, code: 8, encoding: encoding, message)
            case .undecodable(let message): return failure(.badRequest, code: 3, encoding: encoding, message)
            case .timedOut(let message): return failure(.requestTimeout, code: 4, encoding: encoding, message)
            case .overBudget:
                return failure(.tooManyRequests, code: 8, encoding: encoding,
                               "the collector's memory budget for requests in flight is spent; retry later",
                               retryAfterSeconds: Int(budget.retryAfter.components.seconds))
            }
        }
        defer { budget.release(bodyBytes: body.charged) }
        guard !body.bytes.isEmpty else {
            return failure(.badRequest, code: 3, encoding: encoding, "empty request body; expected an \(messageName)")
        }

        let decoded: Decoded
        do {
            decoded = try decode(body.bytes, encoding)
        } catch {
            return failure(.badRequest, code: 3, encoding: encoding, "malformed \(messageName): \(error)")
        }

        do {
            return message(try await store(decoded), status: .ok, encoding: encoding)
        } catch {
            return failure(.serviceUnavailable, code: 14, encoding: encoding, error.message,
                           retryAfterSeconds: Int(error.retryAfter.components.seconds))
        }
    }

    private func failure(
        _ status: HTTPResponse.Status, code: Int32, encoding: Encoding, _ text: String, retryAfterSeconds: Int? = nil
    ) -> Response {
        if let refusal = CollectorMetrics.refusal(for: status.code) { metrics.refused(.otlpHTTP, refusal) }
        var rpcStatus = RPCStatus()
        rpcStatus.code = code
        rpcStatus.message = text
        var response = message(rpcStatus, status: status, encoding: encoding)
        if let retryAfterSeconds { response.headers[.retryAfter] = String(retryAfterSeconds) }
        return response
    }

    private func message(_ message: some SwiftProtobuf.Message, status: HTTPResponse.Status, encoding: Encoding) -> Response {
        let bytes: [UInt8]
        switch encoding {
        case .protobuf: bytes = (try? message.serializedBytes()) ?? []
        case .json: bytes = (try? Array(OTLPJSON.encode(message))) ?? Array("{}".utf8)
        }
        return Response(
            status: status, headers: [.contentType: encoding.contentType],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}
