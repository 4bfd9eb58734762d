import Foundation

/// A histogram of non-negative values with OTLP's exponential bucketing: mergeable,
/// scale chosen automatically, at most `maxBuckets` buckets.
///
/// At scale `s` the base is `2^(2^-s)`, and bucket `i` holds the values in
/// `(base^i, base^(i+1)]`, as OTLP's `ExponentialHistogramDataPoint` has it. Zeros
/// are counted apart. A value that would need more than `maxBuckets` buckets makes
/// the histogram lower its scale (merging neighbouring buckets in pairs) until it
/// fits. A quantile read back is within `relativeError` of the exact value of the
/// same rank.
public struct ExponentialHistogram: Sendable, Equatable {
    /// The finest scale used: buckets 2^(2^-20) apart, far finer than any clock.
    public static let maxScale: Int8 = 20
    /// OpenTelemetry's default bucket limit for exponential histograms.
    public static let defaultMaxBuckets = 160

    public private(set) var scale: Int8
    public let maxBuckets: Int
    public private(set) var count: UInt64 = 0
    public private(set) var zeroCount: UInt64 = 0
    public private(set) var sum: Double = 0
    /// The least and greatest values recorded; 0 when empty.
    public private(set) var min: Double = 0
    public private(set) var max: Double = 0
    /// Index of the first bucket in `counts`.
    public private(set) var offset: Int = 0
    /// Counts of the positive buckets from `offset` on.
    public private(set) var counts: [UInt64] = []

    public init(maxBuckets: Int = defaultMaxBuckets, scale: Int8 = maxScale) {
        precondition(maxBuckets >= 2, "an exponential histogram needs at least two buckets")
        self.maxBuckets = maxBuckets
        self.scale = scale
    }

    /// A histogram with these fields, as read back from storage or an OTLP data point.
    /// Returns nil when they are inconsistent.
    public init?(
        scale: Int8, maxBuckets: Int = defaultMaxBuckets, zeroCount: UInt64, sum: Double, min: Double, max: Double,
        offset: Int, counts: [UInt64]
    ) {
        guard maxBuckets >= 2, scale >= -10, scale <= Self.maxScale,
              sum.isFinite, min.isFinite, max.isFinite, min <= max, min >= 0
        else { return nil }
        self.init(maxBuckets: maxBuckets, scale: scale)
        self.zeroCount = zeroCount
        self.sum = sum
        self.min = min
        self.max = max
        self.offset = offset
        self.counts = counts
        var total = zeroCount
        for value in counts {
            let (added, overflow) = total.addingReportingOverflow(value)
            guard !overflow else { return nil }
            total = added
        }
        count = total
        trim()
        // Fewer buckets than the data needs at this scale: bring it down to fit.
        if self.counts.count > maxBuckets {
            let change = Self.downscaleNeeded(low: self.offset, high: self.offset + self.counts.count - 1, maxBuckets: maxBuckets)
            guard Int(scale) - change >= -10 else { return nil }
            downscale(by: change)
        }
    }

    public var isEmpty: Bool { count == 0 }

    /// The ratio between neighbouring bucket boundaries.
    public var base: Double { Self.base(scale: scale) }

    public static func base(scale: Int8) -> Double { Foundation.pow(2, Foundation.pow(2, -Double(scale))) }

    /// How far a quantile read back can be from the exact value of the same rank,
    /// relative to it: `(base − 1) / (base + 1)` (1.08 % at scale 5, 2.17 % at 4).
    public var relativeError: Double { Self.relativeError(scale: scale) }

    public static func relativeError(scale: Int8) -> Double {
        let base = base(scale: scale)
        return (base - 1) / (base + 1)
    }

