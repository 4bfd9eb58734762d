import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// A small client of the collector's query API.
struct QueryClient {
    let baseURL: String

    /// GETs `path`; returns the body of a 200, nil for a 404, and fails otherwise.
    func get(_ path: String, accept: String) async throws -> [UInt8]? {
        var request = HTTPClientRequest(url: baseURL.trimmingSuffix("/") + path)
        request.headers.add(name: "Accept", value: accept)
        let response: HTTPClientResponse
        do {
            response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        } catch {
            throw CLIFailure.server("cannot reach \(baseURL): \(error)")
        }
        let body = try await response.body.collect(upTo: 256 << 20)
        let bytes = Array(body.readableBytesView)
        switch response.status.code {
        case 200: return bytes
        case 404: return nil
        default:
            throw CLIFailure.server("\(baseURL)\(path) answered \(response.status.code): \(String(decoding: bytes.prefix(500), as: UTF8.self))")
        }
    }

    /// POSTs a body; returns the status code and body.
    func post(_ path: String, body: [UInt8], contentType: String) async throws -> (UInt, [UInt8]) {
        var request = HTTPClientRequest(url: baseURL.trimmingSuffix("/") + path)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: contentType)
        request.body = .bytes(ByteBuffer(bytes: body))
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 16 << 20)
        return (response.status.code, Array(bytes.readableBytesView))
    }
}

extension String {
    func trimmingSuffix(_ suffix: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) : self
    }
}
