import CCacheHints
import Foundation
import MeshCore
import SegmentStore
import Synchronization

/// The tail sampler: holds each trace's spans until its decision is due, then keeps
/// or drops the trace whole by the policy file.
///
/// A trace is decided `decision_wait` after its first span arrives, or `root_wait`
/// after its root span does, whichever comes first; at once when it reaches
/// `max_spans_per_trace`; and oldest first when the buffer is over its byte budget
/// or its trace limit. Spans arriving after their trace was decided follow the
/// decision, from a bounded cache. When no policy reads a trace's content, the
/// trace id alone decides and nothing waits.
///
/// Kept spans carry the probability they were kept with: their `tracestate`'s `ot`
/// entry gets the trace's threshold, and any explicit randomness (`rv`) stays. A span
/// kept with probability 1 and no threshold of its own is stored as it came (no `th`
/// means an adjusted count of 1). A threshold an upstream head sampler wrote is
/// honoured: the stored threshold is the higher of the two.
public final class TailSampler: Sendable {
    /// What the sampler has done since it started.
    public struct Statistics: Sendable, Equatable {
        public var spansReceived: UInt64 = 0
        public var spansKept: UInt64 = 0
        public var spansDropped: UInt64 = 0
        public var tracesKept: UInt64 = 0
        public var tracesDropped: UInt64 = 0
        /// Decisions made `decision_wait` after the first span.
        public var decidedAtWait: UInt64 = 0
        /// Decisions made `root_wait` after the root span.
        public var decidedAtRoot: UInt64 = 0
        /// Decisions forced early because the buffer was over its byte budget.
        public var forcedByBytes: UInt64 = 0
        /// Decisions forced early because the buffer held `num_traces` traces.
        public var forcedByTraces: UInt64 = 0
        /// Traces decided at once on reaching `max_spans_per_trace`.
        public var forcedBySize: UInt64 = 0
        /// Decided at shutdown, before their time.
        public var forcedAtShutdown: UInt64 = 0
        /// Spans that arrived after their trace's decision and followed it.
        public var lateSpansKept: UInt64 = 0
        public var lateSpansDropped: UInt64 = 0
        /// Decisions made when the trace id alone decides.
        public var decidedByTraceID: UInt64 = 0
        /// Traces kept, by the top-level policy whose threshold kept them.
        public var keptByPolicy: [String: UInt64] = [:]
        /// Spans of those traces, by the same policy.
        public var spansKeptByPolicy: [String: UInt64] = [:]
        /// Traces, spans and bytes held undecided now.
        public var openTraces = 0
        public var heldSpans = 0
        public var heldBytes = 0
        public var maxHeldBytes = 0
        /// Of `heldBytes`, the span-list storage free slots keep for the traces that take them next.
        public var spareListBytes = 0

        /// Adds another shard's counters to these.
        mutating func add(_ other: Statistics) {
            spansReceived += other.spansReceived
            spansKept += other.spansKept
            spansDropped += other.spansDropped
            tracesKept += other.tracesKept
            tracesDropped += other.tracesDropped
            decidedAtWait += other.decidedAtWait
            decidedAtRoot += other.decidedAtRoot
            forcedByBytes += other.forcedByBytes
            forcedByTraces += other.forcedByTraces
            forcedBySize += other.forcedBySize
            forcedAtShutdown += other.forcedAtShutdown
            lateSpansKept += other.lateSpansKept
            lateSpansDropped += other.lateSpansDropped
            decidedByTraceID += other.decidedByTraceID
            keptByPolicy.merge(other.keptByPolicy, uniquingKeysWith: +)
            spansKeptByPolicy.merge(other.spansKeptByPolicy, uniquingKeysWith: +)
            openTraces += other.openTraces
            heldSpans += other.heldSpans
            heldBytes += other.heldBytes
            maxHeldBytes += other.maxHeldBytes
            spareListBytes += other.spareListBytes
        }
    }

    /// A span held: the batch it arrived in (by chunk number) and its row there.
    private struct Held {
        var chunk: Int32
        var row: Int32
    }

    private struct OpenTrace {
        var traceID: TraceID
        var spans: [Held] = []
        var deadline: UInt64
        var generation: UInt32
        var rootSeen = false
    }

