import CCacheHints

/// A key an `IDMap` can hold: a value whose bits mostly are random already (trace
/// and span ids) or small numbers packed together, so one multiplication spreads it
/// over the table.
public protocol IDMapKey: Equatable {
    /// The value that marks a free slot; the map holds it apart.
    static var zero: Self { get }
    /// The key's bits folded into 64, well spread in the high bits.
    var mixedBits: UInt64 { get }
}

extension TraceID: IDMapKey {
    @inlinable
    public var mixedBits: UInt64 {
        // Both halves count: a 64-bit id (Zipkin's) has a zero high half.
        (low ^ (high &* 0xC2B2_AE3D_27D4_EB4F)) &* 0x9E37_79B9_7F4A_7C15
    }
}

extension UInt64: IDMapKey {
    @inlinable
    public var mixedBits: UInt64 { (self ^ (self >> 29)) &* 0x9E37_79B9_7F4A_7C15 }
}

/// A hash map for the tables the collector looks up for every span: trace ids,
/// (trace, span) pairs, packed small numbers.
///
/// The keys' bits are random or small already, so a slot is chosen by one
/// multiplication of them instead of hashing with a seeded hasher as `Dictionary`
/// does (whose seeding and finalizing cost more than the rest of a lookup). Open
/// addressing with linear probing, at most three quarters full; removal shifts the
/// entries after the hole back, so there are no tombstones and lookups never slow
/// down with churn. The key `Key.zero` (which marks a free slot) is held apart.
///
/// Its code is inlinable so that a user's module specializes it for its key and value.
public struct IDMap<Key: IDMapKey, Value> {
    /// Each key beside its value, so a lookup that misses the cache misses it once.
    @usableFromInline var slots: [(key: Key, value: Value?)]
    /// The value of `Key.zero`.
    @usableFromInline var zeroValue: Value?
    /// Keys held.
    @inlinable public var count: Int { entryCount }
    @usableFromInline var entryCount = 0
    @usableFromInline var mask: Int
    /// 64 minus the log2 of the slot count: a hash's top bits choose its slot.
    @usableFromInline var shift: UInt64

    /// An empty map with room for `minimumCapacity` keys before it grows.
    @inlinable
    public init(minimumCapacity: Int = 0) {
        var slots = 16
        while slots / 4 * 3 < minimumCapacity { slots <<= 1 }
        self.slots = Array(repeating: (.zero, nil), count: slots)
        mask = slots - 1
        shift = UInt64(64 - slots.trailingZeroBitCount)
    }

    /// Keys the map holds before it grows.
    @inlinable
    public var capacity: Int { slots.count / 4 * 3 }

    /// Heap bytes the map's slots take.
    @inlinable
    public var allocatedBytes: Int { slots.count * MemoryLayout<(key: Key, value: Value?)>.stride }

    @inlinable
    public var isEmpty: Bool { count == 0 }

    @inlinable @inline(__always)
    func home(_ key: Key) -> Int {
        Int(truncatingIfNeeded: key.mixedBits >> shift)
    }

    /// Starts bringing `key`'s first slot into the cache, owned for writing, without
    /// waiting: for a caller that knows a few keys ahead which it will look up, so
    /// that a table larger than the cache costs it no wait per lookup.
    @inlinable @inline(__always)
    public func prefetch(_ key: Key) {
        slots.withUnsafeBufferPointer { meshtrace_prefetch_for_write($0.baseAddress! + home(key)) }
    }

    /// The key in `slot`, read where it lies: through the array's subscript a slot
    /// is copied whole, its value (with every reference the value holds retained and
    /// released again) along with its key.
    @inlinable @inline(__always)
    func key(at slot: Int) -> Key {
        slots.withUnsafeBufferPointer { $0[slot].key }
    }

    /// Whether `slot` holds a value, read where it lies (see `key(at:)`).
    @inlinable @inline(__always)
    func holdsValue(at slot: Int) -> Bool {
        slots.withUnsafeBufferPointer { $0[slot].value != nil }
    }

    /// The slot holding `key`, or nil.
    @inlinable @inline(__always)
    func slot(of key: Key) -> Int? {
        let (slot, found) = probe(key)
        return found ? slot : nil
    }