    /// The bucket index of a positive `value` at `scale`.
    public static func index(of value: Double, scale: Int8) -> Int {
        // A normal number's exponent, mantissa and whether it is a power of two,
        // from its bits; a subnormal one's through the slower properties.
        let bits = value.bitPattern
        let biased = Int(truncatingIfNeeded: bits >> 52 & 0x7FF)
        let mantissa = bits & (1 << 52 - 1)
        let exponent = biased != 0 ? biased - 1023 : Int(value.exponent)
        let powerOfTwo = biased != 0 ? mantissa == 0 : value.significand == 1
        if powerOfTwo {
            // An exact power of two is the upper boundary of its bucket.
            return scale >= 0 ? (exponent << Int(scale)) - 1 : ((exponent - 1) >> Int(-scale))
        }
        if scale <= 0 { return exponent >> Int(-scale) }
        if scale <= tableScale, biased != 0 {
            return (exponent << Int(tableScale) + Boundaries.shared.step(of: mantissa)) >> Int(tableScale - scale)
        }
        let scaled = Foundation.log2(value) * Double(1 << Int(scale))
        // ⌈scaled⌉ − 1, without a call: truncation rounds up below zero and down above.
        let truncated = Int(scaled)
        return (Double(truncated) < scaled ? truncated + 1 : truncated) - 1
    }

    /// The finest scale whose bucket indices come from a number's bits by a table
    /// lookup, without a logarithm; every coarser scale's follow from them by a shift.
    public static let tableScale: Int8 = 8

    /// Where the bucket boundaries at `tableScale` fall within an octave.
    private struct Boundaries: Sendable {
        static let shared = Boundaries()
        static let steps = 1 << Int(tableScale)
        /// Slices of the octave by the mantissa's top bits: narrower than the least
        /// distance between two boundaries, so a slice holds at most one.
        static let sliceBits = Int(tableScale) + 1

        /// The 52-bit mantissa of each boundary 2^(k/2^tableScale), k = 0 through
        /// 2^tableScale (that one past any mantissa).
        let mantissas: [UInt64]
        /// For each slice, the last boundary below the slice's start.
        let below: [UInt8]

        init() {
            var mantissas = (0..<Self.steps).map {
                Foundation.exp2(Double($0) / Double(Self.steps)).bitPattern & (1 << 52 - 1)
            }
            mantissas.append(1 << 52)
            var below = [UInt8](repeating: 0, count: 1 << Self.sliceBits)
            var step = 0
            for slice in 1..<below.count {
                let start = UInt64(slice) << (52 - Self.sliceBits)
                while mantissas[step + 1] < start { step += 1 }
                below[slice] = UInt8(step)
            }
            self.mantissas = mantissas
            self.below = below
        }

        /// The index within the octave of the bucket a (non-zero) mantissa falls in:
        /// the boundaries below it, less the octave's own.
        @inline(__always)
        func step(of mantissa: UInt64) -> Int {
            let step = Int(below[Int(truncatingIfNeeded: mantissa >> (52 - Self.sliceBits))])
            return mantissas[step + 1] < mantissa ? step + 1 : step
        }
    }

    /// The lower boundary of bucket `index` at this histogram's scale.
    public func lowerBoundary(of index: Int) -> Double {
        Foundation.exp2(Double(index) * Foundation.exp2(-Double(scale)))
    }

    /// Counts `value` (negative values count as zero) `times` times.
    public mutating func record(_ value: Double, times: UInt64 = 1) {
        guard times > 0, value.isFinite else { return }
        tally(Swift.max(0, value), times: times, tableIndex: nil)
    }

    /// Counts a positive, finite `value` whose bucket index at `tableScale` is
    /// `tableIndex` (`index(of: value, scale: tableScale)`). At that scale and below,
    /// where a histogram of more than a fraction of an octave of values lies, the
    /// index follows from it by a shift: a value counted in several histograms has
    /// its bucket found once.
    public mutating func record(_ value: Double, tableIndex: Int) {
        precondition(value > 0 && value.isFinite, "a positive, finite value")
        tally(value, times: 1, tableIndex: tableIndex)
    }

    @inline(__always)
    private mutating func tally(_ value: Double, times: UInt64, tableIndex: Int?) {
        widen(toInclude: value, value)
        count += times
        sum += value * Double(times)
        guard value > 0 else {
            zeroCount += times
            return
        }
        func bucketIndex() -> Int {
            if let tableIndex, scale <= Self.tableScale { return tableIndex >> Int(Self.tableScale - scale) }
            return Self.index(of: value, scale: scale)
        }
        var index = bucketIndex()
        if !counts.isEmpty {
            let low = Swift.min(offset, index)
            let high = Swift.max(offset + counts.count - 1, index)
            if high - low + 1 > maxBuckets {
                downscale(by: Self.downscaleNeeded(low: low, high: high, maxBuckets: maxBuckets))
                index = bucketIndex()
            }
        }
        add(times, at: index)
    }

