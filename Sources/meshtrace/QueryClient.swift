import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import QueryEngine

/// A small client of the collector's query API.
struct QueryClient {
    let baseURL: String

    /// One client for the process: a refused connection fails the request at once
    /// instead of being retried until its deadline.
    private static let client: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.timeout.connect = .seconds(10)
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }()

    /// GETs `path` (with its query); returns the answer whatever its status.
    func fetch(_ path: String, accept: String) async throws -> QueryService.Response {
        var request = HTTPClientRequest(url: baseURL.trimmingSuffix("/") + path)
        request.headers.add(name: "Accept", value: accept)
        let response: HTTPClientResponse
        do {
            response = try await Self.client.execute(request, timeout: .seconds(60))
        } catch {
            throw CLIFailure.server("cannot reach \(baseURL): \(error)")
        }
        let body = try await response.body.collect(upTo: 256 << 20)
        return QueryService.Response(status: Int(response.status.code), contentType: response.headers.first(name: "Content-Type") ?? "",
                                     body: Array(body.readableBytesView))
    }

    /// POSTs a body; returns the status code and body.
    func post(_ path: String, body: [UInt8], contentType: String) async throws -> (UInt, [UInt8]) {
        var request = HTTPClientRequest(url: baseURL.trimmingSuffix("/") + path)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: contentType)
        request.body = .bytes(ByteBuffer(bytes: body))
        let response = try await Self.client.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 16 << 20)
        return (response.status.code, Array(bytes.readableBytesView))
    }
}

extension String {
    func trimmingSuffix(_ suffix: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) : self
    }
}