    /// The slot holding `key` (not `Key.zero`), or the free slot where a probe for it
    /// ends: where it would be put.
    @inlinable @inline(__always)
    func probe(_ key: Key) -> (slot: Int, found: Bool) {
        var slot = home(key)
        while true {
            let held = self.key(at: slot)
            if held == key { return (slot, true) }
            if held == .zero { return (slot, false) }
            slot = (slot + 1) & mask
        }
    }

    /// Claims `slot`, the free slot where a probe for `key` ended, for `key`,
    /// growing the table first when it is full; returns the slot the key is in.
    @inlinable @inline(__always)
    mutating func claim(_ slot: Int, for key: Key) -> Int {
        var slot = slot
        if count + 1 > capacity {
            grow()
            slot = freeSlot(for: key)
        }
        slots[slot].key = key
        entryCount += 1
        return slot
    }

    @inlinable
    public subscript(key: Key) -> Value? {
        get {
            if key == .zero { return zeroValue }
            guard let slot = slot(of: key) else { return nil }
            return slots.withUnsafeBufferPointer { $0[slot].value }
        }
        set {
            if let newValue { update(newValue, for: key) } else { removeValue(forKey: key) }
        }
    }

    @inlinable
    mutating func update(_ value: Value, for key: Key) {
        if key == .zero {
            if zeroValue == nil { entryCount += 1 }
            zeroValue = value
            return
        }
        slots[insertionSlot(for: key)].value = value
    }

    /// The slot of `key`, claimed (its value still nil) when the map does not hold it.
    @inlinable @inline(__always)
    mutating func insertionSlot(for key: Key) -> Int {
        let (slot, found) = probe(key)
        return found ? slot : claim(slot, for: key)
    }

    /// Runs `body` on the value of `key` where it is stored, after storing
    /// `defaultValue()` there when the map does not hold `key`.
    @inlinable
    public mutating func modify<Result>(
        _ key: Key, default defaultValue: @autoclosure () -> Value, _ body: (inout Value) -> Result
    ) -> Result {
        if key == .zero {
            if zeroValue == nil {
                entryCount += 1
                zeroValue = defaultValue()
            }
            return body(&zeroValue!)
        }
        let slot = insertionSlot(for: key)
        if !holdsValue(at: slot) { slots[slot].value = defaultValue() }
        return body(&slots[slot].value!)
    }

    /// Where a key is held, or where it would be put: from `position(of:)`, valid
    /// until the map next changes. A caller that reads a key's value and then
    /// replaces, removes or inserts it probes the table once instead of once per step.
    public struct Position {
        /// -1 for `Key.zero`, held apart.
        @usableFromInline let slot: Int
        /// Whether the map holds the key.
        public let found: Bool

        @inlinable
        init(slot: Int, found: Bool) {
            self.slot = slot
            self.found = found
        }
    }

    /// Where `key` is held or would be put.
    @inlinable @inline(__always)
    public func position(of key: Key) -> Position {
        if key == .zero { return Position(slot: -1, found: zeroValue != nil) }
        let (slot, found) = probe(key)
        return Position(slot: slot, found: found)
    }

    /// The value at a position that was found.
    @inlinable @inline(__always)
    public func value(at position: Position) -> Value {
        precondition(position.found, "no value where the key was not found")
        if position.slot < 0 { return zeroValue! }
        return slots.withUnsafeBufferPointer { $0[position.slot].value! }
    }

    /// Replaces the value at a position that was found.
    @inlinable @inline(__always)
    public mutating func setValue(_ value: Value, at position: Position) {
        precondition(position.found, "no value where the key was not found")
        if position.slot < 0 {
            zeroValue = value
        } else {
            slots[position.slot].value = value
        }
    }

    /// Removes the key at a position that was found.
    @inlinable
    public mutating func remove(at position: Position) {
        precondition(position.found, "nothing to remove where the key was not found")
        if position.slot < 0 {
            zeroValue = nil
            entryCount -= 1
        } else {
            removeSlot(position.slot)
        }
    }

    /// Puts `value` under `key` at a position of it that was not found.
    @inlinable
    public mutating func insert(_ value: Value, for key: Key, at position: Position) {
        precondition(!position.found, "the key is held already")
        if position.slot < 0 {
            entryCount += 1
            zeroValue = value
            return
        }
        slots[claim(position.slot, for: key)].value = value
    }