    /// Adds `other` into this histogram, at the finer scale that holds both.
    public mutating func merge(_ other: ExponentialHistogram) {
        other.counts.withUnsafeBufferPointer { counts in
            merge(scale: other.scale, offset: other.offset, counts: counts, count: other.count, zeroCount: other.zeroCount,
                  sum: other.sum, min: other.min, max: other.max)
        }
    }

    /// Adds a histogram given by its fields (its bucket counts in `counts`, from index
    /// `offset` at `scale`), as `merge(_:)` does.
    public mutating func merge(
        scale otherScale: Int8, offset otherOffset: Int, counts theirs: UnsafeBufferPointer<UInt64>, count otherCount: UInt64,
        zeroCount otherZeroCount: UInt64, sum otherSum: Double, min otherMin: Double, max otherMax: Double
    ) {
        guard let (shift, base) = makeRoom(
            scale: otherScale, offset: otherOffset, length: theirs.count, count: otherCount, zeroCount: otherZeroCount,
            sum: otherSum, min: otherMin, max: otherMax)
        else { return }
        add(Dense<UInt64>(UnsafeRawBufferPointer(theirs)), offset: otherOffset, shift: shift, base: base)
    }

    /// Bucket counts kept packed in as few bytes as they need: `length` buckets from
    /// the histogram's offset, each count `width` bytes (1, 2, 4 or 8, native byte
    /// order, any alignment). Dense, every bucket's count follows the one before;
    /// sparse, only the non-zero ones are there, each a one-byte position (so
    /// `length` ≤ 256) followed by its count.
    public struct PackedCounts {
        public var bytes: UnsafeRawBufferPointer
        public var width: Int
        public var length: Int
        public var sparse: Bool

        public init(bytes: UnsafeRawBufferPointer, width: Int, length: Int, sparse: Bool) {
            precondition(width == 1 || width == 2 || width == 4 || width == 8, "a packed count is 1, 2, 4 or 8 bytes")
            precondition(!sparse || length <= 256, "a sparse position is one byte")
            self.bytes = bytes
            self.width = width
            self.length = length
            self.sparse = sparse
        }
    }

    /// Adds a histogram whose counts are packed (see `PackedCounts`), as `merge(_:)` does.
    public mutating func merge(
        scale otherScale: Int8, offset otherOffset: Int, counts packed: PackedCounts, count otherCount: UInt64,
        zeroCount otherZeroCount: UInt64, sum otherSum: Double, min otherMin: Double, max otherMax: Double
    ) {
        guard let (shift, base) = makeRoom(
            scale: otherScale, offset: otherOffset, length: packed.length, count: otherCount, zeroCount: otherZeroCount,
            sum: otherSum, min: otherMin, max: otherMax)
        else { return }
        switch (packed.width, packed.sparse) {
        case (1, false): add(Dense<UInt8>(packed.bytes, limit: packed.length), offset: otherOffset, shift: shift, base: base)
        case (2, false): add(Dense<UInt16>(packed.bytes, limit: packed.length), offset: otherOffset, shift: shift, base: base)
        case (4, false): add(Dense<UInt32>(packed.bytes, limit: packed.length), offset: otherOffset, shift: shift, base: base)
        case (_, false): add(Dense<UInt64>(packed.bytes, limit: packed.length), offset: otherOffset, shift: shift, base: base)
        case (1, true): addSparse(packed, UInt8.self, offset: otherOffset, shift: shift, base: base)
        case (2, true): addSparse(packed, UInt16.self, offset: otherOffset, shift: shift, base: base)
        case (4, true): addSparse(packed, UInt32.self, offset: otherOffset, shift: shift, base: base)
        case (_, true): addSparse(packed, UInt64.self, offset: otherOffset, shift: shift, base: base)
        }
    }

    /// Counts of one width, one per bucket, read from memory of any alignment.
    private struct Dense<Count: FixedWidthInteger & UnsignedInteger> {
        let bytes: UnsafeRawBufferPointer
        let count: Int

        /// At most `limit` counts: no more than room was made for.
        init(_ bytes: UnsafeRawBufferPointer, limit: Int = .max) {
            self.bytes = bytes
            count = Swift.min(limit, bytes.count / MemoryLayout<Count>.size)
        }

