import MeshCore

/// A bounded move-to-front list: recently used values sit near the front, so a
/// value repeated soon after (a request id on every span of a trace, a path on both
/// sides of a hop, a status code) is coded as a small position. Each value carries a
/// fingerprint so a search compares integers, not bytes.
struct MoveToFront<Value: Hashable> {
    /// Values beyond this many distinct recent ones are coded as new again.
    static var capacity: Int { 64 }

    private(set) var values: [Value] = []
    private var fingerprints: [Int] = []

    /// The position of `value`, if it is in the list.
    func position(of value: Value) -> Int? {
        let fingerprint = Self.fingerprint(value)
        var index = 0
        while index < fingerprints.count {
            if fingerprints[index] == fingerprint && values[index] == value { return index }
            index += 1
        }
        return nil
    }

    /// Moves the value at `position` to the front and returns it.
    @discardableResult
    mutating func use(at position: Int) -> Value {
        let value = values.remove(at: position)
        let fingerprint = fingerprints.remove(at: position)
        values.insert(value, at: 0)
        fingerprints.insert(fingerprint, at: 0)
        return value
    }

    /// Puts a new value at the front.
    mutating func insert(_ value: Value) {
        values.insert(value, at: 0)
        fingerprints.insert(Self.fingerprint(value), at: 0)
        if values.count > Self.capacity {
            values.removeLast()
            fingerprints.removeLast()
        }
    }

    private static func fingerprint(_ value: Value) -> Int {
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

/// Reads what `StringValueWriter` wrote.
struct StringValueReader {
    private var recent = MoveToFront<ArraySlice<UInt8>>()
    private var heads = MoveToFront<ArraySlice<UInt8>>()
    private var tails = MoveToFront<ArraySlice<UInt8>>()

    mutating func read(from reader: inout ByteReader) throws(ByteReaderError) -> ArraySlice<UInt8> {
        let start = reader.offset
        let code = try reader.readVarint()
        switch code {
        case 0:
            let value = try reader.readLengthPrefixed()
            recent.insert(value)
            return value
        case 1:
            let head = try Self.readPart(&heads, from: &reader)
            let number = try reader.readVarint()
            let tail = try Self.readPart(&tails, from: &reader)
            guard number < 1_000_000_000_000_000_000 else { throw .invalidLength(offset: start, length: number) }
            let value = ArraySlice(Array(head) + Array(String(number).utf8) + Array(tail))
            recent.insert(value)
            return value
        case 2:
            let raw = try reader.readRaw(count: 16)
            let hex = Array("0123456789abcdef".utf8)
            var text: [UInt8] = []
            text.reserveCapacity(36)
            for (index, byte) in raw.enumerated() {
                if index == 4 || index == 6 || index == 8 || index == 10 { text.append(UInt8(ascii: "-")) }
                text.append(hex[Int(byte >> 4)])
                text.append(hex[Int(byte & 0xF)])
            }
            let value = ArraySlice(text)
            recent.insert(value)
            return value
        default:
            let position = Int(code - 3)
            guard position < recent.values.count else { throw .invalidLength(offset: start, length: code) }
            return recent.use(at: position)
        }
    }

    private static func readPart(_ list: inout MoveToFront<ArraySlice<UInt8>>, from reader: inout ByteReader) throws(ByteReaderError) -> ArraySlice<UInt8> {
        let start = reader.offset
        let code = try reader.readVarint()
        if code == 0 {
            let part = try reader.readLengthPrefixed()
            list.insert(part)
            return part
        }
        guard code - 1 < UInt64(list.values.count) else { throw .invalidLength(offset: start, length: code) }
        return list.use(at: Int(code - 1))
    }
}

/// Integer values of one column chunk: 0 then a zig-zag varint for a new value;
/// n ≥ 1 repeats the value at move-to-front position n − 1.
struct IntegerValueCoder {
    private var recent = MoveToFront<UInt64>()

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
        guard code - 1 < UInt64(recent.values.count) else { throw .invalidLength(offset: start, length: code) }
        return recent.use(at: Int(code - 1))
    }
}
