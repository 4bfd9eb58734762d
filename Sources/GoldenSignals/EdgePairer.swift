import MeshCore

/// Pairs each CLIENT span with the SERVER span that is its child: two halves of one
/// request over an edge, exported by two proxies at different times.
///
/// A half waits for its partner for a window that adapts to its edge: four times
/// the longest gap seen lately between the two halves of that edge's requests,
/// within `minimumWindow…maximumWindow`. What is still alone when its window closes
/// is an edge to (or from) a workload without a sidecar, and still counts. The
/// waiting room is bounded; when full, the half whose window closes first leaves
/// early. A partner arriving after its half left is recognised (for a while) and
/// not counted twice.
struct EdgePairer {
    struct Settings {
        var minimumWindow: UInt64 = 10_000_000_000
        var maximumWindow: UInt64 = 600_000_000_000
        /// Halves that may wait at once (each costs 150 bytes or more: an 88-byte slot in a
        /// table at most three quarters full, and an entry among the deadlines).
        var maxPending = 200_000
        /// Keys of halves that left unpaired, remembered so a late partner is not counted again.
        var rememberedExpired = 100_000
    }

    /// The span a pair shares: the CLIENT span's id, which is the SERVER span's parent.
    struct Key: Hashable, IDMapKey {
        var trace: TraceID
        var span: SpanID

        static var zero: Key { Key(trace: .zero, span: .zero) }

        var mixedBits: UInt64 {
            (trace.low ^ (trace.high &* 0xC2B2_AE3D_27D4_EB4F) ^ (span.value &* 0x1656_67B1_9E37_79F9)) &* 0x9E37_79B9_7F4A_7C15
        }
    }

    /// One side of a request, as it waits in the room: its fields packed into 64
    /// bytes (a slot of the room is 88), since the room can hold a great many.
    struct Half {
        var workload: Int32
        /// For a CLIENT span: the workload its attributes name as the peer (a virtual
        /// one, by service name), or -1 when they name none.
        var peer: Int32
        /// The span's end, nanoseconds since the epoch (it picks the bucket).
        var end: UInt64
        /// Monotonic nanoseconds: when it arrived and when its window closes.
        var arrival: UInt64 = 0
        var deadline: UInt64 = 0
        private let requestBytes: UInt64
        private let responseBytes: UInt64
        /// A half's request always has a duration: its own span's.
        private let duration: Signals.Latency
        private let flags: Flags
        /// What the edge is if this half stays alone.
        let connection: ConnectionType
        private let security: Security

        private struct Flags: OptionSet {
            let rawValue: UInt8
            static let client = Flags(rawValue: 1)
            static let root = Flags(rawValue: 2)
            static let failed = Flags(rawValue: 4)
            static let clientError = Flags(rawValue: 8)
        }

        init(isClient: Bool, isRoot: Bool = false, workload: Int32, peer: Int32, connection: ConnectionType,
             request: Signals.Request, end: UInt64) {
            self.workload = workload
            self.peer = peer
            self.end = end
            requestBytes = request.requestBytes
            responseBytes = request.responseBytes
            duration = request.duration ?? Signals.Latency(nanoseconds: 0)
            var flags: Flags = []
            if isClient { flags.insert(.client) }
            if isRoot { flags.insert(.root) }
            if request.failed { flags.insert(.failed) }
            if request.clientError { flags.insert(.clientError) }
            self.flags = flags
            self.connection = connection
            security = request.security
        }

        var isClient: Bool { flags.contains(.client) }
        /// A SERVER span without a parent: the entry of the mesh.
        var isRoot: Bool { flags.contains(.root) }

        /// The request as its own side saw it.
        var request: Signals.Request {
            Signals.Request(
                failed: flags.contains(.failed), clientError: flags.contains(.clientError), requestBytes: requestBytes,
                responseBytes: responseBytes, security: security, duration: duration, serverDuration: nil)
        }
    }

