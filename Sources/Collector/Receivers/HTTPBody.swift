import Compression
import Hummingbird
import NIOCore

/// A receiver's request body: read within the size limit and the memory budget,
/// then decompressed as its `Content-Encoding` says. The caller returns the charge
/// with `budget.release(bodyBytes: body.charged)` once the request is answered.
struct HTTPBody {
    enum Failure: Error {
        /// Over the size limit, before or after decompression.
        case tooLarge(String)
        /// The memory budget is spent; the client should retry later.
        case overBudget
        /// The body does not decompress.
        case undecodable(String)
        /// The client took longer than the read timeout to send the body.
        case timedOut(String)
    }

    var bytes: [UInt8]
    /// Body bytes charged to the budget.
    var charged: Int

    /// Reads the body of `request`, whose encoding (`identity`, `gzip`, `x-gzip`,
    /// `deflate` or `zstd`) the caller has checked.
    /// A client that trickles its body past `timeout` is refused when its next bytes
    /// arrive; one that stops sending is cut off by the server's idle timeout.
    static func read(
        _ request: Request, encoding: String, maxBytes: Int, timeout: Duration, budget: IngestBudget
    ) async throws(Failure) -> HTTPBody {
        // Charged before reading: the declared length, or the limit when none is declared.
        let declared = request.headers[.contentLength].flatMap { Int($0) } ?? maxBytes
        guard declared <= maxBytes else { throw .tooLarge("request body exceeds the limit of \(maxBytes) bytes") }
        guard budget.charge(bodyBytes: declared) else { throw .overBudget }
        var charged = declared
        do throws(Failure) {
            var bytes: [UInt8] = []
            let deadline = ContinuousClock.now + timeout
            do {
                for try await chunk in request.body {
                    guard bytes.count + chunk.readableBytes <= maxBytes else {
                        throw Failure.tooLarge("request body exceeds the limit of \(maxBytes) bytes")
                    }
                    guard ContinuousClock.now <= deadline else {
                        throw Failure.timedOut("the request body took longer than \(timeout) to arrive")
                    }
                    bytes.append(contentsOf: chunk.readableBytesView)
                }
            } catch let failure as Failure {
                throw failure
            } catch {
                throw .undecodable("cannot read the request body: \(error)")
            }
            do {
                switch encoding {
                case "gzip", "x-gzip", "deflate": bytes = try Inflate.decompress(bytes, maxSize: maxBytes)
                case "zstd": bytes = try Zstd.decompressFrames(bytes, maxSize: maxBytes)
                default: break
                }
            } catch .exceedsLimit {
                throw .tooLarge("request body decompresses to more than the limit of \(maxBytes) bytes")
            } catch {
                throw .undecodable("cannot decompress the \(encoding) body: \(error)")
            }
            if bytes.count > charged {
                // Charged afresh, so a body that is alone in flight is never refused.
                budget.release(bodyBytes: charged)
                charged = 0
                guard budget.charge(bodyBytes: bytes.count) else { throw .overBudget }
                charged = bytes.count
            }
            return HTTPBody(bytes: bytes, charged: charged)
        } catch {
            budget.release(bodyBytes: charged)
            throw error
        }
    }
}