    /// Removes `key`, returning the value it had.
    @inlinable @discardableResult
    public mutating func removeValue(forKey key: Key) -> Value? {
        if key == .zero {
            defer { zeroValue = nil }
            if zeroValue != nil { entryCount -= 1 }
            return zeroValue
        }
        guard let slot = slot(of: key) else { return nil }
        let value = slots.withUnsafeBufferPointer { $0[slot].value }
        removeSlot(slot)
        return value
    }

    /// Empties the slot at `hole`, which holds a key.
    @inlinable
    mutating func removeSlot(_ hole: Int) {
        var hole = hole
        entryCount -= 1
        // Move back every entry after the hole, up to the next free slot, that the
        // hole lies between the entry's home and where it sits: a lookup for it would
        // otherwise stop at the hole. Entries are swapped, not copied, so the removed
        // one travels to the last hole and is cleared there.
        var next = hole
        while true {
            next = (next + 1) & mask
            let moved = key(at: next)
            if moved == .zero { break }
            if (next &- home(moved)) & mask >= (next &- hole) & mask {
                slots.swapAt(hole, next)
                hole = next
            }
        }
        slots[hole] = (.zero, nil)
    }

    /// The first free slot from `key`'s home: where it goes when it is not held.
    @inlinable @inline(__always)
    func freeSlot(for key: Key) -> Int {
        var slot = home(key)
        while self.key(at: slot) != .zero { slot = (slot + 1) & mask }
        return slot
    }

    @inlinable
    mutating func grow() {
        rehash(slots: slots.count * 2)
    }

    /// Rebuilds the map with the fewest slots that hold its keys and `minimumCapacity`
    /// (when that is fewer than it has), after a burst has left it mostly empty.
    @inlinable
    public mutating func shrink(toHold minimumCapacity: Int) {
        var slots = 16
        while slots / 4 * 3 < max(count, minimumCapacity) { slots <<= 1 }
        if slots < self.slots.count { rehash(slots: slots) }
    }

    @inlinable
    mutating func rehash(slots count: Int) {
        let old = slots
        slots = Array(repeating: (.zero, nil), count: count)
        mask = count - 1
        shift = UInt64(64 - count.trailingZeroBitCount)
        for entry in old where entry.key != .zero { slots[freeSlot(for: entry.key)] = entry }
    }

    /// Calls `body` with every key and its value, in no particular order.
    @inlinable
    public func forEach(_ body: (Key, Value) throws -> Void) rethrows {
        if let zeroValue { try body(.zero, zeroValue) }
        for entry in slots where entry.key != .zero { try body(entry.key, entry.value!) }
    }

    /// Every key and its value, in no particular order.
    @inlinable
    public var entries: [(Key, Value)] {
        var entries: [(Key, Value)] = []
        entries.reserveCapacity(count)
        forEach { entries.append(($0, $1)) }
        return entries
    }
}

extension IDMap: Sendable where Key: Sendable, Value: Sendable {}

/// A map keyed by trace id.
public typealias TraceIDMap<Value> = IDMap<TraceID, Value>

/// A fast, non-cryptographic hash of bytes (and `seed`, what else the key holds),
/// for lookup tables such as an `IDMap` keyed by it: a table must confirm that the
/// entry it finds is for the same bytes.
@inlinable
public func byteHash(_ bytes: UnsafeRawBufferPointer, seed: UInt64 = 0) -> UInt64 {
    let count = bytes.count
    var hash: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(count) ^ seed &* 0xC2B2_AE3D_27D4_EB4F
    var offset = 0
    while offset + 8 < count {
        hash = (hash ^ bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) &* 0xFF51_AFD7_ED55_8CCD
        hash ^= hash >> 32
        offset += 8
    }
    // The last one to eight bytes, read in at most two loads (which may overlap bytes
    // already mixed in; the length, mixed in first, tells lengths apart).
    let tail: UInt64
    if count >= 8 {
        tail = bytes.loadUnaligned(fromByteOffset: count - 8, as: UInt64.self)
    } else if count >= 4 {
        tail = UInt64(bytes.loadUnaligned(fromByteOffset: count - 4, as: UInt32.self)) << 32
            | UInt64(bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
    } else if count > 0 {
        tail = UInt64(bytes[0]) | UInt64(bytes[count / 2]) << 8 | UInt64(bytes[count - 1]) << 16
    } else {
        tail = 0
    }
    hash = (hash ^ tail) &* 0xC4CE_B9FE_1A85_EC53
    return hash ^ (hash >> 29)
}
