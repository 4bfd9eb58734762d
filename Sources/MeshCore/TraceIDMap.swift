/// A hash map keyed by trace id, for the tables the collector looks a trace up in
/// for every span.
///
/// Trace ids are random bits already, so a slot is chosen by one multiplication of
/// them instead of hashing with a seeded hasher as `Dictionary` does. Open
/// addressing with linear probing, at most three quarters full; removal shifts the
/// entries after the hole back, so there are no tombstones and lookups never slow
/// down with churn. The all-zero id (which marks a free slot) is held apart.
///
/// Its code is inlinable so that a user's module specializes it for its `Value`.
public struct TraceIDMap<Value> {
    @usableFromInline var keys: [TraceID]
    @usableFromInline var values: [Value?]
    /// The value of the all-zero trace id.
    @usableFromInline var zeroValue: Value?
    /// Ids held.
    @inlinable public var count: Int { entryCount }
    @usableFromInline var entryCount = 0
    @usableFromInline var mask: Int
    /// 64 minus the log2 of the slot count: a hash's top bits choose its slot.
    @usableFromInline var shift: UInt64

    /// An empty map with room for `minimumCapacity` ids before it grows.
    @inlinable
    public init(minimumCapacity: Int = 0) {
        var slots = 16
        while slots / 4 * 3 < minimumCapacity { slots <<= 1 }
        keys = Array(repeating: .zero, count: slots)
        values = Array(repeating: nil, count: slots)
        mask = slots - 1
        shift = UInt64(64 - slots.trailingZeroBitCount)
    }

    /// Ids the map holds before it grows.
    @inlinable
    public var capacity: Int { keys.count / 4 * 3 }

    /// Heap bytes the map's slots take.
    @inlinable
    public var allocatedBytes: Int { keys.count * (MemoryLayout<TraceID>.stride + MemoryLayout<Value?>.stride) }

    @inlinable
    public var isEmpty: Bool { count == 0 }

    @inlinable @inline(__always)
    func home(_ traceID: TraceID) -> Int {
        // Both halves count: a 64-bit id (Zipkin's) has a zero high half.
        Int(truncatingIfNeeded: ((traceID.low ^ (traceID.high &* 0xC2B2_AE3D_27D4_EB4F)) &* 0x9E37_79B9_7F4A_7C15) >> shift)
    }

    /// The slot holding `traceID`, or nil.
    @inlinable @inline(__always)
    func slot(of traceID: TraceID) -> Int? {
        var slot = home(traceID)
        while true {
            let key = keys[slot]
            if key == traceID { return slot }
            if key == .zero { return nil }
            slot = (slot + 1) & mask
        }
    }

    @inlinable
    public subscript(traceID: TraceID) -> Value? {
        get {
            if traceID == .zero { return zeroValue }
            return slot(of: traceID).flatMap { values[$0] }
        }
        set {
            if let newValue { update(newValue, for: traceID) } else { remove(traceID) }
        }
    }

    @inlinable
    mutating func update(_ value: Value, for traceID: TraceID) {
        if traceID == .zero {
            if zeroValue == nil { entryCount += 1 }
            zeroValue = value
            return
        }
        var slot = home(traceID)
        while true {
            let key = keys[slot]
            if key == traceID {
                values[slot] = value
                return
            }
            if key == .zero { break }
            slot = (slot + 1) & mask
        }
        if count + 1 > capacity {
            grow()
            slot = freeSlot(for: traceID)
        }
        keys[slot] = traceID
        values[slot] = value
        entryCount += 1
    }

    @inlinable
    mutating func remove(_ traceID: TraceID) {
        if traceID == .zero {
            if zeroValue != nil { entryCount -= 1 }
            zeroValue = nil
            return
        }
        guard var hole = slot(of: traceID) else { return }
        entryCount -= 1
        // Move back every entry after the hole, up to the next free slot, that the
        // hole lies between the entry's home and where it sits: a lookup for it would
        // otherwise stop at the hole.
        var next = hole
        while true {
            next = (next + 1) & mask
            let key = keys[next]
            if key == .zero { break }
            if (next &- home(key)) & mask >= (next &- hole) & mask {
                keys[hole] = key
                values[hole] = values[next]
                hole = next
            }
        }
        keys[hole] = .zero
        values[hole] = nil
    }

    /// The first free slot from `traceID`'s home: where it goes when it is not held.
    @inlinable @inline(__always)
    func freeSlot(for traceID: TraceID) -> Int {
        var slot = home(traceID)
        while keys[slot] != .zero { slot = (slot + 1) & mask }
        return slot
    }

    @inlinable
    mutating func grow() {
        rehash(slots: keys.count * 2)
    }

    /// Rebuilds the map with the fewest slots that hold its ids and `minimumCapacity`
    /// (when that is fewer than it has), after a burst has left it mostly empty.
    @inlinable
    public mutating func shrink(toHold minimumCapacity: Int) {
        var slots = 16
        while slots / 4 * 3 < max(count, minimumCapacity) { slots <<= 1 }
        if slots < keys.count { rehash(slots: slots) }
    }

    @inlinable
    mutating func rehash(slots: Int) {
        let oldKeys = keys
        let oldValues = values
        keys = Array(repeating: .zero, count: slots)
        values = Array(repeating: nil, count: slots)
        mask = slots - 1
        shift = UInt64(64 - slots.trailingZeroBitCount)
        for (position, key) in oldKeys.enumerated() where key != .zero {
            let slot = freeSlot(for: key)
            keys[slot] = key
            values[slot] = oldValues[position]
        }
    }

    /// Every id and its value, in no particular order.
    @inlinable
    public var entries: [(TraceID, Value)] {
        var entries: [(TraceID, Value)] = []
        entries.reserveCapacity(count)
        if let zeroValue { entries.append((.zero, zeroValue)) }
        for (position, key) in keys.enumerated() where key != .zero { entries.append((key, values[position]!)) }
        return entries
    }
}

extension TraceIDMap: Sendable where Value: Sendable {}
