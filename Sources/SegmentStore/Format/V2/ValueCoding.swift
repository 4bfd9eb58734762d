import MeshCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A bounded move-to-front list: recently used values sit near the front, so a
/// value repeated soon after (a request id on every span of a trace, a path on both
/// sides of a hop, a status code) is coded as a small position.
///
/// Values are appended to a pool once; the list is a window of pool indexes with
/// the front at its end, so using position p moves p indexes with one memmove and
/// adding is an append (the window slides back to the start of its buffer now and then).
struct MoveToFront<Value> {
    /// Values beyond this many distinct recent ones are coded as new again.
    static var capacity: Int { 64 }

    private var pool: [Value] = []
    private var window = [Int32](repeating: 0, count: 256)
    /// The list is `window[low..<high]`, oldest first; position p is `window[high - 1 - p]`.
    private var low = 0
    private var high = 0

    var count: Int { high - low }

    /// Empties the list.
    mutating func removeAll() {
        pool.removeAll(keepingCapacity: true)
        low = 0
        high = 0
    }

    /// The position of the first value, from the front, that `matches`.
    func position(where matches: (Value) -> Bool) -> Int? {
        var index = high - 1
        while index >= low {
            if matches(pool[Int(window[index])]) { return high - 1 - index }
            index -= 1
        }
        return nil
    }

    /// Moves the value at `position` to the front and returns it.
    @discardableResult
    mutating func use(at position: Int) -> Value {
        let index = high - 1 - position
        let high = high
        let slot = window.withUnsafeMutableBufferPointer { window in
            let slot = window[index]
            if position > 0 { (window.baseAddress! + index).update(from: window.baseAddress! + index + 1, count: position) }
            window[high - 1] = slot
            return slot
        }
        return pool[Int(slot)]
    }

    /// Puts a new value at the front; returns the oldest, which falls off, when the list was full.
    @discardableResult
    mutating func insert(_ value: Value) -> Value? {
        if high == window.count {
            let (low, count) = (low, count)
            window.withUnsafeMutableBufferPointer { window in
                window.baseAddress!.update(from: window.baseAddress! + low, count: count)
            }
            self.low = 0
            high = count
        }
        window[high] = Int32(pool.count)
        high += 1
        pool.append(value)
        guard count > Self.capacity else { return nil }
        low += 1
        return pool[Int(window[low - 1])]
    }
}

/// Memory for a writer's move-to-front lists, freed all at once. Each list takes
/// one stretch of it, its filter, fingerprints and payloads side by side, so a
/// lookup reads no array header and makes no uniqueness check. Lists keep only
/// pointers into it: whoever makes them keeps the arena alive while they are used
/// (`withExtendedLifetime`).
final class ListArena {
    private var blocks: [UnsafeMutableRawPointer] = []
    private var next: UnsafeMutableRawPointer?
    private var left = 0
    private static let blockBytes = 64 << 10

    /// `bytes` of memory aligned to a cache line, uninitialized.
    func allocate(bytes: Int) -> UnsafeMutableRawPointer {
        let bytes = (bytes + 63) & ~63
        if bytes > left {
            let size = max(Self.blockBytes, bytes)
            let block = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
            blocks.append(block)
            next = block
            left = size
        }
        let memory = next!
        next = memory + bytes
        left -= bytes
        return memory
    }

    deinit {
        for block in blocks { block.deallocate() }
    }
}

/// A move-to-front list a writer searches: each entry is a fingerprint, for
/// finding it, and a payload that says what it is. Fingerprints and payloads lie
/// in two arrays, most recent last, so a search compares fingerprints in one
/// contiguous stretch; a counting filter over the fingerprints in the list answers
/// most misses (a value not seen recently) without a scan. The memory is an
/// arena's: a copy of a list shares it (a writer never copies one).
struct SearchableMoveToFront<Payload: BitwiseCopyable> {
    /// The list is `prints[low..<high]` (payloads likewise), oldest first;
    /// position p is index `high - 1 - p`.
    private let prints: UnsafeMutablePointer<UInt64>
    private let payloads: UnsafeMutablePointer<Payload>
    private let present: UnsafeMutablePointer<UInt8>
    private var low = 0
    private var high = 0
    /// Entries the arrays hold before the list slides back to their start.
    private static var windowSize: Int { 2 * MoveToFront<Payload>.capacity }
    private static var filterSize: Int { 256 }