    /// A batch as it arrived, held while any of its spans waits for a decision.
    private struct Chunk {
        var batch: SharedBatch
        /// Spans of it still waiting.
        var waiting: Int
        /// What holding it costs, counted until it is released whole.
        var bytes: Int
    }

    private struct Due {
        var slot: Int32
        var generation: UInt32
        var deadline: UInt64
    }

    /// A FIFO of deadlines, each added no earlier than the one before.
    private struct DeadlineQueue {
        var items: [Due] = []
        var head = 0

        var isEmpty: Bool { head == items.count }
        var first: Due? { isEmpty ? nil : items[head] }

        mutating func push(_ due: Due) { items.append(due) }

        /// The entries one, two and four places after the first, where there are any.
        var upcoming: Upcoming { Upcoming(next: item(1), second: item(2), fourth: item(4)) }

        private func item(_ offset: Int) -> Due? { head + offset < items.count ? items[head + offset] : nil }

        mutating func pop() {
            head += 1
            if head >= 4096 && head * 2 >= items.count {
                items.removeFirst(head)
                head = 0
            }
        }

        var bytes: Int { items.capacity * MemoryLayout<Due>.stride }
    }

    /// The traces a queue will have decided next, for `prefetch(_:_:)`.
    private struct Upcoming {
        var next: Due?
        var second: Due?
        var fourth: Due?
    }

    private struct CachedDecision {
        var keep: Bool
        var threshold: Threshold
    }

    /// One shard's traces, and its share of the buffer's bounds.
    private struct State {
        var file: PolicyFile
        var evaluator: Evaluator
        /// What policies remember, one for all shards. Locked after a shard, never before.
        let memory: PolicyMemory
        /// How many shards split the bounds of `file` (buffer bytes, traces, decision cache).
        let shardCount: Int
        var edges = EdgeKnowledge()

        /// Batches holding waiting spans; chunk number `n` is `chunks[n - firstChunk]`.
        var chunks: [Chunk?] = []
        var firstChunk = 0
        var chunkBytes = 0
        var index = TraceIDMap<Int32>()
        var slots: [OpenTrace] = []
        var freeSlots: [Int32] = []
        var byArrival = DeadlineQueue()
        var byRoot = DeadlineQueue()
        /// Spans waiting for their trace's decision.
        var waitingSpans = 0

        var cache = TraceIDMap<CachedDecision>()
        var cacheOrder: [TraceID] = []
        var cacheNext = 0

        /// Storage the span lists of free slots keep (`decide(_:_:now:into:)`).
        var spareListBytes = 0

        var statistics = Statistics()
        var scratch: [UInt8] = []
        /// The storage of the last decided trace's view, emptied, for the next one's.
        var spareParts: [SharedBatch] = []
        var spareSpans: [SpanRef] = []
        var traceStates = ThresholdedTraceState()
    }

    /// Bytes per row of a batch's fixed-width columns and offsets, its plaintext flag,
    /// and a span's place in its trace's list.
    static let bytesPerRow = 128

    /// The memory a held batch takes: its columns as allocated (capacity, not count),
    /// its attribute and extras bytes, and the heap storage of names and status
    /// messages too long to be stored inline.
    static func footprint(of batch: SpanBatch) -> Int {
        var strings = 0
        for name in batch.names where name.utf8.count > 15 { strings += name.utf8.count + 32 }
        for message in batch.statusMessages where message.utf8.count > 15 { strings += message.utf8.count + 32 }
        return max(batch.traceIDs.capacity, batch.count) * bytesPerRow + batch.attributes.bytes.capacity
            + batch.extras.bytes.capacity + strings
            + batch.resources.reduce(0) { $0 + $1.encoded.count + 64 } + batch.scopes.reduce(0) { $0 + $1.count + 32 }
    }
    /// Bytes charged per open trace: its slot, index entry and queue entries.
    static let bytesPerTrace = 160
    /// The most spans a decided trace's list may have room for and keep its storage for
    /// the slot's next trace, and the most free slots of a shard that keep theirs.
    public static let maxSpareList = 64
    public static let maxSpareLists = 4096

    /// The heap storage of a span list: its header and its room for spans.
    private static func listBytes(_ list: [Held]) -> Int {
        list.capacity == 0 ? 0 : 32 + list.capacity * MemoryLayout<Held>.stride
    }

    /// The traces, sharded by trace id: requests whose spans fall in different shards
    /// are held and decided on different cores at once.
    private let shards: Sharded<State>
    private let memory = PolicyMemory()