    /// What happened to a half offered. The half it concerns, when another, is handed
    /// back through `offer`'s `other`: an enum carrying two halves is copied out of the
    /// call whole, for every span.
    enum Outcome {
        /// It waits for its partner.
        case pending
        /// Its partner was waiting (now in `other`): one request over the edge.
        case paired
        /// It waits, and the room was full: the half in `other` left early, unpaired.
        case evicted
        /// Its partner already left unpaired and was counted; this half is not.
        case late
    }

    struct Statistics: Sendable, Equatable {
        var paired: UInt64 = 0
        /// Root SERVER spans: edges from `user`.
        var roots: UInt64 = 0
        var expiredClients: UInt64 = 0
        var expiredServers: UInt64 = 0
        /// Halves that left before their window closed because the room was full.
        var evicted: UInt64 = 0
        /// Partners that arrived after their half left.
        var late: UInt64 = 0

        mutating func add(_ other: Statistics) {
            paired += other.paired
            roots += other.roots
            expiredClients += other.expiredClients
            expiredServers += other.expiredServers
            evicted += other.evicted
            late += other.late
        }
    }

    let settings: Settings
    private(set) var pending = IDMap<Key, Half>()
    var statistics = Statistics()
    /// Deadlines of pending halves, earliest first (entries of halves that paired are skipped when reached).
    private var deadlines = DeadlineHeap()
    /// Longest recent gap between the halves of an edge, and when it was seen, by `WindowGroup.packed`.
    private var gaps = IDMap<UInt64, (gap: UInt64, seen: UInt64)>()
    /// Halves that left unpaired: when they arrived, in the order they left.
    private var expired = IDMap<Key, UInt64>()
    private var expiredOrder: [Key] = []
    private var expiredNext = 0

    init(settings: Settings) {
        self.settings = settings
    }

    /// The edge a half belongs to, as far as its own side tells.
    private struct WindowGroup {
        var workload: Int32
        var peer: Int32
        var isClient: Bool

        /// The three in one word, the key of `gaps`.
        var packed: UInt64 {
            UInt64(UInt32(bitPattern: workload)) << 32 | UInt64(UInt32(bitPattern: peer)) << 1 | (isClient ? 1 : 0)
        }
    }

    /// Halves the longest recent gap after 10 minutes.
    private static let gapHalfLife: UInt64 = 600_000_000_000

    /// Mutating, though it changes nothing: called from `offer`, which holds the
    /// pairer for writing, a non-mutating call copies the whole pairer for the call.
    private mutating func window(for group: WindowGroup, now: UInt64) -> UInt64 {
        guard let (gap, seen) = gaps[group.packed] else { return settings.minimumWindow }
        let halvings = min(63, (now >= seen ? now - seen : 0) / Self.gapHalfLife)
        let recent = gap >> halvings
        let (scaled, overflow) = recent.multipliedReportingOverflow(by: 4)
        return min(settings.maximumWindow, max(settings.minimumWindow, overflow ? .max : scaled))
    }

    private mutating func learn(gap: UInt64, group: WindowGroup, now: UInt64) {
        gaps.modify(group.packed, default: (0, now)) { current in
            let halvings = min(63, (now >= current.seen ? now - current.seen : 0) / Self.gapHalfLife)
            if gap >= current.gap >> halvings { current = (gap, now) }
        }
    }

    private static func group(of half: Half) -> WindowGroup {
        WindowGroup(workload: half.workload, peer: half.peer, isClient: half.isClient)
    }

    /// Starts bringing the slot `key` would wait in into the cache (see `IDMap.prefetch(_:)`).
    /// Mutating, though it changes nothing: the aggregator calls it while it holds
    /// itself for writing, and a non-mutating call there (or one through `pending`)
    /// copies the pairer (or the map) for the call, retaining all it holds.
    @inline(__always)
    mutating func prefetch(_ key: Key) {
        pending.prefetch(key)
    }

