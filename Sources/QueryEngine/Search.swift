import Dispatch
import MeshCore
import SegmentStore
import Synchronization

/// A trace search: span-level conditions (a TraceQL query), a window on span start
/// times, and how many traces to return.
///
/// Conditions select spans; the answer is the traces that hold a matching span for
/// each spanset the query needs, newest first, each returned whole.
public struct TraceSearch: Sendable {
    public var query: TraceQL
    /// Nanoseconds since the epoch: a matching span must start within it.
    public var window: ClosedRange<UInt64>
    public var limit: Int
    /// Matching spans listed per spanset in each result (Tempo's `spss`).
    public var spansPerSpanset: Int

    public init(query: TraceQL, window: ClosedRange<UInt64>, limit: Int = 20, spansPerSpanset: Int = 3) {
        self.query = query
        self.window = window
        self.limit = limit
        self.spansPerSpanset = spansPerSpanset
    }
}

/// One trace a search found: the trace whole, what sums it up, and the spans that matched.
public struct TraceSummary: Sendable {
    public struct ServiceStats: Sendable, Equatable {
        public var spans: Int
        public var errors: Int
    }

    public var traceID: TraceID
    /// The root span's service and name; empty when the root span is not stored.
    public var rootService: String
    public var rootName: String
    /// Nanoseconds since the epoch: the earliest span start.
    public var start: UInt64
    /// Nanoseconds from the earliest start to the latest end.
    public var duration: UInt64
    public var spanCount: Int
    /// Spans with status ERROR.
    public var errorCount: Int
    public var services: [String: ServiceStats]
    /// Per spanset of the query, rows of `spans` that matched (at most `spansPerSpanset`), and how many did.
    public var matched: [(rows: [Int], count: Int)]
    /// Every stored span of the trace, sorted.
    public var spans: SpanBatch

    /// Sums up `spans`, the whole of one trace, with no matched rows.
    public init(trace spans: SpanBatch) {
        self.init(trace: spans, facts: TraceFacts(spans))
    }

    init(trace spans: SpanBatch, facts: TraceFacts) {
        self.spans = spans
        traceID = spans.traceIDs.first ?? .zero
        rootService = facts.rootService
        rootName = facts.rootName
        duration = facts.duration
        start = spans.startTimes.min() ?? 0
        spanCount = spans.count
        var services: [String: ServiceStats] = [:]
        var errors = 0
        for row in 0..<spans.count {
            let failed = spans.statusCodes[row] == .error
            if failed { errors += 1 }
            services[spans.serviceName(at: row), default: ServiceStats(spans: 0, errors: 0)].spans += 1
            if failed { services[spans.serviceName(at: row)]!.errors += 1 }
        }
        errorCount = errors
        self.services = services
        matched = []
    }
}

extension TraceFacts {
    /// The trace intrinsics of `spans`, the whole of one trace: its root is the
    /// earliest span without a parent in the trace.
    init(_ spans: SpanBatch) {
        let present = Set(spans.spanIDs)
        var root: Int?
        for row in 0..<spans.count where spans.parentSpanIDs[row] == .zero || !present.contains(spans.parentSpanIDs[row]) {
            // A span whose parent is elsewhere is only the root when no true root is stored.
            let isTrueRoot = spans.parentSpanIDs[row] == .zero
            if let current = root {
                let currentIsTrueRoot = spans.parentSpanIDs[current] == .zero
                if currentIsTrueRoot && !isTrueRoot { continue }
                if currentIsTrueRoot == isTrueRoot && spans.startTimes[current] <= spans.startTimes[row] { continue }
            }
            root = row
        }
        let start = spans.startTimes.min() ?? 0
        let end = spans.endTimes.max() ?? start
        self.init(rootService: root.map { spans.serviceName(at: $0) } ?? "", rootName: root.map { spans.names[$0] } ?? "",
                  duration: end >= start ? end - start : 0)
    }
}