    init(in arena: ListArena) {
        let printBytes = Self.windowSize * MemoryLayout<UInt64>.stride
        let payloadBytes = (Self.windowSize * MemoryLayout<Payload>.stride + 7) & ~7
        let memory = arena.allocate(bytes: printBytes + payloadBytes + Self.filterSize)
        prints = memory.bindMemory(to: UInt64.self, capacity: Self.windowSize)
        payloads = (memory + printBytes).bindMemory(to: Payload.self, capacity: Self.windowSize)
        present = (memory + printBytes + payloadBytes).bindMemory(to: UInt8.self, capacity: Self.filterSize)
        present.initialize(repeating: 0, count: Self.filterSize)
    }

    private static func slot(_ fingerprint: UInt64) -> Int { Int(truncatingIfNeeded: fingerprint >> 56) }

    /// Empties the list.
    mutating func removeAll() {
        // A list nothing was inserted into since it was last emptied has its filter clear.
        guard high > 0 else { return }
        low = 0
        high = 0
        present.update(repeating: 0, count: Self.filterSize)
    }

    /// The position of the entry with `fingerprint` whose payload `matches`.
    @inline(__always)
    func position(of fingerprint: UInt64, where matches: (Payload) -> Bool) -> Int? {
        guard present[Self.slot(fingerprint)] > 0 else { return nil }
        var index = high - 1
        while index >= low {
            if prints[index] == fingerprint && matches(payloads[index]) { return high - 1 - index }
            index -= 1
        }
        return nil
    }

    /// Moves the entry at `position` to the front.
    @inline(__always)
    mutating func use(at position: Int) {
        guard position > 0 else { return }
        var index = high - 1 - position
        let (print, payload) = (prints[index], payloads[index])
        while index < high - 1 {
            prints[index] = prints[index + 1]
            payloads[index] = payloads[index + 1]
            index += 1
        }
        prints[index] = print
        payloads[index] = payload
    }

    /// Puts a new entry at the front; the oldest falls off when the list is full.
    mutating func insert(_ payload: Payload, fingerprint: UInt64) {
        present[Self.slot(fingerprint)] += 1
        if high == Self.windowSize {
            let count = high - low
            prints.update(from: prints + low, count: count)
            payloads.update(from: payloads + low, count: count)
            low = 0
            high = count
        }
        prints[high] = fingerprint
        payloads[high] = payload
        high += 1
        if high - low > MoveToFront<Payload>.capacity {
            present[Self.slot(prints[low])] -= 1
            low += 1
        }
    }
}

/// Bytes a writer has copied into its store: where they are.
struct PooledBytes: BitwiseCopyable {
    var start: Int
    var count: Int
}

/// Copies of byte strings a writer has seen, found again by hash and comparison.
struct ByteStore {
    private var bytes: [UInt8] = []

    mutating func removeAll() { bytes.removeAll(keepingCapacity: true) }

    /// Copies `value` in.
    mutating func add(_ value: UnsafeBufferPointer<UInt8>) -> PooledBytes {
        let start = bytes.count
        bytes.append(contentsOf: value)
        return PooledBytes(start: start, count: value.count)
    }

    /// Whether `pooled` holds exactly the bytes of `value`.
    func matches(_ pooled: PooledBytes, _ value: UnsafeBufferPointer<UInt8>) -> Bool {
        guard pooled.count == value.count else { return false }
        guard !value.isEmpty else { return true }
        return bytes.withUnsafeBufferPointer { stored in
            sameBytes(stored.baseAddress! + pooled.start, value.baseAddress!, count: value.count)
        }
    }

    /// The position of `value` in `list` (moved to the front) when it is there, and
    /// its fingerprint, for adding it when it is not.
    func find(_ value: UnsafeBufferPointer<UInt8>, in list: inout SearchableMoveToFront<PooledBytes>) -> (position: Int?, fingerprint: UInt64) {
        let fingerprint = byteHash(UnsafeRawBufferPointer(value))
        let position = list.position(of: fingerprint) { matches($0, value) }
        if let position { list.use(at: position) }
        return (position, fingerprint)
    }
}

