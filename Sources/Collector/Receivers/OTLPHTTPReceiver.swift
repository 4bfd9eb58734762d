import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import OTLPWire
import SegmentStore
import SwiftProtobuf

/// OTLP/HTTP: `POST /v1/traces` with a protobuf or JSON `ExportTraceServiceRequest`,
/// uncompressed or with `Content-Encoding: gzip`, `deflate` or `zstd`.
///
/// The response is sent only once the accepted spans are durable in the WAL.
/// Errors follow the OTLP specification: a 4xx whose body is a `google.rpc.Status`,
/// encoded like the request (JSON for anything that is not protobuf).
struct OTLPHTTPReceiver: Sendable {
    let ingest: TraceIngest
    let maxBodyBytes: Int
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

    func register(on router: Router<BasicRequestContext>) {
        router.post("/v1/traces") { request, context in
            await exportTraces(request)
        }
    }

    func exportTraces(_ request: Request) async -> Response {
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
            body = try await HTTPBody.read(request, encoding: contentEncoding, maxBytes: maxBodyBytes, budget: budget)
        } catch {
            switch error {
            case .tooLarge(let message): return failure(.contentTooLarge, code: 8, encoding: encoding, message)
            case .undecodable(let message): return failure(.badRequest, code: 3, encoding: encoding, message)
            case .overBudget:
                return failure(.tooManyRequests, code: 8, encoding: encoding,
                               "the collector's memory budget for requests in flight is spent; retry later",
                               retryAfterSeconds: Int(budget.retryAfter.components.seconds))
            }
        }
        defer { budget.release(bodyBytes: body.charged) }
        guard !body.bytes.isEmpty else {
            return failure(.badRequest, code: 3, encoding: encoding, "empty request body; expected an ExportTraceServiceRequest")
        }
        let bytes = body.bytes

        let exportRequest: ExportTraceServiceRequest
        let walBytes: [UInt8]
        do {
            switch encoding {
            case .protobuf:
                exportRequest = try ExportTraceServiceRequest(serializedBytes: bytes)
                walBytes = bytes
            case .json:
                exportRequest = try OTLPJSON.decode(ExportTraceServiceRequest.self, from: bytes)
                walBytes = try exportRequest.serializedBytes()
            }
        } catch {
            return failure(.badRequest, code: 3, encoding: encoding, "malformed ExportTraceServiceRequest: \(error)")
        }

        do {
            return message(try await ingest.export(exportRequest, encoded: walBytes, from: .otlpHTTP), status: .ok, encoding: encoding)
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
