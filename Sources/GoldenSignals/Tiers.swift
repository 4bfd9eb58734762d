/// Golden signals at three resolutions — 10 s, 1 min and 1 h by default — each
/// kept for its own retention. Every row counted goes into every resolution at
/// least as coarse as its own, so a query over a long window merges a few coarse
/// buckets and only its ragged ends from finer ones.
struct Tiers {
    struct Tier {
        /// Bucket width, nanoseconds.
        let width: UInt64
        /// How long buckets are kept, nanoseconds.
        let retention: UInt64
        /// Signals by bucket start and series id.
        var buckets: [UInt64: [Int32: Signals]] = [:]
        /// Buckets before this were pruned.
        var horizon: UInt64 = 0
    }

    private(set) var tiers: [Tier]

    /// `resolutions` finest first, each width a multiple of the one before.
    init(resolutions: [(width: UInt64, retention: UInt64)]) {
        precondition(!resolutions.isEmpty)
        tiers = resolutions.map { Tier(width: $0.width, retention: $0.retention) }
    }

    var widths: [UInt64] { tiers.map(\.width) }

    /// Adds `signals` of `series` in the bucket starting at `bucket`, a bucket of
    /// width `resolution`, to that tier and every coarser one whose retention
    /// still covers it at `now` (nanoseconds since the epoch).
    mutating func add(_ signals: Signals, series: Int32, bucket: UInt64, resolution: UInt64, now: UInt64) {
        for index in tiers.indices where tiers[index].width >= resolution {
            let tier = tiers[index]
            guard bucket + tier.width + tier.retention > now else { continue }
            let start = bucket / tier.width * tier.width
            tiers[index].buckets[start, default: [:]][series, default: Signals()].merge(signals)
        }
    }

    /// Drops the buckets each tier no longer keeps at `now`.
    mutating func prune(now: UInt64) {
        for index in tiers.indices {
            let tier = tiers[index]
            guard now > tier.retention + tier.width else { continue }
            let horizon = now - tier.retention - tier.width
            tiers[index].buckets = tier.buckets.filter { $0.key >= horizon }
            tiers[index].horizon = max(tier.horizon, horizon / tier.width * tier.width)
        }
    }

    /// The signals of every series over `window` (nanoseconds since the epoch): the
    /// coarsest buckets that fit inside it, finer ones at its ends, and at the
    /// finest resolution every bucket that overlaps it. Where a finer tier no longer
    /// holds a range, the coarser bucket around it counts whole.
    func signals(in window: ClosedRange<UInt64>, including include: (Int32) -> Bool = { _ in true }) -> [Int32: Signals] {
        var merged: [Int32: Signals] = [:]
        visit(window) { id, signals in
            if include(id) { merged[id, default: Signals()].merge(signals) }
        }
        return merged
    }

    /// The series with any signals over `window`, without merging them.
    func present(in window: ClosedRange<UInt64>) -> Set<Int32> {
        var present: Set<Int32> = []
        visit(window) { id, _ in present.insert(id) }
        return present
    }

    /// Calls `body` with every bucket's signals that `signals(in:)` merges.
    private func visit(_ window: ClosedRange<UInt64>, _ body: (Int32, Signals) -> Void) {
        let upper = window.upperBound == .max ? window.upperBound : window.upperBound + 1
        collect(window.lowerBound, upper, tier: tiers.count - 1, body)
    }

    private func collect(_ lower: UInt64, _ upper: UInt64, tier index: Int, _ body: (Int32, Signals) -> Void) {
        guard lower < upper else { return }
        let tier = tiers[index]
        if index == 0 {
            addBuckets(of: tier, from: lower / tier.width * tier.width, to: upper, body)
            return
        }
        let first = (lower + tier.width - 1) / tier.width * tier.width
        let last = upper / tier.width * tier.width
        guard first < last else {
            collect(lower, upper, tier: index - 1, body)
            return
        }
        addBuckets(of: tier, from: first, to: last, body)
        if lower < first && lower < tiers[index - 1].horizon {
            // The finer tier no longer holds the window's start: the bucket around it counts whole.
            addBuckets(of: tier, from: first - tier.width, to: first, body)
        } else {
            collect(lower, first, tier: index - 1, body)
        }
        collect(last, upper, tier: index - 1, body)
    }

    private func addBuckets(of tier: Tier, from start: UInt64, to end: UInt64, _ body: (Int32, Signals) -> Void) {
        guard start < end else { return }
        let count = (end - start + tier.width - 1) / tier.width
        if count <= UInt64(tier.buckets.count) {
            var bucket = start
            while bucket < end {
                if let series = tier.buckets[bucket] { for (id, signals) in series { body(id, signals) } }
                bucket += tier.width
            }
        } else {
            for (bucket, series) in tier.buckets where bucket >= start && bucket < end {
                for (id, signals) in series { body(id, signals) }
            }
        }
    }
}