    /// A sampler with `shards` shards (by default `Shards.defaultCount`); each holds whole
    /// traces and an equal share of the policy file's buffer bounds.
    public init(policy: PolicyFile, shards: Int = Shards.defaultCount) {
        let memory = self.memory
        let count = max(1, shards)
        self.shards = Sharded(count: count) { _ in
            State(file: policy, evaluator: Evaluator(file: policy), memory: memory, shardCount: count)
        }
    }

    /// The policy file in force.
    public var policy: PolicyFile { shards.withLock(0) { $0.file } }

    /// Puts `policy` in force for every decision from now on, traces already held included.
    public func replace(policy: PolicyFile) {
        for index in 0..<shards.count {
            shards.withLock(index) { state in
                state.file = policy
                state.evaluator = Evaluator(file: policy)
            }
        }
        memory.state.withLock { $0 = PolicyState() }
    }

    /// The quantiles `slow_for_edge` policies ask the golden signals for.
    public var edgeQuantiles: Set<Double> { shards.withLock(0) { $0.evaluator.quantiles } }

    /// Updates what the sampler knows of the mesh's edges.
    public func update(edges: EdgeKnowledge) {
        for index in 0..<shards.count { shards.withLock(index) { $0.edges = edges } }
    }

    /// Counters summed over the shards; `maxHeldBytes` is the sum of each shard's peak.
    public var statistics: Statistics {
        var total = Statistics()
        for index in 0..<shards.count {
            total.add(shards.withLock(index) { state in
                var statistics = state.statistics
                statistics.openTraces = state.index.count
                statistics.heldSpans = state.waitingSpans
                statistics.heldBytes = Self.heldBytes(state)
                statistics.spareListBytes = state.spareListBytes
                return statistics
            })
        }
        return total
    }

    /// Takes spans just received without their facts: `plaintext` reads a span's
    /// attributes when it asks (the collector passes the facts its decoder read:
    /// `admit(_:facts:now:into:)`).
    public func admit(_ batch: SpanBatch, now: UInt64, into kept: inout SpanBatch) {
        admit(batch, facts: [], now: now, into: &kept)
    }

    /// Takes spans just received, with their facts (row for row, or none); appends to
    /// `kept` those whose trace is already decided to be kept, and every trace that came
    /// due (`now`: monotonic nanoseconds).
    public func admit(_ batch: SpanBatch, facts: [RequestFacts], now: UInt64, into kept: inout SpanBatch) {
        // What holding the batch costs, and its rows' plaintext flags: reckoned once for
        // all the shards that hold some of it.
        var footprint: Int?
        var plaintext: [Bool]?
        shards.forEach(batch.rowsByShard(shards.count), isEmpty: { _ in false }) { _, rows, state in
            state.statistics.spansReceived += UInt64(rows.count)
            if !state.evaluator.readsContent {
                Self.decideByTraceID(batch, rows: rows, &state, into: &kept)
            } else {
                footprint = footprint ?? Self.footprint(of: batch)
                plaintext = plaintext ?? (facts.count == batch.count ? facts.map { $0.security == .plaintext } : [])
                Self.hold(batch, plaintext: plaintext!, rows: rows, footprint: footprint!, now: now, &state, into: &kept)
                Self.enforceBounds(&state, now: now, into: &kept)
            }
            Self.release(&state, now: now, into: &kept)
        }
    }

    /// Appends to `kept` every trace whose decision came due by `now`.
    public func release(now: UInt64, into kept: inout SpanBatch) {
        for index in 0..<shards.count {
            shards.withLock(index) { state in Self.release(&state, now: now, into: &kept) }
        }
    }

    /// Decides every trace held, now (at shutdown), appending the kept ones to `kept`.
    public func releaseAll(now: UInt64, into kept: inout SpanBatch) {
        for index in 0..<shards.count {
            shards.withLock(index) { state in
                while let due = state.byArrival.first {
                    Self.prefetch(state.byArrival.upcoming, &state)
                    state.byArrival.pop()
                    if Self.decide(due, &state, now: now, into: &kept) { state.statistics.forcedAtShutdown += 1 }
                }
                state.byRoot = DeadlineQueue()
            }
        }
    }

