import MeshCore

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
        /// Signals by bucket start.
        var buckets: [UInt64: BucketRows] = [:]
        /// Buckets before this were pruned.
        var horizon: UInt64 = 0
    }

    private(set) var tiers: [Tier]
    /// One more than the largest series id held.
    private(set) var seriesBound: Int32 = 0

    /// The series of one bucket, side by side in arrays: a query reads them in order
    /// without hashing. Open, a bucket keeps each row's `Signals` and finds a series
    /// by `positions` when a row is added; packed (once its time has passed), its
    /// histograms' counts lie end to end in one buffer, which a query reads front to
    /// back, and it holds no per-row allocations. A row added to a packed bucket
    /// opens it again.
    struct BucketRows {
        private(set) var ids: [Int32] = []
        private var signals: [Signals] = []
        private var positions: [Int32: Int32] = [:]
        private var packed: Packed?

        var count: Int { ids.count }
        var isPacked: Bool { packed != nil }

        /// Rows with their histograms' counts in one buffer.
        struct Packed {
            var scalars: [Scalars] = []
            /// Two per row: latency, then server latency.
            var histograms: [PackedHistogram] = []
            /// Each histogram's counts in as few bytes as its largest needs (1, 2, 4
            /// or 8 each, native byte order), and only the non-zero ones, each after
            /// its one-byte position, when that is shorter
            /// (`ExponentialHistogram.PackedCounts`): a row of a few requests spans
            /// many buckets but fills few, and a query adds only those.
            var counts: [UInt8] = []
        }

        struct Scalars {
            var requests, errors, clientErrors, requestBytes, responseBytes, mutualTLS, plaintext: UInt64
        }

        struct PackedHistogram {
            var count: UInt64
            var zeroCount: UInt64
            var sum: Double
            var min: Double
            var max: Double
            var offset: Int32
            /// Where its counts begin in `Packed.counts`, in bytes.
            var start: UInt32
            /// How many buckets, the bytes of each count, and whether only the
            /// non-zero ones are there.
            var length: UInt16
            var width: UInt8
            var sparse: Bool
            var scale: Int8
            /// Bytes in `Packed.counts`.
            var size: UInt32
        }

        mutating func add(_ row: Signals, series: Int32) {
            if packed != nil { unpack() }
            if let position = positions[series] {
                signals[Int(position)].merge(row)
            } else {
                positions[series] = Int32(ids.count)
                ids.append(series)
                signals.append(row)
            }
        }

        /// Packs the rows (see the type's description).
        mutating func pack() {
            guard packed == nil else { return }
            var result = Packed()
            result.scalars.reserveCapacity(signals.count)
            result.histograms.reserveCapacity(2 * signals.count)
            for row in signals {
                result.scalars.append(Scalars(
                    requests: row.requests, errors: row.errors, clientErrors: row.clientErrors, requestBytes: row.requestBytes,
                    responseBytes: row.responseBytes, mutualTLS: row.mutualTLS, plaintext: row.plaintext))
                for histogram in [row.latency, row.serverLatency] {
                    let largest = histogram.counts.max() ?? 0
                    let width = largest <= UInt8.max ? 1 : largest <= UInt16.max ? 2 : largest <= UInt32.max ? 4 : 8
                    let filled = histogram.counts.reduce(0) { $0 + ($1 == 0 ? 0 : 1) }
                    let sparse = histogram.counts.count <= 256 && filled * (1 + width) < histogram.counts.count * width
                    let start = result.counts.count
                    for (position, value) in histogram.counts.enumerated() where !sparse || value != 0 {
                        if sparse { result.counts.append(UInt8(position)) }
                        switch width {
                        case 1: result.counts.append(UInt8(value))
                        case 2: withUnsafeBytes(of: UInt16(value)) { result.counts.append(contentsOf: $0) }
                        case 4: withUnsafeBytes(of: UInt32(value)) { result.counts.append(contentsOf: $0) }
                        default: withUnsafeBytes(of: value) { result.counts.append(contentsOf: $0) }
                        }
                    }
                    result.histograms.append(PackedHistogram(
                        count: histogram.count, zeroCount: histogram.zeroCount, sum: histogram.sum, min: histogram.min,
                        max: histogram.max, offset: Int32(truncatingIfNeeded: histogram.offset), start: UInt32(start),
                        length: UInt16(histogram.counts.count), width: UInt8(width), sparse: sparse, scale: histogram.scale,
                        size: UInt32(result.counts.count - start)))
                }
            }
            packed = result
            signals = []
            positions = [:]
        }

        private mutating func unpack() {
            guard let packed else { return }
            signals = []
            signals.reserveCapacity(ids.count)
            positions = [:]
            packed.counts.withUnsafeBytes { counts in
                for position in ids.indices {
                    var row = Signals()
                    Self.merge(packed, counts, position, into: &row)
                    signals.append(row)
                    positions[ids[position]] = Int32(position)
                }
            }
            self.packed = nil
        }

        /// Takes the histograms of every row whose series `include` accepts into that
        /// series' shape (`shapes`, indexed by series id).
        func shape(into shapes: inout [SignalsShape], including include: (Int32) -> Bool) {
            for position in ids.indices {
                let id = ids[position]
                guard include(id) else { continue }
                shapes[Int(id)].present = true
                if let packed {
                    let latency = packed.histograms[2 * position]
                    let server = packed.histograms[2 * position + 1]
                    if latency.count > 0 {
                        shapes[Int(id)].latency.include(scale: latency.scale, offset: Int(latency.offset), length: Int(latency.length))
                    }
                    if server.count > 0 {
                        shapes[Int(id)].serverLatency.include(scale: server.scale, offset: Int(server.offset), length: Int(server.length))
                    }
                } else {
                    shapes[Int(id)].latency.include(signals[position].latency)
                    shapes[Int(id)].serverLatency.include(signals[position].serverLatency)
                }
            }
        }

        /// Adds every row into `merged[slots[series]]`, skipping series whose slot is negative.
        func merge(into merged: inout [Signals], slots: [Int32]) {
            if let packed {
                packed.counts.withUnsafeBytes { counts in
                    for position in ids.indices {
                        let slot = slots[Int(ids[position])]
                        guard slot >= 0 else { continue }
                        Self.merge(packed, counts, position, into: &merged[Int(slot)])
                    }
                }
                return
            }
            for position in ids.indices {
                let slot = slots[Int(ids[position])]
                guard slot >= 0 else { continue }
                merged[Int(slot)].merge(signals[position])
            }
        }

        private static func merge(_ packed: Packed, _ counts: UnsafeRawBufferPointer, _ position: Int, into row: inout Signals) {
            let scalars = packed.scalars[position]
            row.requests += scalars.requests
            row.errors += scalars.errors
            row.clientErrors += scalars.clientErrors
            row.requestBytes += scalars.requestBytes
            row.responseBytes += scalars.responseBytes
            row.mutualTLS += scalars.mutualTLS
            row.plaintext += scalars.plaintext
            for side in 0..<2 {
                let histogram = packed.histograms[2 * position + side]
                let start = Int(histogram.start)
                let packedCounts = ExponentialHistogram.PackedCounts(
                    bytes: UnsafeRawBufferPointer(rebasing: counts[start..<start + Int(histogram.size)]),
                    width: Int(histogram.width), length: Int(histogram.length), sparse: histogram.sparse)
                if side == 0 {
                    row.latency.merge(
                        scale: histogram.scale, offset: Int(histogram.offset), counts: packedCounts, count: histogram.count,
                        zeroCount: histogram.zeroCount, sum: histogram.sum, min: histogram.min, max: histogram.max)
                } else {
                    row.serverLatency.merge(
                        scale: histogram.scale, offset: Int(histogram.offset), counts: packedCounts, count: histogram.count,
                        zeroCount: histogram.zeroCount, sum: histogram.sum, min: histogram.min, max: histogram.max)
                }
            }
        }
    }

    /// What a series' merged histograms will need, gathered before they are merged.
    struct SignalsShape {
        var present = false
        var latency = ExponentialHistogram.MergeShape()
        var serverLatency = ExponentialHistogram.MergeShape()
    }

    /// Packs every bucket that ended before `before` (nanoseconds since the epoch).
    mutating func pack(endedBefore before: UInt64) {
        for index in tiers.indices {
            let width = tiers[index].width
            let due = tiers[index].buckets.compactMap { bucket, rows in !rows.isPacked && bucket + width < before ? bucket : nil }
            for bucket in due { tiers[index].buckets[bucket]!.pack() }
        }
    }

    /// `resolutions` finest first, each width a multiple of the one before.
    init(resolutions: [(width: UInt64, retention: UInt64)]) {
        precondition(!resolutions.isEmpty)
        tiers = resolutions.map { Tier(width: $0.width, retention: $0.retention) }
    }

    /// Adds `signals` of `series` in the bucket starting at `bucket`, a bucket of
    /// width `resolution`, to that tier and every coarser one whose retention
    /// still covers it at `now` (nanoseconds since the epoch).
    mutating func add(_ signals: Signals, series: Int32, bucket: UInt64, resolution: UInt64, now: UInt64) {
        seriesBound = max(seriesBound, series + 1)
        for index in tiers.indices where tiers[index].width >= resolution {
            // Width and retention only: a copy of the tier would make the write below copy its buckets.
            let width = tiers[index].width
            guard bucket + width + tiers[index].retention > now else { continue }
            tiers[index].buckets[bucket / width * width, default: BucketRows()].add(signals, series: series)
        }
    }

    /// Drops the buckets each tier no longer keeps at `now`.
    mutating func prune(now: UInt64) {
        for index in tiers.indices {
            let (width, retention) = (tiers[index].width, tiers[index].retention)
            guard now > retention + width else { continue }
            let horizon = now - retention - width
            if tiers[index].buckets.keys.contains(where: { $0 < horizon }) {
                tiers[index].buckets = tiers[index].buckets.filter { $0.key >= horizon }
            }
            tiers[index].horizon = max(tiers[index].horizon, horizon / width * width)
        }
    }

    /// The signals of every series over `window` (nanoseconds since the epoch): the
    /// coarsest buckets that fit inside it, finer ones at its ends, and at the
    /// finest resolution every bucket that overlaps it. Where a finer tier no longer
    /// holds a range, the coarser bucket around it counts whole.
    func signals(in window: ClosedRange<UInt64>, including include: (Int32) -> Bool = { _ in true }) -> [Int32: Signals] {
        var visited: [BucketRows] = []
        visit(window) { visited.append($0) }
        // First the shape of every series' histograms, so each is allocated once at the
        // scale and width the merge ends with; then the rows are added bucket by bucket
        // (each bucket read front to back), by series id through a dense table.
        var shapes = [SignalsShape](repeating: SignalsShape(), count: Int(seriesBound))
        for rows in visited { rows.shape(into: &shapes, including: include) }
        var slots = [Int32](repeating: -1, count: shapes.count)
        var merged: [Signals] = []
        merged.reserveCapacity(shapes.reduce(0) { $0 + ($1.present ? 1 : 0) })
        for id in shapes.indices where shapes[id].present {
            slots[id] = Int32(merged.count)
            merged.append(Signals(latency: shapes[id].latency, serverLatency: shapes[id].serverLatency))
        }
        for rows in visited { rows.merge(into: &merged, slots: slots) }
        var result: [Int32: Signals] = [:]
        result.reserveCapacity(merged.count)
        for id in slots.indices where slots[id] >= 0 { result[Int32(id)] = merged[Int(slots[id])] }
        return result
    }

    /// The series with any signals over `window`, without merging them.
    func present(in window: ClosedRange<UInt64>) -> Set<Int32> {
        var seen = [Bool](repeating: false, count: Int(seriesBound))
        visit(window) { rows in for id in rows.ids { seen[Int(id)] = true } }
        var present: Set<Int32> = []
        present.reserveCapacity(seen.reduce(0) { $0 + ($1 ? 1 : 0) })
        for id in seen.indices where seen[id] { present.insert(Int32(id)) }
        return present
    }

    /// Calls `body` with every bucket that `signals(in:)` merges.
    private func visit(_ window: ClosedRange<UInt64>, _ body: (BucketRows) -> Void) {
        let upper = window.upperBound == .max ? window.upperBound : window.upperBound + 1
        collect(window.lowerBound, upper, tier: tiers.count - 1, body)
    }

    private func collect(_ lower: UInt64, _ upper: UInt64, tier index: Int, _ body: (BucketRows) -> Void) {
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

    private func addBuckets(of tier: Tier, from start: UInt64, to end: UInt64, _ body: (BucketRows) -> Void) {
        guard start < end else { return }
        let count = (end - start + tier.width - 1) / tier.width
        if count <= UInt64(tier.buckets.count) {
            var bucket = start
            while bucket < end {
                if let rows = tier.buckets[bucket] { body(rows) }
                bucket += tier.width
            }
        } else {
            for (bucket, rows) in tier.buckets where bucket >= start && bucket < end { body(rows) }
        }
    }
}
