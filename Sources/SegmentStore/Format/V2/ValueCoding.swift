import MeshCore

/// A bounded move-to-front list: recently used values sit near the front, so a
/// value repeated soon after (a request id on every span of a trace, a path on both
/// sides of a hop, a status code) is coded as a small position.
///
/// Values are appended to a pool once; the list itself is a ring of pool indexes,
/// so adding is O(1) and using position p moves p integers. Writers search it by
/// fingerprint; readers (`searchable: false`) only index it.
struct MoveToFront<Value: Hashable> {
    /// Values beyond this many distinct recent ones are coded as new again.
    static var capacity: Int { 64 }
    private static var mask: Int { capacity - 1 }

    private var pool: [Value] = []
    private var fingerprints: [Int] = []
    private var ring = [Int](repeating: 0, count: 64)
    private var head = 0
    private(set) var count = 0
    private let searchable: Bool

    init(searchable: Bool = true) {
        self.searchable = searchable
    }

    /// The position of `value`, if it is in the list.
    func position(of value: Value) -> Int? {
        let fingerprint = Self.fingerprint(value)
        for position in 0..<count {
            let index = ring[(head + position) & Self.mask]
            if fingerprints[index] == fingerprint && pool[index] == value { return position }
        }
        return nil
    }

    /// Moves the value at `position` to the front and returns it.
    @discardableResult
    mutating func use(at position: Int) -> Value {
        let index = ring[(head + position) & Self.mask]
        var current = position
        while current > 0 {
            ring[(head + current) & Self.mask] = ring[(head + current - 1) & Self.mask]
            current -= 1
        }
        ring[head] = index
        return pool[index]
    }

    /// Puts a new value at the front; the oldest falls off when the list is full.
    mutating func insert(_ value: Value) {
        head = (head - 1) & Self.mask
        ring[head] = pool.count
        pool.append(value)
        if searchable { fingerprints.append(Self.fingerprint(value)) }
        count = min(count + 1, Self.capacity)
    }

    private static func fingerprint(_ value: Value) -> Int {
        if let number = value as? UInt64 { return Int(truncatingIfNeeded: number) }
        if let bytes = value as? ArraySlice<UInt8> {
            var hasher = Hasher()
            bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
            return hasher.finalize()
        }
        return value.hashValue
    }
}

/// Writes string values of one column chunk. Each value starts with a varint code:
/// 0 a new string follows as bytes; 1 a new value made of a head (move-to-front
/// coded among heads), a number (varint) and a tail (move-to-front coded among
/// tails), as in `10.1.7.3:45012` or `/api/cart/12345`; 2 a new canonical UUID as 16
/// bytes; n ≥ 3 repeats the value at move-to-front position n − 3.
struct StringValueWriter {
    private var recent = MoveToFront<ArraySlice<UInt8>>()
    private var heads = MoveToFront<ArraySlice<UInt8>>()
    private var tails = MoveToFront<ArraySlice<UInt8>>()

    mutating func write(_ value: ArraySlice<UInt8>, to writer: inout ByteWriter) {
        if let position = recent.position(of: value) {
            writer.writeVarint(UInt64(position + 3))
            recent.use(at: position)
            return
        }
        recent.insert(value)
        if let uuid = Self.uuidBytes(value) {
            writer.writeVarint(2)
            writer.write(raw: uuid)
        } else if let (head, number, tail) = Self.splitNumber(value) {
            writer.writeVarint(1)
            Self.writePart(head, list: &heads, to: &writer)
            writer.writeVarint(number)
            Self.writePart(tail, list: &tails, to: &writer)
        } else {
            writer.writeVarint(0)
            writer.write(lengthPrefixed: value)
        }
    }

    private static func writePart(_ part: ArraySlice<UInt8>, list: inout MoveToFront<ArraySlice<UInt8>>, to writer: inout ByteWriter) {
        if let position = list.position(of: part) {
            writer.writeVarint(UInt64(position + 1))
            list.use(at: position)
        } else {
            writer.writeVarint(0)
            writer.write(lengthPrefixed: part)
            list.insert(part)
        }
    }