    /// The spans held undecided, shard by shard, in arrival order of their traces.
    public func held() -> SpanBatch {
        var batch = SpanBatch()
        for index in 0..<shards.count { held(shard: index, into: &batch) }
        return batch
    }

    private func held(shard index: Int, into batch: inout SpanBatch) {
        shards.withLock(index) { state in
            for due in state.byArrival.items[state.byArrival.head...] {
                let trace = state.slots[Int(due.slot)]
                guard trace.generation == due.generation, state.index[trace.traceID] == due.slot else { continue }
                let view = Self.view(of: trace, state)
                for (part, spans) in Dictionary(grouping: view.spans, by: \.part).sorted(by: { $0.key < $1.key }) {
                    batch.append(contentsOf: view.shared[part].batch, rows: spans.map(\.row))
                }
            }
        }
    }

    // MARK: Holding

    private static func decideByTraceID(_ batch: SpanBatch, rows: [Int], _ state: inout State, into kept: inout SpanBatch) {
        var spans: [SpanRef] = []
        var thresholds: [Threshold] = []
        // No policy reads content: the verdict is the same for every trace. It is asked with
        // the highest randomness, so that no sub-policy stops early on it.
        let verdict = evaluate(TraceView(batch: batch, rows: []), randomness: Threshold.range - 1, &state, now: 0)
        let readsTraceStates = TraceStateField.maybeSet(in: batch.extras)
        for row in rows {
            let (randomness, upstream) = Self.randomness(batch, row: row, readingTraceState: readsTraceStates)
            guard !verdict.dropped, verdict.threshold.keeps(randomness) else { continue }
            spans.append(SpanRef(part: 0, row: row))
            thresholds.append(max(verdict.threshold, upstream ?? .always))
        }
        state.statistics.decidedByTraceID += UInt64(rows.count)
        state.statistics.spansKept += UInt64(spans.count)
        state.statistics.spansDropped += UInt64(rows.count - spans.count)
        append(TraceView(parts: [SharedBatch(batch)], spans: spans), thresholds: thresholds, &state, into: &kept)
    }

    private static func nanoseconds(_ duration: Duration) -> UInt64 {
        UInt64(duration.components.seconds) * 1_000_000_000 + UInt64(duration.components.attoseconds / 1_000_000_000)
    }

    /// Holds the spans of `batch` at `rows`; `footprint` is what holding the whole batch costs.
    private static func hold(
        _ batch: SpanBatch, plaintext: [Bool], rows: [Int], footprint: Int, now: UInt64, _ state: inout State, into kept: inout SpanBatch
    ) {
        let wait = nanoseconds(state.file.decisionWait)
        let rootWait = nanoseconds(state.file.rootWait)
        let chunk = Int32(state.firstChunk + state.chunks.count)
        let cap = state.file.maxSpansPerTrace
        // Traces that reach their size cap in this batch, decided once it is held.
        var capped: [Int32] = []
        var waiting = 0
        var late: [SpanRef] = []
        var lateThresholds: [Threshold] = []
        for row in rows {
            let traceID = batch.traceIDs[row]
            let isRoot = batch.parentSpanIDs[row] == .zero
            if let slot = state.index[traceID] {
                waiting += 1
                state.slots[Int(slot)].spans.append(Held(chunk: chunk, row: Int32(row)))
                if state.slots[Int(slot)].spans.count == cap { capped.append(slot) }
                if isRoot && !state.slots[Int(slot)].rootSeen {
                    state.slots[Int(slot)].rootSeen = true
                    state.byRoot.push(Due(slot: slot, generation: state.slots[Int(slot)].generation, deadline: now + rootWait))
                }
                continue
            }
            if let cached = state.cache[traceID] {
                if cached.keep {
                    late.append(SpanRef(part: 0, row: row))
                    lateThresholds.append(cached.threshold)
                    state.statistics.lateSpansKept += 1
                    state.statistics.spansKept += 1
                } else {
                    state.statistics.lateSpansDropped += 1
                    state.statistics.spansDropped += 1
                }
                continue
            }
            // A new trace, in a free slot whose span list (emptied, its storage kept) it
            // takes over, or in a new one.
            waiting += 1
            let slot: Int32
            var generation: UInt32 = 0
            if let free = state.freeSlots.popLast() {
                slot = free
                state.spareListBytes -= listBytes(state.slots[Int(slot)].spans)
                generation = state.slots[Int(slot)].generation &+ 1
                state.slots[Int(slot)].traceID = traceID
                state.slots[Int(slot)].deadline = now + wait
                state.slots[Int(slot)].generation = generation
                state.slots[Int(slot)].rootSeen = false
            } else {
                slot = Int32(state.slots.count)
                state.slots.append(OpenTrace(traceID: traceID, deadline: now + wait, generation: 0))
                state.slots[Int(slot)].spans.reserveCapacity(4)
            }
            state.slots[Int(slot)].spans.append(Held(chunk: chunk, row: Int32(row)))
            state.index[traceID] = slot
            state.byArrival.push(Due(slot: slot, generation: generation, deadline: now + wait))
            if isRoot {
                state.slots[Int(slot)].rootSeen = true
                state.byRoot.push(Due(slot: slot, generation: generation, deadline: now + rootWait))
            }
            if cap == 1 { capped.append(slot) }
        }
        if waiting > 0 {
            // The batch is held whole while any shard holds some of it; each shard is
            // charged its share.
            let bytes = rows.count == batch.count ? footprint : footprint * rows.count / max(1, batch.count)
            state.chunks.append(Chunk(batch: SharedBatch(batch, plaintext: plaintext, traceStateRows: rows), waiting: waiting, bytes: bytes))
            state.chunkBytes += bytes
            state.waitingSpans += waiting
        }
        if !late.isEmpty { append(TraceView(parts: [SharedBatch(batch)], spans: late), thresholds: lateThresholds, &state, into: &kept) }
        for slot in capped {
            let trace = state.slots[Int(slot)]
            if decide(Due(slot: slot, generation: trace.generation, deadline: now), &state, now: now, into: &kept) {
                state.statistics.forcedBySize += 1
            }
        }
    }

