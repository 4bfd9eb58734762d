import Synchronization

/// A bound on the request data the collector holds at once. A request is charged
/// before it is read (from its declared length) and again once decompressed; one
/// that would take the total past the budget is refused with a retryable status
/// (HTTP 429 with `Retry-After`, gRPC RESOURCE_EXHAUSTED with `RetryInfo`), so a
/// traffic spike meets pushback instead of an out-of-memory kill.
final class IngestBudget: Sendable {
    /// Bytes charged per byte of (decompressed) request body: the body, its decoded
    /// messages, the span batch built from them and the WAL record.
    static let chargePerBodyByte = 4

    /// The budget, in bytes.
    let limit: Int
    /// How long a refused client is told to wait before retrying.
    let retryAfter: Duration = .seconds(1)
    private let used = Mutex(0)

    init(limit: Int) {
        self.limit = limit
    }

    /// Bytes charged to requests in flight.
    var inUse: Int { used.withLock { $0 } }

    /// Charges `bodyBytes` of request body; false (and nothing charged) when that
    /// would pass the budget. A request larger than the whole budget is still let
    /// through when nothing else is in flight, so no valid request is refused forever.
    func charge(bodyBytes: Int) -> Bool {
        let bytes = Self.bytes(forBody: bodyBytes)
        return used.withLock { used in
            guard used == 0 || used + bytes <= limit else { return false }
            used += bytes
            return true
        }
    }

    /// Returns what `charge(bodyBytes:)` took.
    func release(bodyBytes: Int) {
        let bytes = Self.bytes(forBody: bodyBytes)
        used.withLock { $0 -= bytes }
    }

    private static func bytes(forBody body: Int) -> Int {
        body <= Int.max / chargePerBodyByte ? body * chargePerBodyByte : Int.max / 2
    }
}