extension QueryEngine {
    /// The traces that match `search`, newest first (by their newest matching span).
    ///
    /// Store parts are read newest first (by their latest span end). After each, the
    /// candidates newer than anything the remaining parts can hold are final in order,
    /// and are confirmed against their whole trace; the search stops once `limit` are.
    public func search(_ search: TraceSearch) throws -> [TraceSummary] {
        guard search.limit > 0 else { return [] }
        let conditions = search.query.spansets.map(CompiledCondition.init)
        let window = search.window
        // Segments are read as facts (a few columns) unless a condition looks beyond them.
        let beyondFacts = search.query.spansets.contains(where: \.readsBeyondFacts)

        enum Part {
            case block(SpanBatch)
            case segment(SegmentReader)
        }
        var parts: [(part: Part, latestEnd: UInt64)] = []
        for block in snapshot.unsealed where !block.isEmpty && search.query.couldMatch(services: Set(block.resources.map(\.serviceName))) {
            parts.append((.block(block), block.endTimes.max() ?? 0))
        }
        for segment in snapshot.segments
        where segment.footer.minStartTime <= window.upperBound && segment.footer.maxEndTime >= window.lowerBound
            && search.query.couldMatch(services: Set(segment.footer.services)) {
            parts.append((.segment(segment), segment.footer.maxEndTime))
        }
        parts.sort { $0.latestEnd > $1.latestEnd }

        // Each trace with a span that may match, and the latest start of such a span.
        var candidates: [TraceID: UInt64] = [:]
        // Traces already confirmed or refused against their whole trace.
        var decided: Set<TraceID> = []
        var results: [TraceSummary] = []
        // When every spanset names its services, spans of other services are passed over unread.
        let services: Set<String>? = search.query.spansets.reduce(Set<String>()) { union, condition in
            guard let union, let required = condition.requiredServices else { return nil }
            return union.union(required)
        }
        func merge(_ found: [(TraceID, UInt64)]) {
            for (id, start) in found where !decided.contains(id) {
                if let known = candidates[id], known >= start { continue }
                candidates[id] = start
            }
        }
        var index = 0
        while index < parts.count {
            // The last part read this round: a run of fact-readable segments is read together.
            var last = index
            switch parts[index].part {
            case .block(let block):
                merge(Self.matches(block, conditions, window, services))
            case .segment(let segment) where !beyondFacts && segment.hasSpanFacts:
                // This segment and the fact-readable ones after it, until they have blocks
                // enough to read to keep every core busy, are read together.
                var group: [ScanPlan] = []
                var blocks = 0
                for next in index..<parts.count where blocks < Self.blocksPerScan {
                    guard case .segment(let reader) = parts[next].part, reader.hasSpanFacts else { break }
                    let plan = self.plan(reader, conditions, window, services)
                    group.append(plan)
                    blocks += plan.blocks.count
                    last = next
                }
                merge(scan(group, conditions, window, services))
            case .segment(let segment):
                if let batch = reading(segment, { segment throws(StoreError) in try segment.readBatch(attributes: beyondFacts) }) {
                    merge(Self.matches(batch, conditions, window, services))
                }
            }
            index = last + 1
            // Spans of the parts still to read end no later than this, so start no later.
            let horizon = index < parts.count ? parts[index].latestEnd : 0
            var settled = candidates.filter { $0.value > horizon || index == parts.count }
                .sorted { ($0.value, $0.key) > ($1.value, $1.key) }
                .map(\.key)[...]
            while !settled.isEmpty {
                // As many traces as could still fill the answer are read at once, on every core.
                let wave = settled.prefix(search.limit - results.count)
                settled = settled.dropFirst(wave.count)
                for (id, spans) in zip(wave, try traces(Array(wave))) {
                    candidates[id] = nil
                    decided.insert(id)
                    guard let spans, let summary = Self.confirm(search, conditions, spans) else { continue }
                    results.append(summary)
                    if results.count == search.limit { return results }
                }
            }
        }
        return results
    }

    /// Blocks read together when a search scans segments: enough to keep both cores of
    /// a small machine busy and more, few enough that reading past the answer costs little.
    static let blocksPerScan = 32

    /// A segment's blocks a search reads: those in its window whose summaries say a span may match.
    struct ScanPlan {
        var segment: SegmentReader
        var dictionaries: (names: [String], resources: [ResourceEntry])
        var blocks: [Int]
    }

    private func plan(
        _ segment: SegmentReader, _ conditions: [CompiledCondition], _ window: ClosedRange<UInt64>, _ services: Set<String>?
    ) -> ScanPlan {
        guard let dictionaries = reading(segment, { segment throws(StoreError) in try segment.factDictionaries() }) else {
            return ScanPlan(segment: segment, dictionaries: ([], []), blocks: [])
        }
        let serviceNames = dictionaries.resources.map(\.serviceName)
        // Resources of services no spanset names are passed over before any condition is asked.
        let allowed = serviceNames.map { services?.contains($0) ?? true }
        // A segment whose summaries cannot be read is reported; its blocks are read whole.
        let summaries = reading(segment) { segment throws(StoreError) in try segment.summaries() }
        var blocks: [Int] = []
        for (block, info) in segment.footer.blocks.enumerated()
        where info.minStartTime <= window.upperBound && info.maxEndTime >= window.lowerBound {
            // A block whose summary says no span of it can match is passed over unread.
            if let summary = summaries?[block], !Self.mayMatch(summary, conditions, serviceNames, allowed: allowed) { continue }
            blocks.append(block)
        }
        return ScanPlan(segment: segment, dictionaries: dictionaries, blocks: blocks)
    }

