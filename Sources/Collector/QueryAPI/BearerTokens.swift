import Crypto
import Foundation
import Hummingbird

/// The query API's bearer tokens: every request but `/ready` must carry
/// `Authorization: Bearer <token>` with one of them, or gets 401.
struct BearerTokens: RouterMiddleware {
    typealias Context = BasicRequestContext

    /// SHA-256 of each token: compared in constant time, and never kept in memory as given.
    private let digests: [[UInt8]]

    /// Reads `path`: one token per line; blank lines and `#` comments are skipped.
    /// Nil when no file is configured.
    static func load(_ path: String?) throws -> BearerTokens? {
        guard let path else { return nil }
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw CollectorSettings.Invalid(description: "query.token_file: cannot read \(path)")
        }
        let tokens = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasPrefix("#") }
        guard !tokens.isEmpty else { throw CollectorSettings.Invalid(description: "query.token_file: \(path) holds no token") }
        if let short = tokens.first(where: { $0.utf8.count < 16 }) {
            throw CollectorSettings.Invalid(description: "query.token_file: a token of \(short.utf8.count) characters is too short to be secret (16 at least)")
        }
        return BearerTokens(digests: tokens.map { Array(SHA256.hash(data: Data($0.utf8))) })
    }

    func allows(_ authorization: String?) -> Bool {
        guard let authorization, authorization.count > 7, authorization.prefix(7).lowercased() == "bearer " else { return false }
        let digest = Array(SHA256.hash(data: Data(authorization.dropFirst(7).trimmingCharacters(in: .whitespaces).utf8)))
        // Every token is compared, and every byte of each, whatever matches.
        var matched = false
        for candidate in digests {
            var difference: UInt8 = 0
            for (a, b) in zip(candidate, digest) { difference |= a ^ b }
            matched = matched || difference == 0
        }
        return matched
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if request.uri.path == "/ready" || allows(request.headers[.authorization]) {
            return try await next(request, context)
        }
        return Response(
            status: .unauthorized,
            headers: [.contentType: "application/json", .wwwAuthenticate: #"Bearer realm="meshtrace""#],
            body: ResponseBody(byteBuffer: ByteBuffer(string: #"{"error":"a bearer token is required (Authorization: Bearer <token>)"}"#)))
    }
}