/// Whether `count` bytes at `a` and `b` are the same: short strings (most values)
/// in a few word loads, without a call.
@inline(__always)
func sameBytes(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, count: Int) -> Bool {
    if count >= 8 {
        guard count <= 32 else { return memcmp(a, b, count) == 0 }
        var offset = 0
        while offset + 8 < count {
            if a.loadUnaligned(fromByteOffset: offset, as: UInt64.self) != b.loadUnaligned(fromByteOffset: offset, as: UInt64.self) {
                return false
            }
            offset += 8
        }
        return a.loadUnaligned(fromByteOffset: count - 8, as: UInt64.self) == b.loadUnaligned(fromByteOffset: count - 8, as: UInt64.self)
    }
    if count >= 4 {
        return a.loadUnaligned(as: UInt32.self) == b.loadUnaligned(as: UInt32.self)
            && a.loadUnaligned(fromByteOffset: count - 4, as: UInt32.self) == b.loadUnaligned(fromByteOffset: count - 4, as: UInt32.self)
    }
    var index = 0
    while index < count {
        if a.load(fromByteOffset: index, as: UInt8.self) != b.load(fromByteOffset: index, as: UInt8.self) { return false }
        index += 1
    }
    return true
}

/// Assigns dense indexes, in first-seen order, to distinct sequences of integers
/// (attribute keys as bytes, layouts as codes).
struct SequenceInterner<Element: FixedWidthInteger> {
    private var pool: [Element] = []
    /// Entry i is `pool[starts[i]..<starts[i + 1]]`.
    private var starts: [Int] = [0]
    private var hashes: [UInt64] = []
    private var table = [Int32](repeating: -1, count: 64)

    /// Number of distinct sequences.
    var count: Int { hashes.count }

    subscript(index: Int) -> ArraySlice<Element> { pool[starts[index]..<starts[index + 1]] }

    /// Calls `body` with sequence `index` where it is stored.
    func withElements<Result>(of index: Int, _ body: (UnsafeBufferPointer<Element>) throws -> Result) rethrows -> Result {
        let range = starts[index]..<starts[index + 1]
        return try pool.withUnsafeBufferPointer { try body(UnsafeBufferPointer(rebasing: $0[range])) }
    }

    /// Whether sequence `index` is exactly `value`.
    func holds(_ index: Int, exactly value: UnsafeBufferPointer<Element>) -> Bool {
        withElements(of: index) { stored in
            stored.count == value.count
                && (value.isEmpty || sameBytes(stored.baseAddress!, value.baseAddress!, count: value.count * MemoryLayout<Element>.stride))
        }
    }

    /// The index of `value`, adding it if new.
    mutating func index(of value: UnsafeBufferPointer<Element>) -> Int {
        let raw = UnsafeRawBufferPointer(value)
        let hash = byteHash(raw)
        let mask = table.count - 1
        var slot = Int(truncatingIfNeeded: hash) & mask
        while table[slot] >= 0 {
            let entry = Int(table[slot])
            if hashes[entry] == hash && starts[entry + 1] - starts[entry] == value.count {
                let equal = pool.withUnsafeBytes { stored in
                    raw.isEmpty || memcmp(stored.baseAddress! + starts[entry] * MemoryLayout<Element>.stride, raw.baseAddress!, raw.count) == 0
                }
                if equal { return entry }
            }
            slot = (slot + 1) & mask
        }
        let index = hashes.count
        table[slot] = Int32(index)
        pool.append(contentsOf: value)
        starts.append(pool.count)
        hashes.append(hash)
        if hashes.count * 2 > table.count { rehash() }
        return index
    }

    private mutating func rehash() {
        table = [Int32](repeating: -1, count: table.count * 2)
        let mask = table.count - 1
        for (entry, hash) in hashes.enumerated() {
            var slot = Int(truncatingIfNeeded: hash) & mask
            while table[slot] >= 0 { slot = (slot + 1) & mask }
            table[slot] = Int32(entry)
        }
    }
}

/// Writes string values of one column chunk. Each value starts with a varint code:
/// 0 a new string follows as bytes; 1 a new value made of a head (move-to-front
/// coded among heads), a number (varint) and a tail (move-to-front coded among
/// tails), as in `10.1.7.3:45012` or `/api/cart/12345`; 2 a new canonical UUID as 16
/// bytes; n ≥ 3 repeats the value at move-to-front position n − 3.
struct StringValueWriter {
    private var recent: SearchableMoveToFront<PooledBytes>
    private var heads: SearchableMoveToFront<PooledBytes>
    private var tails: SearchableMoveToFront<PooledBytes>
    private var store = ByteStore()

