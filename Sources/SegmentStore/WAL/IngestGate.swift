#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Lets many requests log and follow their spans at once, and a seal wait until none
/// is halfway: a request holds the gate shared from its WAL record until the
/// follower and the sampler have taken its spans; a seal holds it alone while it
/// rotates the WAL and checkpoints the follower, so a checkpoint covers every record
/// of the files it lets go. A seal waiting for the gate goes before requests that
/// come after it.
final class IngestGate: @unchecked Sendable {
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>

    init() {
        lock = .allocate(capacity: 1)
        var attributes = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attributes)
        #if canImport(Glibc)
        // Without this, a steady stream of requests would keep a seal waiting for ever.
        pthread_rwlockattr_setkind_np(&attributes, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        #endif
        pthread_rwlock_init(lock, &attributes)
        pthread_rwlockattr_destroy(&attributes)
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    /// Runs `body` beside other requests, never beside a seal.
    func shared<Result, E: Error>(_ body: () throws(E) -> Result) throws(E) -> Result {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    /// Runs `body` once no request is inside, keeping new ones out until it returns.
    func exclusive<Result, E: Error>(_ body: () throws(E) -> Result) throws(E) -> Result {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
}
