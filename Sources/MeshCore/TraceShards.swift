import Foundation
import Synchronization

extension TraceID {
    /// Which of `count` shards handles this trace. Every span of a trace goes to the
    /// same shard, so a shard holds whole traces: their CLIENT/SERVER pairs and their
    /// sampling decisions never need another shard.
    ///
    /// Taken from the low half of `mixedBits`, while `IDMap` slots come from the high
    /// bits: a shard's tables still spread their traces over all of their slots.
    @inlinable
    public func shard(of count: Int) -> Int {
        Int(truncatingIfNeeded: (UInt64(UInt32(truncatingIfNeeded: mixedBits)) &* UInt64(count)) >> 32)
    }
}

extension SpanBatch {
    /// The rows of this batch by the shard (of `count`) their trace belongs to, in order.
    public func rowsByShard(_ count: Int) -> [[Int]] {
        guard count > 1 else { return [Array(0..<self.count)] }
        var rows = [[Int]](repeating: [], count: count)
        for index in rows.indices { rows[index].reserveCapacity(self.count / count * 5 / 4) }
        for row in 0..<self.count { rows[traceIDs[row].shard(of: count)].append(row) }
        return rows
    }
}

/// State split into shards, each behind its own lock, so that callers working on
/// different shards run side by side on different cores.
public final class Sharded<State>: Sendable {
    private final class Shard: Sendable {
        let state: Mutex<State>
        init(_ state: sending State) { self.state = Mutex(state) }
    }

    private let shards: [Shard]

    /// Makes `count` shards (at least one), shard `index` holding `make(index)`.
    public init(count: Int, _ make: (Int) -> sending State) {
        shards = (0..<max(1, count)).map { Shard(make($0)) }
    }

    /// How many shards there are.
    public var count: Int { shards.count }

    /// Runs `body` on shard `index` under its lock.
    public func withLock<Result: Sendable, E: Error>(
        _ index: Int, _ body: (inout sending State) throws(E) -> sending Result
    ) throws(E) -> Result {
        try shards[index].state.withLock(body)
    }

    /// Runs `body` once on each shard whose rows are not empty. Shards whose lock is
    /// free are taken first, so that two callers whose work spans the same shards
    /// each work on a different one instead of queueing for the same.
    public func forEach<Work>(_ work: [Work], isEmpty: (Work) -> Bool, _ body: (Int, Work, inout sending State) -> Void) {
        precondition(work.count == shards.count, "one piece of work per shard")
        var remaining = work.indices.filter { !isEmpty(work[$0]) }
        while !remaining.isEmpty {
            var waiting: [Int] = []
            for index in remaining {
                let done = shards[index].state.withLockIfAvailable { state -> Bool in
                    body(index, work[index], &state)
                    return true
                }
                if done == nil { waiting.append(index) }
            }
            guard let first = waiting.first else { return }
            // Every shard left is busy: wait for one, then try the others again.
            shards[first].state.withLock { state in body(first, work[first], &state) }
            remaining = Array(waiting.dropFirst())
        }
    }
}

/// How many shards the collector's per-trace work is split into.
public enum Shards {
    /// The number that suits this machine: one per four cores the process may use.
    ///
    /// The per-trace work (golden signals and the tail sampler) is about a quarter
    /// of the collector's CPU per span, the rest (receiving, decoding) runs beside it
    /// without a shared lock: one shard keeps up with about four cores. More shards
    /// than that only add lock handoffs, as every request visits every shard.
    public static var defaultCount: Int { max(1, ProcessInfo.processInfo.activeProcessorCount / 4) }
}
