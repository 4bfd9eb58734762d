import MeshCore
import Synchronization

/// What the policies say of one trace.
struct Verdict {
    /// The lowest threshold any policy gave: the trace is kept when its randomness reaches it.
    var threshold: Threshold = .never
    /// A `drop` policy matched: the trace is not kept, whatever the threshold.
    var dropped = false
    /// The first top-level policy that gave `threshold`.
    var policy: Int?
}

/// What policies remember across traces, shared by every shard of a sampler (so a
/// rate limit or `traces_per_edge` holds for the sampler as a whole); locked only
/// while a policy that remembers reads or updates it.
final class PolicyMemory: Sendable {
    let state = Mutex(PolicyState())
}

/// The mutable state of the policies that have some: rate windows, edges seen.
struct PolicyState {
    /// A window of one second over the spans a rate-limited policy matched, and the
    /// threshold that holds it near its rate.
    struct RateWindow {
        var start: UInt64 = 0
        var spans: Double = 0
        /// Spans per second matched, smoothed over windows.
        var observed: Double?
        var threshold: Threshold = .always

        mutating func threshold(for spans: Int, limit: Double, now: UInt64) -> Threshold {
            if start == 0 { start = now }
            let elapsed = now &- start
            if elapsed >= 1_000_000_000 {
                let rate = self.spans * 1e9 / Double(elapsed)
                observed = observed.map { 0.5 * $0 + 0.5 * rate } ?? rate
                threshold = Threshold(probability: min(1, limit / max(observed!, 1e-9)))
                start = now
                self.spans = 0
            }
            self.spans += Double(spans)
            return threshold
        }
    }

    var rates: [Int: RateWindow] = [:]
    /// Per `new_edge` policy, by its slot: how many traces each edge (by key) has been in.
    var edgeCounts: [IDMap<UInt64, Int>?] = []
}

/// Evaluates a policy file's policies over one trace.
struct Evaluator {
    let file: PolicyFile
    /// Whether any policy needs the trace's spans (otherwise the trace id decides).
    let readsContent: Bool
    /// The quantiles `slow_for_edge` policies compare with.
    let quantiles: Set<Double>
    /// By slot: each `and` policy's sub-policies, those that read only the trace id
    /// first (empty for other policies).
    let andOrder: [[Policy]]
    /// By slot: each `status_code` policy's codes, as a mask of bits `1 << code`.
    let statusMasks: [UInt8]
    /// By slot: whether a `numeric_attribute` policy's key is an HTTP status code,
    /// which the decoder took into a column.
    let readsHTTPStatusColumn: [Bool]

    init(file: PolicyFile) {
        self.file = file
        readsContent = file.policies.contains { $0.readsContent || { if case .drop = $0.rule { return true } else { return false } }($0) }
        var quantiles: Set<Double> = []
        for policy in file.allPolicies {
            if case let .slowForEdge(quantile, _) = policy.rule { quantiles.insert(quantile) }
        }
        self.quantiles = quantiles
        let slots = (file.allPolicies.map(\.slot).max() ?? -1) + 1
        var andOrder = [[Policy]](repeating: [], count: slots)
        var statusMasks = [UInt8](repeating: 0, count: slots)
        var readsHTTPStatusColumn = [Bool](repeating: false, count: slots)
        for policy in file.allPolicies {
            switch policy.rule {
            case let .and(children):
                andOrder[policy.slot] = children.filter { !$0.readsContent } + children.filter(\.readsContent)
            case let .numericAttribute(key, _, _, _):
                readsHTTPStatusColumn[policy.slot] = Self.httpStatusKeys.contains(key)
            case let .statusCode(codes):
                statusMasks[policy.slot] = codes.reduce(0) { $0 | 1 << $1.rawValue }
            default:
                break
            }
        }
        self.andOrder = andOrder
        self.statusMasks = statusMasks
        self.readsHTTPStatusColumn = readsHTTPStatusColumn
    }

    /// The verdict of every policy on `trace`, whose randomness is `randomness`.
    /// Policies after one that keeps with probability 1 are not asked (no threshold
    /// is lower), except `drop` ones.
    func evaluate(_ trace: TraceView, randomness: UInt64, memory: PolicyMemory, edges: EdgeKnowledge, now: UInt64) -> Verdict {
        var verdict = Verdict()
        var context = Context(randomness: randomness, now: now)
        for index in file.policies.indices {
            Self.reading(file.policies, index) { policy in
                if case .drop = policy.rule {
                    if evaluate(policy, trace, edges, &context, memory) < .never { verdict.dropped = true }
                    return
                }
                guard verdict.threshold > .always else { return }
                let threshold = evaluate(policy, trace, edges, &context, memory)
                if threshold < verdict.threshold {
                    verdict.threshold = threshold
                    verdict.policy = index
                }
            }
        }
        return verdict
    }