    /// Decides the oldest traces while the buffer is over its byte budget or trace limit.
    private static func enforceBounds(_ state: inout State, now: UInt64, into kept: inout SpanBatch) {
        let budget = state.file.maxBufferBytes / state.shardCount
        let maxTraces = max(1, state.file.maxTraces / state.shardCount)
        if heldBytes(state) > budget || state.index.count > maxTraces {
            // Down to a margin below the bounds, so that this is not done for every request.
            let bytesTarget = budget * 3 / 4
            let tracesTarget = maxTraces - maxTraces / 8
            while let due = state.byArrival.first, heldBytes(state) > bytesTarget || state.index.count > tracesTarget {
                prefetch(state.byArrival.upcoming, &state)
                state.byArrival.pop()
                let byBytes = heldBytes(state) > bytesTarget
                if decide(due, &state, now: now, into: &kept) {
                    if byBytes { state.statistics.forcedByBytes += 1 } else { state.statistics.forcedByTraces += 1 }
                }
            }
        }
        // A burst leaves the trace table large; it shrinks once mostly empty.
        if state.index.capacity > 1 << 16 && state.index.count < state.index.capacity / 16 {
            state.index.shrink(toHold: state.index.count * 2)
        }
        state.statistics.maxHeldBytes = max(state.statistics.maxHeldBytes, heldBytes(state))
    }

    /// Bytes the buffer holds: the batches its waiting spans arrived in (whole, until
    /// none of their spans waits), its open traces, their span lists, the lists free
    /// slots keep, and its queues.
    private static func heldBytes(_ state: State) -> Int {
        state.chunkBytes + state.byArrival.bytes + state.byRoot.bytes
            + state.index.count * bytesPerTrace + state.chunks.capacity * MemoryLayout<Chunk?>.stride
            + state.index.allocatedBytes
            + state.slots.capacity * MemoryLayout<OpenTrace>.stride + state.spareListBytes
    }

    private static func release(_ state: inout State, now: UInt64, into kept: inout SpanBatch) {
        while let due = state.byRoot.first, due.deadline <= now {
            prefetch(state.byRoot.upcoming, &state)
            state.byRoot.pop()
            if decide(due, &state, now: now, into: &kept) { state.statistics.decidedAtRoot += 1 }
        }
        while let due = state.byArrival.first, due.deadline <= now {
            prefetch(state.byArrival.upcoming, &state)
            state.byArrival.pop()
            if decide(due, &state, now: now, into: &kept) { state.statistics.decidedAtWait += 1 }
        }
    }