    /// Splits at the last run of decimal digits, when that run reads back exactly
    /// (no leading zero, at most 18 digits).
    static func splitNumber(_ value: ArraySlice<UInt8>) -> (ArraySlice<UInt8>, UInt64, ArraySlice<UInt8>)? {
        guard let last = value.lastIndex(where: isDigit) else { return nil }
        var first = last
        while first > value.startIndex && isDigit(value[value.index(before: first)]) { first = value.index(before: first) }
        let digits = value[first...last]
        guard digits.count <= 18, digits.count == 1 || digits.first != UInt8(ascii: "0") else { return nil }
        let number = digits.reduce(UInt64(0)) { $0 * 10 + UInt64($1 - UInt8(ascii: "0")) }
        return (value[..<first], number, value[value.index(after: last)...])
    }

    private static func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    /// The 16 bytes of a lower-case canonical UUID (`8-4-4-4-12` hex digits).
    static func uuidBytes(_ value: ArraySlice<UInt8>) -> [UInt8]? {
        guard value.count == 36 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(16)
        var high: UInt8?
        for (offset, character) in value.enumerated() {
            if offset == 8 || offset == 13 || offset == 18 || offset == 23 {
                guard character == UInt8(ascii: "-") else { return nil }
                continue
            }
            let nibble: UInt8
            switch character {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = character - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = character - UInt8(ascii: "a") + 10
            default: return nil
            }
            if let pending = high {
                bytes.append(pending << 4 | nibble)
                high = nil
            } else {
                high = nibble
            }
        }
        return bytes
    }
}

/// A string value as read: kept in its coded parts until someone asks for the bytes,
/// so rows that a query reads past cost no allocation.
enum StoredString: Hashable {
    case bytes(ArraySlice<UInt8>)
    case token(head: ArraySlice<UInt8>, number: UInt64, tail: ArraySlice<UInt8>)
    case uuid(ArraySlice<UInt8>)

    /// The value's UTF-8 bytes.
    var bytes: ArraySlice<UInt8> {
        switch self {
        case .bytes(let value):
            return value
        case .token(let head, let number, let tail):
            var text = Array(head)
            text += String(number).utf8
            text += tail
            return text[...]
        case .uuid(let raw):
            let hex = Array("0123456789abcdef".utf8)
            var text: [UInt8] = []
            text.reserveCapacity(36)
            for (index, byte) in raw.enumerated() {
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
    private var recent = MoveToFront<StoredString>(searchable: false)
    private var heads = MoveToFront<ArraySlice<UInt8>>(searchable: false)
    private var tails = MoveToFront<ArraySlice<UInt8>>(searchable: false)

    mutating func read(from reader: inout ByteReader) throws(ByteReaderError) -> StoredString {
        let start = reader.offset
        let code = try reader.readVarint()
        let value: StoredString
        switch code {
        case 0:
            value = .bytes(try reader.readLengthPrefixed())
        case 1:
            let head = try Self.readPart(&heads, from: &reader)
            let number = try reader.readVarint()
            let tail = try Self.readPart(&tails, from: &reader)
            guard number < 1_000_000_000_000_000_000 else { throw .invalidLength(offset: start, length: number) }
            value = .token(head: head, number: number, tail: tail)
        case 2:
            value = .uuid(try reader.readRaw(count: 16))
        default:
            let position = Int(code - 3)
            guard position < recent.count else { throw .invalidLength(offset: start, length: code) }
            return recent.use(at: position)
        }
        recent.insert(value)
        return value
    }

    private static func readPart(_ list: inout MoveToFront<ArraySlice<UInt8>>, from reader: inout ByteReader) throws(ByteReaderError) -> ArraySlice<UInt8> {
        let start = reader.offset
        let code = try reader.readVarint()
        if code == 0 {
            let part = try reader.readLengthPrefixed()
            list.insert(part)
            return part
        }
        guard code - 1 < UInt64(list.count) else { throw .invalidLength(offset: start, length: code) }
        return list.use(at: Int(code - 1))
    }
}

/// Integer values of one column chunk: 0 then a zig-zag varint for a new value;
/// n ≥ 1 repeats the value at move-to-front position n − 1.
struct IntegerValueCoder {
    private var recent: MoveToFront<UInt64>

    /// - Parameter searchable: false for a reader, which never searches by value.
    init(searchable: Bool = true) {
        recent = MoveToFront(searchable: searchable)
    }

    mutating func write(_ value: UInt64, to writer: inout ByteWriter) {
        if let position = recent.position(of: value) {
            writer.writeVarint(UInt64(position + 1))
            recent.use(at: position)
        } else {
            writer.writeVarint(0)
            writer.writeVarint(SegmentFormatV2.zigzag(Int64(bitPattern: value)))
            recent.insert(value)
        }
    }

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