    /// `body` on policy `index` of `policies`, not retained (the array holds it): a
    /// policy read out of its array is retained and released for every trace, where
    /// the rest of its evaluation may be a comparison or two.
    @inline(__always)
    private static func reading<Result>(_ policies: [Policy], _ index: Int, _ body: (Policy) -> Result) -> Result {
        policies.withUnsafeBufferPointer { reading($0, index, body) }
    }

    @inline(__always)
    private static func reading<Result>(_ policies: UnsafeBufferPointer<Policy>, _ index: Int, _ body: (Policy) -> Result) -> Result {
        Unmanaged.passUnretained(policies[index])._withUnsafeGuaranteedRef(body)
    }

    /// What one evaluation reads besides the trace and the edges, and the trace's
    /// calls once found.
    struct Context {
        let randomness: UInt64
        let now: UInt64
        var calls: [Call]?

        mutating func allCalls(of trace: TraceView) -> [Call] {
            if let calls { return calls }
            let found = trace.calls
            calls = found
            return found
        }
    }

    /// The threshold `policy` gives the trace (`.never` when it does not keep it; for
    /// `drop`, anything else when all its sub-policies match). The trace and the
    /// edges come as arguments, borrowed: read out of the context, each would be
    /// copied for every policy, retaining and releasing every array they hold.
    private func evaluate(
        _ policy: Policy, _ trace: TraceView, _ edges: EdgeKnowledge, _ context: inout Context, _ memory: PolicyMemory
    ) -> Threshold {
        func when(_ condition: Bool) -> Threshold { condition ? .always : .never }
        let now = context.now
        switch policy.rule {
        case .alwaysSample:
            return .always
        case .probabilistic(let threshold):
            return threshold
        case .latency(let threshold, let upper):
            let duration = trace.duration
            return when(duration >= threshold && upper.map { duration < $0 } ?? true)
        case .statusCode:
            return when(trace.hasStatus(mask: statusMasks[policy.slot]))
        case .numericAttribute(_, let min, let max, let invert) where readsHTTPStatusColumn[policy.slot]:
            // The decoder took these into a column, as integers or decimal text.
            return when(trace.httpStatus(in: min...max) != invert)
        case .numericAttribute(let key, let min, let max, let invert):
            let found = trace.anyAttribute(Array(key.utf8)) { value in
                if let number = value.integer { return (min...max).contains(number) }
                if let number = value.double { return Double(min) <= number && number <= Double(max) }
                return false
            }
            return when(found != invert)
        case .stringAttribute(let key, let values, let patterns, let invert):
            let found = trace.anyAttribute(Array(key.utf8)) { value in
                guard let text = value.string else { return false }
                return values.contains(text) || patterns.contains { $0.matches(text) }
            }
            return when(found != invert)
        case .booleanAttribute(let key, let expected, let invert):
            return when(trace.anyAttribute(Array(key.utf8)) { $0.bool == expected } != invert)
        case .rateLimiting(let limit):
            return memory.state.withLock { $0.rates[policy.slot, default: .init()].threshold(for: trace.spanCount, limit: limit, now: now) }
        case .spanCount(let min, let max):
            return when((min...max).contains(trace.spanCount))
        case .traceState(let key, let values):
            let wanted = Set(values.map { "\(key)=\($0)" })
            return when(trace.traceStates.contains { state in
                state.split(separator: ",").contains { wanted.contains($0.trimmingCharacters(in: .whitespaces)) }
            })
        case .and:
            // Those that read only the trace id first: when they cannot keep it, the rest need not look.
            var threshold = Threshold.always
            let kept = andOrder.withUnsafeBufferPointer { orders in
                orders[policy.slot].withUnsafeBufferPointer { children in
                    for child in children.indices {
                        threshold = Swift.max(threshold, Self.reading(children, child) { evaluate($0, trace, edges, &context, memory) })
                        if !threshold.keeps(context.randomness) { return false }
                    }
                    return true
                }
            }
            return kept ? threshold : .never
        case .drop(let children):
            for child in children where evaluate(child, trace, edges, &context, memory) == .never { return .never }
            return .always
        case .composite(let limit, let children):
            var threshold = Threshold.never
            for (index, child) in children.enumerated() {
                let own = evaluate(child.policy, trace, edges, &context, memory)
                guard own < .never else { continue }
                let key = policy.slot << 8 | index
                let share = memory.state.withLock {
                    $0.rates[key, default: .init()].threshold(for: trace.spanCount, limit: limit * child.share, now: now)
                }
                threshold = Swift.min(threshold, Swift.max(own, share))
            }
            return threshold
        case .edge(let caller, let callee):
            return when(context.allCalls(of: trace).contains { call in
                (caller == "*" || trace.name(call.caller) == caller) && (callee == "*" || trace.name(call.callee) == callee)
            })
        case .newEdge(let perEdge, let maxEdges):
            // Only the calls' edge keys are read: no call is built.
            let isNew = trace.withEdgeKeys { keys in
                memory.state.withLock { state -> Bool in
                    if state.edgeCounts.count <= policy.slot {
                        state.edgeCounts.append(contentsOf: repeatElement(nil, count: policy.slot + 1 - state.edgeCounts.count))
                    }
                    if state.edgeCounts[policy.slot] == nil {
                        state.edgeCounts[policy.slot] = Self.edgeCounts(known: edges.known, perEdge: perEdge)
                    }
                    var isNew = false
                    for key in keys {
                        // Counted where the table lies, not in a copy of it.
                        state.edgeCounts[policy.slot]!.withCount(of: key, limit: maxEdges) { count in
                            if count < perEdge {
                                isNew = true
                                count += 1
                            }
                        }
                    }
                    return isNew
                }
            }
            return when(isNew)
        case .slowForEdge(let quantile, let scope):
            guard let table = edges.keyed[quantile] else { return .never }
            func slow(_ call: Call) -> Bool {
                guard let latency = table[call.key], let bound = call.serverSide ? latency.server : latency.client else { return false }
                return call.duration > bound
            }
            switch scope {
            case .root: return when(trace.entryCall.map(slow) ?? false)
            case .any: return when(context.allCalls(of: trace).contains(where: slow))
            }
        case .plaintext:
            return when(trace.hasPlaintext)
        }
    }