    /// Asks the CPU to start loading what the next decisions will read. A decision
    /// reads spans from batches that arrived up to a decision wait ago, long out of
    /// the cache, through a chain of loads: the trace's slot, its span list, then the
    /// spans' columns. Each link is asked for a step before it is needed: the slot
    /// four decisions ahead, the span list two ahead, the columns one ahead.
    ///
    /// The span list and the batches are reached through their references' bits
    /// (`Reach`), not through the arrays that hold them: reading a reference out of
    /// an array retains it, an atomic write to the object that waits for the very
    /// cache line the prefetch asks for.
    private static func prefetch(_ upcoming: Upcoming, _ state: inout State) {
        let slotCount = state.slots.count
        state.slots.withUnsafeBufferPointer { slots in
            if let due = upcoming.fourth, Int(due.slot) < slotCount {
                // A slot may straddle two cache lines: both are asked for.
                let slot = UnsafeRawPointer(slots.baseAddress! + Int(due.slot))
                meshtrace_prefetch_for_read(slot)
                meshtrace_prefetch_for_read(slot + MemoryLayout<OpenTrace>.size - 1)
            }
            if let due = upcoming.second, Int(due.slot) < slotCount, let storage = Reach.spanStorage(of: slots.baseAddress! + Int(due.slot)) {
                // The list's header and, in three lines, up to 20 spans: most traces whole.
                meshtrace_prefetch_for_read(storage)
                meshtrace_prefetch_for_read(storage + 64)
                meshtrace_prefetch_for_read(storage + 128)
            }
            guard let due = upcoming.next, Int(due.slot) < slotCount else { return }
            let trace = slots.baseAddress! + Int(due.slot)
            guard trace.pointee.generation == due.generation else { return }
            let firstChunk = state.firstChunk
            state.chunks.withUnsafeBufferPointer { chunks in
                trace.pointee.spans.withUnsafeBufferPointer { spans in
                    for held in spans {
                        let position = Int(held.chunk) - firstChunk
                        guard position >= 0, position < chunks.count else { continue }
                        Reach.batch(of: chunks.baseAddress! + position)?._withUnsafeGuaranteedRef { $0.prefetch(row: Int(held.row)) }
                    }
                }
            }
        }
    }

    /// References read from where they lie without retaining them, for prefetching
    /// only: nil wherever the layout is not the one assumed (a reference is one word,
    /// an array is its storage's reference, a chunk begins with its batch and an
    /// absent chunk is a null reference), so that prefetching then does nothing.
    private enum Reach {
        static let spansOffset: Int? = MemoryLayout<[Held]>.size == MemoryLayout<UnsafeRawPointer>.size
            ? MemoryLayout<OpenTrace>.offset(of: \OpenTrace.spans) : nil
        static let chunkLayoutHolds = MemoryLayout<Chunk?>.size == MemoryLayout<Chunk>.size
            && MemoryLayout<Chunk>.offset(of: \Chunk.batch) == 0 && MemoryLayout<SharedBatch>.size == MemoryLayout<UnsafeRawPointer>.size

        /// The storage of a trace's span list (its header and first spans).
        @inline(__always)
        static func spanStorage(of trace: UnsafePointer<OpenTrace>) -> UnsafeRawPointer? {
            guard let spansOffset else { return nil }
            return (UnsafeRawPointer(trace) + spansOffset).load(as: UnsafeRawPointer?.self)
        }

        /// The batch of a chunk, unretained; nil for a released chunk.
        @inline(__always)
        static func batch(of chunk: UnsafePointer<Chunk?>) -> Unmanaged<SharedBatch>? {
            guard chunkLayoutHolds, let object = UnsafeRawPointer(chunk).load(as: UnsafeRawPointer?.self) else { return nil }
            return Unmanaged.fromOpaque(object)
        }
    }

    /// The trace's spans where they lie: one part per batch they arrived in.
    private static func view(of trace: OpenTrace, _ state: State) -> TraceView {
        var parts: [SharedBatch] = []
        var spans: [SpanRef] = []
        return view(of: trace, state, parts: &parts, spans: &spans)
    }