        @inline(__always) subscript(position: Int) -> UInt64 {
            UInt64(bytes.loadUnaligned(fromByteOffset: position &* MemoryLayout<Count>.size, as: Count.self))
        }
    }

    /// Takes in another histogram's count, zeros, sum and extremes, and makes `counts`
    /// cover its `length` buckets from `otherOffset` at `otherScale` (lowering this
    /// scale as needed). Returns how far to shift their bucket indices to reach ours
    /// and the index of our first bucket, or nil when no bucket counts are to be added.
    private mutating func makeRoom(
        scale otherScale: Int8, offset otherOffset: Int, length: Int, count otherCount: UInt64,
        zeroCount otherZeroCount: UInt64, sum otherSum: Double, min otherMin: Double, max otherMax: Double
    ) -> (shift: Int, base: Int)? {
        guard otherCount > 0 else { return nil }
        widen(toInclude: otherMin, otherMax)
        count += otherCount
        zeroCount += otherZeroCount
        sum += otherSum
        guard length > 0 else { return nil }
        if otherScale < scale { downscale(by: Int(scale - otherScale)) }
        var shift = Int(otherScale - scale)
        var low = otherOffset >> shift
        var high = (otherOffset + length - 1) >> shift
        if !counts.isEmpty {
            low = Swift.min(low, offset)
            high = Swift.max(high, offset + counts.count - 1)
        }
        let change = Self.downscaleNeeded(low: low, high: high, maxBuckets: maxBuckets)
        if change > 0 {
            downscale(by: change)
            shift += change
            low >>= change
            high >>= change
        }
        // Room for both ranges at once; the caller adds the other's counts in one pass.
        if counts.isEmpty {
            offset = low
            counts = [UInt64](repeating: 0, count: high - low + 1)
        } else {
            if low < offset {
                counts.insert(contentsOf: repeatElement(0, count: offset - low), at: 0)
                offset = low
            }
            if high >= offset + counts.count {
                counts.append(contentsOf: repeatElement(0, count: high - offset - counts.count + 1))
            }
        }
        return (shift, offset)
    }

    private mutating func add<Count>(_ theirs: Dense<Count>, offset otherOffset: Int, shift: Int, base: Int) {
        counts.withUnsafeMutableBufferPointer { mine in
            if shift == 0 {
                // The same scale: bucket for bucket, a loop the compiler vectorises.
                let start = otherOffset - base
                for position in 0..<theirs.count { mine[start + position] &+= theirs[position] }
                return
            }
            // Each run of their buckets that falls into one of ours is summed first, then
            // added once: no store waits on the one before it.
            var position = 0
            while position < theirs.count {
                let index = (otherOffset &+ position) &>> shift
                let runEnd = Swift.min(theirs.count, ((index &+ 1) &<< shift) &- otherOffset)
                var sum: UInt64 = 0
                while position < runEnd {
                    sum &+= theirs[position]
                    position &+= 1
                }
                mine[index &- base] &+= sum
            }
        }
    }

    private mutating func addSparse<Count: FixedWidthInteger & UnsignedInteger>(
        _ packed: PackedCounts, _: Count.Type, offset otherOffset: Int, shift: Int, base: Int
    ) {
        let entries = packed.bytes
        let stride = 1 + MemoryLayout<Count>.size
        counts.withUnsafeMutableBufferPointer { mine in
            var at = 0
            while at + stride <= entries.count {
                let position = Int(entries[at])
                // Positions past the stated length have no room made for them.
                guard position < packed.length else { return }
                let value = UInt64(entries.loadUnaligned(fromByteOffset: at + 1, as: Count.self))
                mine[((otherOffset &+ position) &>> shift) &- base] &+= value
                at += stride
            }
        }
    }

    /// The scale and bucket range that merging several histograms into one ends
    /// with, worked out from their scales and ranges alone. A histogram made from it
    /// (`init(shape:)`) takes every one of those merges without growing or scaling
    /// down again: the result is the same as merging into an empty histogram, with
    /// one allocation instead of one per growth.
    public struct MergeShape: Sendable {
        public let maxBuckets: Int
        public private(set) var scale: Int8 = ExponentialHistogram.maxScale
        /// The bucket range at `scale`; empty while `low > high`.
        public private(set) var low = 0
        public private(set) var high = -1