    /// The spans of the planned blocks that may match, as (trace, start): the blocks'
    /// facts are read and scanned on every core.
    private func scan(
        _ group: [ScanPlan], _ conditions: [CompiledCondition], _ window: ClosedRange<UInt64>, _ services: Set<String>?
    ) -> [(TraceID, UInt64)] {
        let work = group.enumerated().flatMap { member, plan in plan.blocks.map { (member, $0) } }
        let found = Mutex<[[(TraceID, UInt64)]]>(Array(repeating: [], count: work.count))
        DispatchQueue.concurrentPerform(iterations: work.count) { item in
            let (member, block) = work[item]
            let plan = group[member]
            guard let facts = reading(plan.segment, { segment throws(StoreError) in try segment.facts(block: block) }) else { return }
            let rows = FactRows(facts: facts, names: plan.dictionaries.names, resources: plan.dictionaries.resources)
            let matched = Self.matches(rows, conditions, window, services)
            found.withLock { $0[item] = matched }
        }
        return found.withLock { $0 }.flatMap { $0 }
    }

    /// Every stored span of each trace of `ids` (nil where none is), read on every core.
    func traces(_ ids: [TraceID]) throws -> [SpanBatch?] {
        let found = Mutex<[Result<SpanBatch?, any Error>]>(Array(repeating: .success(nil), count: ids.count))
        DispatchQueue.concurrentPerform(iterations: ids.count) { item in
            let result = Result { try trace(ids[item]) }
            found.withLock { $0[item] = result }
        }
        return try found.withLock { $0 }.map { try $0.get() }
    }

    /// Whether a span of the block `summary` sums up may satisfy a condition; groups of
    /// resources not `allowed` are not asked.
    static func mayMatch(_ summary: BlockSummary, _ conditions: [CompiledCondition], _ services: [String], allowed: [Bool]) -> Bool {
        summary.groups.contains { group in
            allowed[Int(group.resource)] && conditions.contains { $0.mayMatch(group, service: services[Int(group.resource)]) }
        }
    }

    /// The rows of `rows` that started in `window` and may satisfy a condition, as
    /// (trace, start); rows of resources whose service is not in `services` (when
    /// given) are passed over.
    static func matches<Rows: SpanRows>(
        _ rows: Rows, _ conditions: [CompiledCondition], _ window: ClosedRange<UInt64>, _ services: Set<String>?
    ) -> [(TraceID, UInt64)] {
        let allowed = services.map { services in rows.resourceTable.map { services.contains($0.serviceName) } }
        var found: [(TraceID, UInt64)] = []
        for row in 0..<rows.count {
            if let allowed, !allowed[rows.resourceIndex(row)] { continue }
            let start = rows.start(row)
            guard window.contains(start) else { continue }
            if conditions.contains(where: { $0.evaluate(rows, row, trace: nil) != .no }) {
                found.append((rows.traceID(row), start))
            }
        }
        return found
    }

    /// The summary of `spans` (one whole trace) when it satisfies the query, with its matching spans.
    static func confirm(_ search: TraceSearch, _ conditions: [CompiledCondition], _ spans: SpanBatch) -> TraceSummary? {
        let facts = TraceFacts(spans)
        var matched: [(rows: [Int], count: Int)] = []
        for condition in conditions {
            var rows: [Int] = []
            var count = 0
            for row in 0..<spans.count where search.window.contains(spans.startTimes[row]) && condition.evaluate(spans, row, trace: facts) == .yes {
                count += 1
                if rows.count < search.spansPerSpanset { rows.append(row) }
            }
            matched.append((rows, count))
        }
        var next = 0
        func holds(_ query: TraceQL) -> Bool {
            switch query {
            case .spanset:
                defer { next += 1 }
                return matched[next].count > 0
            case .and(let left, let right):
                let l = holds(left)
                let r = holds(right)
                return l && r
            case .or(let left, let right):
                let l = holds(left)
                let r = holds(right)
                return l || r
            }
        }
        guard holds(search.query) else { return nil }
        var summary = TraceSummary(trace: spans, facts: facts)
        summary.matched = matched
        return summary
    }
}