    /// A writer whose lists live in `arena`.
    init(in arena: ListArena) {
        recent = SearchableMoveToFront(in: arena)
        heads = SearchableMoveToFront(in: arena)
        tails = SearchableMoveToFront(in: arena)
    }

    /// Starts a run: every list is empty again, so a reader can start here.
    mutating func restart() {
        recent.removeAll()
        heads.removeAll()
        tails.removeAll()
        store.removeAll()
    }

    mutating func write(_ value: UnsafeBufferPointer<UInt8>, to writer: inout ByteWriter) {
        let (position, fingerprint) = store.find(value, in: &recent)
        if let position {
            writer.writeVarint(UInt64(position + 3))
            return
        }
        recent.insert(store.add(value), fingerprint: fingerprint)
        if let (high, low) = Self.uuid(value) {
            writer.writeVarint(2)
            SegmentFormatV2.writeBigEndian(high, to: &writer)
            SegmentFormatV2.writeBigEndian(low, to: &writer)
        } else if let (head, number, tail) = Self.splitNumber(value) {
            writer.writeVarint(1)
            Self.writePart(UnsafeBufferPointer(rebasing: value[head]), list: &heads, store: &store, to: &writer)
            writer.writeVarint(number)
            Self.writePart(UnsafeBufferPointer(rebasing: value[tail]), list: &tails, store: &store, to: &writer)
        } else {
            writer.writeVarint(0)
            writer.write(lengthPrefixed: value)
        }
    }

    private static func writePart(
        _ part: UnsafeBufferPointer<UInt8>, list: inout SearchableMoveToFront<PooledBytes>, store: inout ByteStore,
        to writer: inout ByteWriter
    ) {
        let (position, fingerprint) = store.find(part, in: &list)
        if let position {
            writer.writeVarint(UInt64(position + 1))
        } else {
            writer.writeVarint(0)
            writer.write(lengthPrefixed: part)
            list.insert(store.add(part), fingerprint: fingerprint)
        }
    }

    /// Splits at the last run of decimal digits, when that run reads back exactly
    /// (no leading zero, at most 18 digits): the ranges before and after, and the number.
    static func splitNumber(_ value: UnsafeBufferPointer<UInt8>) -> (Range<Int>, UInt64, Range<Int>)? {
        var last = value.count - 1
        while last >= 0 && !isDigit(value[last]) { last -= 1 }
        guard last >= 0 else { return nil }
        var first = last
        while first > 0 && isDigit(value[first - 1]) { first -= 1 }
        let digits = last - first + 1
        guard digits <= 18, digits == 1 || value[first] != UInt8(ascii: "0") else { return nil }
        var number: UInt64 = 0
        for index in first...last { number = number * 10 + UInt64(value[index] - UInt8(ascii: "0")) }
        return (0..<first, number, last + 1..<value.count)
    }

    private static func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    /// The 16 bytes of a lower-case canonical UUID (`8-4-4-4-12` hex digits), as two
    /// big-endian halves.
    static func uuid(_ value: UnsafeBufferPointer<UInt8>) -> (UInt64, UInt64)? {
        guard value.count == 36 else { return nil }
        var halves: (UInt64, UInt64) = (0, 0)
        var nibbles = 0
        for (offset, character) in value.enumerated() {
            if offset == 8 || offset == 13 || offset == 18 || offset == 23 {
                guard character == UInt8(ascii: "-") else { return nil }
                continue
            }
            let nibble: UInt64
            switch character {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = UInt64(character - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = UInt64(character - UInt8(ascii: "a") + 10)
            default: return nil
            }
            if nibbles < 16 { halves.0 = halves.0 << 4 | nibble } else { halves.1 = halves.1 << 4 | nibble }
            nibbles += 1
        }
        return halves
    }
}

/// A string value as read: where its coded parts are in the column chunk, kept until
/// someone asks for the bytes, so rows a query reads past cost no allocation.
enum StoredString {
    case bytes(Range<Int>)
    case token(head: Range<Int>, number: UInt64, tail: Range<Int>)
    case uuid(Range<Int>)