        public init(maxBuckets: Int = ExponentialHistogram.defaultMaxBuckets) {
            self.maxBuckets = maxBuckets
        }

        /// Takes in a histogram with `length` buckets from `offset` at `scale`, as `merge` would.
        public mutating func include(scale other: Int8, offset: Int, length: Int) {
            guard length > 0 else { return }
            if other < scale {
                let change = Int(scale - other)
                low >>= change
                high >>= change
                scale = other
            }
            let shift = Int(other - scale)
            let (theirLow, theirHigh) = (offset >> shift, (offset + length - 1) >> shift)
            if low > high {
                (low, high) = (theirLow, theirHigh)
            } else {
                low = Swift.min(low, theirLow)
                high = Swift.max(high, theirHigh)
            }
            let change = ExponentialHistogram.downscaleNeeded(low: low, high: high, maxBuckets: maxBuckets)
            if change > 0 {
                scale -= Int8(change)
                low >>= change
                high >>= change
            }
        }

        public mutating func include(_ histogram: ExponentialHistogram) {
            guard histogram.count > 0 else { return }
            include(scale: histogram.scale, offset: histogram.offset, length: histogram.counts.count)
        }
    }

    /// An empty histogram with the scale and (zeroed) buckets of `shape`, ready for
    /// the merges the shape was worked out from.
    public init(shape: MergeShape) {
        self.init(maxBuckets: shape.maxBuckets, scale: shape.scale)
        if shape.low <= shape.high {
            offset = shape.low
            counts = [UInt64](repeating: 0, count: shape.high - shape.low + 1)
        }
    }

    /// The value of nearest rank `q` (0…1): the estimate that is at most
    /// `relativeError` from the exact value of that rank. Nil when empty.
    public func quantile(_ q: Double) -> Double? {
        guard count > 0 else { return nil }
        let rank = Swift.max(1, Swift.min(count, UInt64((q * Double(count)).rounded(.up))))
        if rank == count { return max }
        if rank == 1 { return min }
        var seen = zeroCount
        if seen >= rank { return 0 }
        let base = self.base
        for (position, value) in counts.enumerated() {
            seen += value
            if seen >= rank {
                // The point of the bucket whose relative distance to either boundary is equal.
                let upper = lowerBoundary(of: offset + position + 1)
                let estimate = 2 * upper / (1 + base)
                return Swift.min(Swift.max(estimate, min), max)
            }
        }
        return max
    }

    /// Makes `min…max` cover `low…high` (or be it, while nothing is counted yet).
    private mutating func widen(toInclude low: Double, _ high: Double) {
        min = count == 0 ? low : Swift.min(min, low)
        max = count == 0 ? high : Swift.max(max, high)
    }

    /// How many times to halve the resolution so `low…high` fits in `maxBuckets`.
    static func downscaleNeeded(low: Int, high: Int, maxBuckets: Int) -> Int {
        var change = 0
        while (high >> change) - (low >> change) + 1 > maxBuckets { change += 1 }
        return change
    }

    private mutating func downscale(by change: Int) {
        guard change > 0 else { return }
        scale -= Int8(change)
        guard !counts.isEmpty else { return }
        let newOffset = offset >> change
        let newHigh = (offset + counts.count - 1) >> change
        var merged = [UInt64](repeating: 0, count: newHigh - newOffset + 1)
        for (position, value) in counts.enumerated() {
            merged[((offset + position) >> change) - newOffset] += value
        }
        offset = newOffset
        counts = merged
    }

    private mutating func add(_ times: UInt64, at index: Int) {
        if counts.isEmpty {
            offset = index
            counts = [times]
            return
        }
        if index < offset {
            counts.insert(contentsOf: repeatElement(0, count: offset - index), at: 0)
            offset = index
        } else if index >= offset + counts.count {
            counts.append(contentsOf: repeatElement(0, count: index - offset - counts.count + 1))
        }
        counts[index - offset] += times
    }

    /// Drops empty buckets at either end.
    private mutating func trim() {
        guard let first = counts.firstIndex(where: { $0 > 0 }), let last = counts.lastIndex(where: { $0 > 0 }) else {
            counts = []
            offset = 0
            return
        }
        if first > 0 || last < counts.count - 1 {
            counts = Array(counts[first...last])
            offset += first
        }
    }
}
