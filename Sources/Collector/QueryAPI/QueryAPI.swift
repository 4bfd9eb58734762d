import Foundation
import GoldenSignals
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import QueryEngine
import SegmentStore

/// The HTTP query API: the `QueryService` (Jaeger, Tempo and native routes) over HTTP, and readiness.
struct QueryAPI: Sendable {
    let service: QueryService
    /// What the receivers' TLS saw, added to `/api/v1/audit` (nil when TLS is off).
    let transportFindings: (@Sendable () -> [SignalQueries.Audit.Finding])?

    init(
        store: SpanStore, golden: GoldenSignals, logger: Logger,
        transportFindings: (@Sendable () -> [SignalQueries.Audit.Finding])? = nil
    ) {
        self.transportFindings = transportFindings
        service = QueryService(engine: {
            QueryEngine(snapshot: store.snapshot()) { segment, error in
                // Compaction or retention may have removed the file since the snapshot was taken.
                guard FileManager.default.fileExists(atPath: segment.path) else { return }
                logger.error("damaged segment taken out of service", metadata: ["file": "\(segment.path)", "error": "\(error)"])
                try? store.quarantine(segment.path)
            }
        }, golden: golden)
    }

    /// Every route the service answers, each registered by its pattern so that
    /// `/metrics` and unknown paths keep their own handlers.
    static let routes = [
        "/api/services", "/api/services/:service/operations", "/api/operations", "/api/traces", "/api/traces/:id",
        "/api/dependencies", "/api/v3/services", "/api/v3/operations", "/api/v3/traces", "/api/v3/traces/:id",
        "/api/echo", "/api/status/buildinfo", "/api/v2/traces/:id", "/api/search", "/api/search/tags",
        "/api/v2/search/tags", "/api/search/tag/:tag/values", "/api/v2/search/tag/:tag/values",
        "/api/v1/services", "/api/v1/operations", "/api/v1/topology", "/api/v1/edges", "/api/v1/stat",
        "/api/v1/latency", "/api/v1/audit", "/api/v1/compare", "/api/v1/search",
    ]

    func register(on router: Router<BasicRequestContext>) {
        router.get("/ready") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain"], body: ResponseBody(byteBuffer: ByteBuffer(string: "ready\n")))
        }
        for route in Self.routes {
            router.get(RouterPath(route)) { request, _ in await answer(request) }
        }
    }

    private func answer(_ request: Request) async -> Response {
        let service = self.service
        // The path as sent (still percent-encoded: Tempo's tag routes carry an encoded tag).
        let path = request.uri.path
        let parameters = QueryParameters(query: request.uri.query ?? "")
        let accept = request.headers[.accept] ?? ""
        var answer: QueryService.Response
        do {
            answer = try await NIOThreadPool.singleton.runIfActive {
                service.answer(path: path, parameters: parameters, accept: accept)
            }
        } catch {
            answer = QueryService.Response(status: 503, contentType: "application/json", body: Array(#"{"error":"shutting down"}"#.utf8))
        }
        if path == "/api/v1/audit", answer.status == 200, let transportFindings,
           var audit = try? JSONDecoder().decode(SignalQueries.Audit.self, from: Data(answer.body))
        {
            audit.findings = transportFindings() + audit.findings
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            if let body = try? encoder.encode(audit) { answer.body = Array(body) }
        }
        var headers = HTTPFields()
        headers[.contentType] = answer.contentType
        return Response(status: HTTPResponse.Status(code: answer.status), headers: headers,
                        body: ResponseBody(byteBuffer: ByteBuffer(bytes: answer.body)))
    }
}
