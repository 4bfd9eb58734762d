import Foundation
import GoldenSignals
import Hummingbird
import Logging
import MeshCore
import NIOCore
import NIOPosix
import OTLPWire
import QueryEngine
import SegmentStore

/// The HTTP query API: Jaeger's trace-by-id, the native topology, and readiness.
struct QueryAPI: Sendable {
    let store: SpanStore
    let golden: GoldenSignals
    let logger: Logger

    /// A query engine over the store's current state that quarantines damaged segments.
    private func engine() -> QueryEngine {
        let store = self.store
        let logger = self.logger
        return QueryEngine(snapshot: store.snapshot()) { segment, error in
            // Compaction or retention may have removed the file since the snapshot was taken.
            guard FileManager.default.fileExists(atPath: segment.path) else { return }
            logger.error("damaged segment taken out of service", metadata: ["file": "\(segment.path)", "error": "\(error)"])
            try? store.quarantine(segment.path)
        }
    }

    func register(on router: Router<BasicRequestContext>) {
        router.get("/ready") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain"], body: ResponseBody(byteBuffer: ByteBuffer(string: "ready\n")))
        }
        router.get("/api/traces/:id") { request, context in
            await traceByID(request, id: context.parameters.get("id") ?? "")
        }
        router.get("/api/v1/topology") { request, _ in
            await topology(request)
        }
    }

    func traceByID(_ request: Request, id: String) async -> Response {
        guard let traceID = TraceID(hex: id), traceID != .zero else {
            return jaegerError(.badRequest, "trace id \(id.debugDescription) is not 16 or 32 hex digits")
        }
        let engine = engine()
        let found: SpanBatch?
        do {
            found = try await NIOThreadPool.singleton.runIfActive { try engine.trace(traceID) }
        } catch {
            return jaegerError(.internalServerError, "cannot read the store: \(error)")
        }
        guard let batch = found else { return jaegerError(.notFound, "trace not found") }

        let accept = request.headers[.accept]?.lowercased() ?? ""
        do {
            if accept.contains("application/protobuf") || accept.contains("application/x-protobuf") {
                let bytes: [UInt8] = try batch.tracesData().serializedBytes()
                return Response(status: .ok, headers: [.contentType: "application/protobuf"],
                                body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
            }
            let envelope = JaegerJSON.Envelope(data: [try JaegerJSON.trace(batch)])
            return json(envelope, status: .ok)
        } catch {
            return jaegerError(.internalServerError, "cannot render the trace: \(error)")
        }
    }

    func topology(_ request: Request) async -> Response {
        let window: ClosedRange<UInt64>
        switch TimeWindow.parse(since: request.uri.queryParameters.get("since"),
                                start: request.uri.queryParameters.get("start"),
                                end: request.uri.queryParameters.get("end")) {
        case .success(let parsed): window = parsed
        case .failure(let error): return jaegerError(.badRequest, error.message)
        }
        let golden = self.golden
        do {
            let graph = try await NIOThreadPool.singleton.runIfActive { golden.serviceGraph(in: window) }
            return json(TopologyJSON(graph), status: .ok)
        } catch {
            return jaegerError(.internalServerError, "cannot read the service graph: \(error)")
        }
    }

    private func jaegerError(_ status: HTTPResponse.Status, _ message: String) -> Response {
        json(JaegerJSON.Envelope<[JaegerJSON.Trace]>(data: nil, errors: [.init(code: status.code, msg: message)]), status: status)
    }

    private func json(_ value: some Encodable, status: HTTPResponse.Status) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        return Response(status: status, headers: [.contentType: "application/json"],
                        body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }
}

/// A query's time window, from `since` (a relative duration) or `start`/`end` (RFC 3339).
public enum TimeWindow {
    /// Why a window parameter was refused; names the parameter.
    public struct ParseError: Error {
        public var message: String
    }

    /// The default look-back when no window is given, in nanoseconds (one hour).
    public static let defaultSince: UInt64 = 3_600_000_000_000

    /// Nanoseconds since the epoch, now.
    public static func now() -> UInt64 {
        UInt64(max(0, Date().timeIntervalSince1970 * 1e9))
    }

    public static func parse(since: String?, start: String?, end: String?) -> Result<ClosedRange<UInt64>, ParseError> {
        var upper = now()
        if let end {
            guard let parsed = rfc3339Nanoseconds(end) else {
                return .failure(ParseError(message: "parameter 'end' must be RFC 3339, got \(end.debugDescription)"))
            }
            upper = parsed
        }
        var lower = upper > defaultSince ? upper - defaultSince : 0
        if let start {
            if since != nil {
                return .failure(ParseError(message: "parameters 'since' and 'start' cannot be combined"))
            }
            guard let parsed = rfc3339Nanoseconds(start) else {
                return .failure(ParseError(message: "parameter 'start' must be RFC 3339, got \(start.debugDescription)"))
            }
            lower = parsed
        } else if let since {
            guard let span = DurationText.nanoseconds(since) else {
                return .failure(ParseError(message: "parameter 'since' must be a duration like 15m or 1h, got \(since.debugDescription)"))
            }
            lower = upper > span ? upper - span : 0
        }
        guard lower <= upper else {
            return .failure(ParseError(message: "the window starts after it ends"))
        }
        return .success(lower...upper)
    }

    static func rfc3339Nanoseconds(_ text: String) -> UInt64? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) ?? ISO8601DateFormatter().date(from: text) {
            return UInt64(max(0, date.timeIntervalSince1970 * 1e9))
        }
        return nil
    }
}