    /// The view of `trace` in the storage of `parts` and `spans` (emptied first).
    private static func view(of trace: OpenTrace, _ state: State, parts: inout [SharedBatch], spans: inout [SpanRef]) -> TraceView {
        parts.removeAll(keepingCapacity: true)
        spans.removeAll(keepingCapacity: true)
        spans.reserveCapacity(trace.spans.count)
        trace.spans.withUnsafeBufferPointer { held in
            for position in held.indices {
                let chunk = held[position].chunk
                let part: Int
                // A trace's spans are held in the order their batches arrived, so a
                // chunk other than the span before's is a new part (were it not, a batch
                // would only be listed twice).
                if position > 0, held[position - 1].chunk == chunk {
                    part = spans[position - 1].part
                } else {
                    parts.append(state.chunks[Int(chunk) - state.firstChunk]!.batch)
                    part = parts.count - 1
                }
                spans.append(SpanRef(part: part, row: Int(held[position].row)))
            }
        }
        return TraceView(parts: parts, spans: spans)
    }

    /// Decides the trace `due` names, unless it was decided already. Returns whether it decided.
    private static func decide(_ due: Due, _ state: inout State, now: UInt64, into kept: inout SpanBatch) -> Bool {
        let (traceID, generation) = (state.slots[Int(due.slot)].traceID, state.slots[Int(due.slot)].generation)
        guard generation == due.generation, state.index[traceID] == due.slot else { return false }
        // The view is made in the storage the last decision's left (a decision every
        // few microseconds would otherwise allocate and free two arrays each time).
        var (parts, spans) = (state.spareParts, state.spareSpans)
        (state.spareParts, state.spareSpans) = ([], [])
        let view = view(of: state.slots[Int(due.slot)], state, parts: &parts, spans: &spans)
        (parts, spans) = ([], [])
        let (randomness, upstream) = Self.randomness(view)
        let verdict = evaluate(view, randomness: randomness, &state, now: now)
        let keep = !verdict.dropped && verdict.threshold.keeps(randomness)
        let threshold = max(verdict.threshold, upstream ?? .always)
        let count = view.spans.count
        if keep {
            append(view, thresholds: Array(repeating: threshold, count: count), &state, into: &kept)
            state.statistics.tracesKept += 1
            state.statistics.spansKept += UInt64(count)
            if let policy = verdict.policy {
                let name = state.file.policies[policy].name
                state.statistics.keptByPolicy[name, default: 0] += 1
                state.statistics.spansKeptByPolicy[name, default: 0] += UInt64(count)
            }
        } else {
            state.statistics.tracesDropped += 1
            state.statistics.spansDropped += UInt64(count)
        }
        remember(traceID, CachedDecision(keep: keep, threshold: threshold), &state)
        state.index[traceID] = nil
        state.waitingSpans -= count
        for index in 0..<count {
            let position = Int(state.slots[Int(due.slot)].spans[index].chunk) - state.firstChunk
            state.chunks[position]!.waiting -= 1
            if state.chunks[position]!.waiting == 0 {
                state.chunkBytes -= state.chunks[position]!.bytes
                state.chunks[position] = nil
            }
        }
        // The slot's span list is emptied and, when small, its storage kept for the trace
        // that takes the slot next, which then allocates none; a few thousand free slots
        // keep theirs at most (not the many a burst of traces leaves), counted as held.
        if state.slots[Int(due.slot)].spans.capacity <= maxSpareList && state.freeSlots.count < maxSpareLists {
            state.slots[Int(due.slot)].spans.removeAll(keepingCapacity: true)
            state.spareListBytes += listBytes(state.slots[Int(due.slot)].spans)
        } else {
            state.slots[Int(due.slot)].spans = []
        }
        state.freeSlots.append(due.slot)
        // The view's storage is kept for the next decision (not a huge trace's: at most
        // 64 KiB a shard); its batches are not.
        (parts, spans) = (view.shared, view.spans)
        parts.removeAll(keepingCapacity: true)
        (state.spareParts, state.spareSpans) = (parts, spans.capacity <= 4096 ? spans : [])
        // Chunks are released from the front as their last span is decided.
        var released = 0
        while released < state.chunks.count && state.chunks[released] == nil { released += 1 }
        if released > 0 && (released >= 64 || released == state.chunks.count) {
            state.chunks.removeFirst(released)
            state.firstChunk += released
        }
        return true
    }

    /// The policies' verdict on `trace`.
    private static func evaluate(_ trace: TraceView, randomness: UInt64, _ state: inout State, now: UInt64) -> Verdict {
        state.evaluator.evaluate(trace, randomness: randomness, memory: state.memory, edges: state.edges, now: now)
    }