    /// The value's UTF-8 bytes; `chunk` is the column chunk it was read from.
    func bytes(in chunk: [UInt8]) -> ArraySlice<UInt8> {
        switch self {
        case .bytes(let value):
            return chunk[value]
        case .token(let head, let number, let tail):
            var text = Array(chunk[head])
            text += String(number).utf8
            text += chunk[tail]
            return text[...]
        case .uuid(let raw):
            let hex = Array("0123456789abcdef".utf8)
            var text: [UInt8] = []
            text.reserveCapacity(36)
            for (index, byte) in chunk[raw].enumerated() {
                if index == 4 || index == 6 || index == 8 || index == 10 { text.append(UInt8(ascii: "-")) }
                text.append(hex[Int(byte >> 4)])
                text.append(hex[Int(byte & 0xF)])
            }
            return text[...]
        }
    }
}

/// Reads what `StringValueWriter` wrote.
struct StringValueReader {
    private var recent = MoveToFront<StoredString>()
    private var heads = MoveToFront<Range<Int>>()
    private var tails = MoveToFront<Range<Int>>()

    /// Starts a run, as the writer did.
    mutating func restart() {
        recent.removeAll()
        heads.removeAll()
        tails.removeAll()
    }

    mutating func read(from reader: inout ByteReader) throws(ByteReaderError) -> StoredString {
        let start = reader.offset
        let code = try reader.readVarint()
        let value: StoredString
        switch code {
        case 0:
            value = .bytes(try reader.readLengthPrefixedRange())
        case 1:
            let head = try Self.readPart(&heads, from: &reader)
            let number = try reader.readVarint()
            let tail = try Self.readPart(&tails, from: &reader)
            guard number < 1_000_000_000_000_000_000 else { throw .invalidLength(offset: start, length: number) }
            value = .token(head: head, number: number, tail: tail)
        case 2:
            value = .uuid(try reader.readRange(count: 16))
        default:
            guard code - 3 < UInt64(recent.count) else { throw .invalidLength(offset: start, length: code) }
            return recent.use(at: Int(code - 3))
        }
        recent.insert(value)
        return value
    }

    private static func readPart(_ list: inout MoveToFront<Range<Int>>, from reader: inout ByteReader) throws(ByteReaderError) -> Range<Int> {
        let start = reader.offset
        let code = try reader.readVarint()
        if code == 0 {
            let part = try reader.readLengthPrefixedRange()
            list.insert(part)
            return part
        }
        guard code - 1 < UInt64(list.count) else { throw .invalidLength(offset: start, length: code) }
        return list.use(at: Int(code - 1))
    }
}

/// Integer values of one column chunk: 0 then a zig-zag varint for a new value;
/// n ≥ 1 repeats the value at move-to-front position n − 1.
struct IntegerValueWriter {
    private var recent: SearchableMoveToFront<UInt64>

    /// A writer whose list lives in `arena`.
    init(in arena: ListArena) { recent = SearchableMoveToFront(in: arena) }

    /// Starts a run: the list is empty again, so a reader can start here.
    mutating func restart() { recent.removeAll() }

    mutating func write(_ value: UInt64, to writer: inout ByteWriter) {
        let fingerprint = value &* 0x9E37_79B9_7F4A_7C15
        if let position = recent.position(of: fingerprint, where: { $0 == value }) {
            writer.writeVarint(UInt64(position + 1))
            recent.use(at: position)
        } else {
            writer.writeVarint(0)
            writer.writeVarint(SegmentFormatV2.zigzag(Int64(bitPattern: value)))
            recent.insert(value, fingerprint: fingerprint)
        }
    }
}

/// Reads what `IntegerValueWriter` wrote.
struct IntegerValueReader {
    private var recent = MoveToFront<UInt64>()

    /// Starts a run, as the writer did.
    mutating func restart() { recent.removeAll() }

    mutating func read(from reader: inout ByteReader) throws(ByteReaderError) -> UInt64 {
        let start = reader.offset
        let code = try reader.readVarint()
        if code == 0 {
            let value = UInt64(bitPattern: SegmentDecoderV2.unzigzag(try reader.readVarint()))
            recent.insert(value)
            return value
        }
        guard code - 1 < UInt64(recent.count) else { throw .invalidLength(offset: start, length: code) }
        return recent.use(at: Int(code - 1))
    }
}