    private static let httpStatusKeys: Set<String> = ["http.response.status_code", "http.status_code"]

    /// A `new_edge` table that counts the edges known before the sampler started as seen enough.
    private static func edgeCounts(known: Set<EdgeName>, perEdge: Int) -> IDMap<UInt64, Int> {
        var counts = IDMap<UInt64, Int>(minimumCapacity: known.count)
        for edge in known where counts[edge.key] == nil { counts[edge.key] = perEdge }
        return counts
    }
}

/// What the golden signals say of the mesh's edges, as of the last refresh.
public struct EdgeKnowledge: Sendable {
    /// Per quantile asked for (0.99, say): each edge's live latency at it.
    public var quantiles: [Double: [EdgeName: EdgeLatency]] = [:] {
        didSet { keyed = Self.keyed(quantiles) }
    }
    /// Edges that carried traffic before the sampler started.
    public var known: Set<EdgeName> = []
    /// `quantiles` by edge key.
    private(set) var keyed: [Double: [UInt64: EdgeLatency]] = [:]

    public init(quantiles: [Double: [EdgeName: EdgeLatency]] = [:], known: Set<EdgeName> = []) {
        self.quantiles = quantiles
        self.known = known
        keyed = Self.keyed(quantiles)
    }

    private static func keyed(_ quantiles: [Double: [EdgeName: EdgeLatency]]) -> [Double: [UInt64: EdgeLatency]] {
        quantiles.mapValues { table in Dictionary(table.map { ($0.key.key, $0.value) }, uniquingKeysWith: { first, _ in first }) }
    }
}

extension IDMap where Key == UInt64, Value == Int {
    /// Runs `update` on the count of `edge` (a new edge starts at 0, while fewer than
    /// `limit` edges are known; past that, new edges count as seen).
    mutating func withCount(of edge: UInt64, limit: Int, _ update: (inout Int) -> Void) {
        let position = position(of: edge)
        if position.found {
            var count = value(at: position)
            update(&count)
            setValue(count, at: position)
        } else if self.count < limit {
            var count = 0
            update(&count)
            insert(count, for: edge, at: position)
        }
    }
}