    /// Offers `half`, waiting under `key`; `other` receives the partner it pairs with
    /// or the half it pushes out.
    mutating func offer(_ half: Half, key: Key, now: UInt64, other: inout Half) -> Outcome {
        // One probe of the room for all that follows: nothing below changes it before
        // the half is placed.
        let position = pending.position(of: key)
        let waiting = position.found ? pending.value(at: position) : nil
        if let waiting, waiting.isClient != half.isClient {
            pending.remove(at: position)
            statistics.paired += 1
            learn(gap: now >= waiting.arrival ? now - waiting.arrival : 0, group: Self.group(of: waiting), now: now)
            other = waiting
            return .paired
        }
        if !expired.isEmpty, let arrival = expired.removeValue(forKey: key) {
            // Its partner waited in vain; widen this edge's window for the next ones.
            statistics.late += 1
            learn(gap: now >= arrival ? now - arrival : 0, group: Self.group(of: half), now: now)
            return .late
        }
        var half = half
        half.arrival = now
        if let waiting {
            // A second half of the same side under one key (a retried export): keep one.
            half.deadline = waiting.deadline
            pending.setValue(half, at: position)
            return .pending
        }
        half.deadline = now + window(for: Self.group(of: half), now: now)
        pending.insert(half, for: key, at: position)
        deadlines.push(half.deadline, key)
        compactDeadlinesIfStale()
        if pending.count > settings.maxPending, let oldest = popEarliest() {
            statistics.evicted += 1
            countExpired(oldest)
            other = oldest.half
            return .evicted
        }
        return .pending
    }

    /// Puts back a half saved by a checkpoint.
    mutating func restore(_ half: Half, key: Key) {
        pending[key] = half
        deadlines.push(half.deadline, key)
    }

    /// The next half whose window has closed by `now`, removed; nil when none has.
    mutating func popExpired(now: UInt64) -> Half? {
        while let (deadline, key) = deadlines.peek, deadline <= now {
            deadlines.pop()
            guard let half = pending[key], half.deadline == deadline else { continue }
            pending[key] = nil
            countExpired((key, half))
            return half
        }
        return nil
    }

    private mutating func popEarliest() -> (key: Key, half: Half)? {
        while let (deadline, key) = deadlines.peek {
            deadlines.pop()
            guard let half = pending[key], half.deadline == deadline else { continue }
            pending[key] = nil
            return (key, half)
        }
        return nil
    }

    private mutating func countExpired(_ entry: (key: Key, half: Half)) {
        if entry.half.isClient { statistics.expiredClients += 1 } else { statistics.expiredServers += 1 }
        guard settings.rememberedExpired > 0 else { return }
        if expiredOrder.count < settings.rememberedExpired {
            expiredOrder.append(entry.key)
        } else {
            expired[expiredOrder[expiredNext]] = nil
            expiredOrder[expiredNext] = entry.key
            expiredNext = (expiredNext + 1) % settings.rememberedExpired
        }
        expired[entry.key] = entry.half.arrival
    }

    /// Rebuilds the deadline heap when most of its entries belong to halves that paired.
    private mutating func compactDeadlinesIfStale() {
        guard deadlines.count > 1024, deadlines.count > 4 * pending.count else { return }
        deadlines = DeadlineHeap()
        pending.forEach { key, half in deadlines.push(half.deadline, key) }
    }
}

/// A binary min-heap of (deadline, key).
struct DeadlineHeap {
    private var items: [(deadline: UInt64, key: EdgePairer.Key)] = []

    var count: Int { items.count }

    var peek: (UInt64, EdgePairer.Key)? { items.first.map { ($0.deadline, $0.key) } }

    mutating func push(_ deadline: UInt64, _ key: EdgePairer.Key) {
        items.append((deadline, key))
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard items[child].deadline < items[parent].deadline else { break }
            items.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() {
        guard !items.isEmpty else { return }
        items.swapAt(0, items.count - 1)
        items.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < items.count && items[left].deadline < items[smallest].deadline { smallest = left }
            if right < items.count && items[right].deadline < items[smallest].deadline { smallest = right }
            if smallest == parent { return }
            items.swapAt(parent, smallest)
            parent = smallest
        }
    }
}