    private static func remember(_ traceID: TraceID, _ decision: CachedDecision, _ state: inout State) {
        let capacity = state.file.decisionCacheSize / state.shardCount
        guard capacity > 0 else { return }
        if state.cacheOrder.count < capacity {
            state.cacheOrder.append(traceID)
        } else {
            state.cache[state.cacheOrder[state.cacheNext]] = nil
            state.cacheOrder[state.cacheNext] = traceID
            state.cacheNext = (state.cacheNext + 1) % capacity
        }
        state.cache[traceID] = decision
    }

    // MARK: Randomness and thresholds

    /// The trace's randomness (explicit `rv`, else its trace id's 56 low bits) and the
    /// threshold an upstream sampler recorded, from the `ot` entries of its spans.
    private static func randomness(_ trace: TraceView) -> (UInt64, Threshold?) {
        var randomness: UInt64?
        var upstream: Threshold?
        for span in trace.spans {
            guard let traceState = trace.traceState(span), traceState.contains("ot=") else { continue }
            let ot = OTelTraceState(traceState: traceState)
            randomness = randomness ?? ot.randomness
            if let threshold = ot.threshold { upstream = max(upstream ?? .always, threshold) }
        }
        guard let first = trace.spans.first else { return (0, upstream) }
        return (randomness ?? trace.traceID(first).randomness, upstream)
    }

    /// A span's randomness and upstream threshold, as `randomness(_:)` finds a trace's;
    /// its `trace_state` is not read when `readingTraceState` is false (none can be set).
    private static func randomness(_ batch: SpanBatch, row: Int, readingTraceState: Bool) -> (UInt64, Threshold?) {
        guard readingTraceState, let traceState = TraceStateField.read(batch.extras, row: row), traceState.contains("ot=") else {
            return (batch.traceIDs[row].randomness, nil)
        }
        let ot = OTelTraceState(traceState: traceState)
        return (ot.randomness ?? batch.traceIDs[row].randomness, ot.threshold)
    }

    /// Appends the spans of `trace` to `kept`, each with its `tracestate` recording its threshold.
    private static func append(_ trace: TraceView, thresholds: [Threshold], _ state: inout State, into kept: inout SpanBatch) {
        // A trace's spans lie in runs of rows of the same batch: each run reads its batch
        // in place (not a copy of its columns per span).
        var index = 0
        while index < trace.spans.count {
            let part = trace.spans[index].part
            var end = index + 1
            while end < trace.spans.count && trace.spans[end].part == part { end += 1 }
            appendRun(trace.shared[part], trace.spans[index..<end], thresholds[index..<end], &state, into: &kept)
            index = end
        }
    }

    private static func appendRun(
        _ shared: SharedBatch, _ spans: ArraySlice<SpanRef>, _ thresholds: ArraySlice<Threshold>, _ state: inout State,
        into kept: inout SpanBatch
    ) {
        // A kept span's attribute bytes are copied from a batch held for the decision
        // wait, long out of cache: each run asks for them two spans ahead.
        let lookahead = 2
        for span in spans.prefix(lookahead) { shared.batch.attributes.prefetch(row: span.row) }
        for position in spans.indices {
            if position + lookahead < spans.endIndex { shared.batch.attributes.prefetch(row: spans[position + lookahead].row) }
            let row = spans[position].row
            let resource = shared.resourceIndex(of: shared.batch.resourceIndices[row], in: &kept)
            let scope = shared.scopeIndex(of: shared.batch.scopeIndices[row], in: &kept)
            // A span whose tracestate already says its threshold (none says probability 1) stays as it came.
            let rewritten = shared.batch.extras.withUnsafeBytes(ofRow: row) { old in
                guard let rewritten = state.traceStates.rewrite(TraceStateField.valueBytes(old), to: thresholds[position]) else { return false }
                TraceStateField.replace(in: old, with: rewritten, into: &state.scratch)
                return true
            }
            if rewritten {
                state.scratch.withUnsafeBufferPointer { extras in
                    kept.append(row: row, of: shared.batch, resourceIndex: resource, scopeIndex: scope, extras: extras)
                }
            } else {
                kept.append(row: row, of: shared.batch, resourceIndex: resource, scopeIndex: scope)
            }
        }
    }
}

extension TailSampler: SpanAdmission {}
