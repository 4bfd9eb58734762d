#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Makes WAL records durable in groups. A writer that needs its record synced
/// either runs the sync itself, covering every record written so far, or, when a
/// sync is already running, waits for it and then for the next one, which covers
/// the records written meanwhile. N concurrent requests thus cost about two syncs
/// rather than N, and no request is answered before its record is on disk.
///
/// With a minimum interval, a sync starts no sooner than that after the one before
/// it: fewer syncs, each covering more records, for at most that much more latency.
///
/// Writers block (they run on a thread pool, not on event loops). After a failed
/// sync the log counts as broken: the outcome of the records it covered is unknown,
/// so every later wait fails with the same error until the store is reopened.
final class GroupCommit: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    // Guarded by `mutex`.
    private var synced: UInt64 = 0
    private var syncing = false
    private var broken: StoreError?
    private var syncs = 0
    private var syncTime: Duration = .zero
    private var lastSyncStarted: ContinuousClock.Instant?
    /// The least time from one sync's start to the next one's.
    let minimumInterval: Duration

    init(minimumInterval: Duration = .zero) {
        self.minimumInterval = minimumInterval
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    /// Syncs run so far, and the time spent in them.
    var statistics: (syncs: Int, time: Duration) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return (syncs, syncTime)
    }

    /// Returns once record `ticket` is durable. `sync` makes every record written so
    /// far durable and returns the number of the last one.
    func waitUntilDurable(_ ticket: UInt64, sync: () throws(StoreError) -> UInt64) throws(StoreError) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while synced < ticket {
            if let broken { throw broken }
            if syncing {
                pthread_cond_wait(condition, mutex)
                continue
            }
            syncing = true
            let previous = lastSyncStarted
            pthread_mutex_unlock(mutex)
            let clock = ContinuousClock()
            if let previous, minimumInterval > .zero {
                // Records written while this waits join the sync.
                let wait = minimumInterval - previous.duration(to: clock.now)
                if wait > .zero {
                    let (seconds, attoseconds) = wait.components
                    var remaining = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
                    var request = remaining
                    while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
                }
            }
            let outcome: Result<UInt64, StoreError>
            let started = clock.now
            do {
                outcome = .success(try sync())
            } catch {
                outcome = .failure(error)
            }
            let took = started.duration(to: clock.now)
            pthread_mutex_lock(mutex)
            syncing = false
            lastSyncStarted = started
            syncs += 1
            syncTime += took
            switch outcome {
            case .success(let upTo): synced = max(synced, upTo)
            case .failure(let error): broken = error
            }
            pthread_cond_broadcast(condition)
        }
    }

    /// Records up to `upTo` were made durable by other means (the log rotated).
    func markDurable(upTo: UInt64) {
        pthread_mutex_lock(mutex)
        synced = max(synced, upTo)
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
    }
}
