/// Appends little-endian integers, LEB128 varints and length-prefixed bytes to a buffer.
public struct ByteWriter: Sendable {
    /// The bytes written so far.
    @usableFromInline
    internal private(set) var storage: [UInt8]

    /// The bytes written so far.
    @inlinable
    public var bytes: [UInt8] { storage }

    public init(capacity: Int = 0) {
        storage = []
        storage.reserveCapacity(capacity)
    }

    /// Number of bytes written so far.
    @inlinable
    public var count: Int { storage.count }

    @inlinable
    public mutating func write(_ value: UInt8) { storage.append(value) }

    @inlinable
    public mutating func write(_ value: UInt16) { writeLittleEndian(UInt64(value), width: 2) }

    @inlinable
    public mutating func write(_ value: UInt32) { writeLittleEndian(UInt64(value), width: 4) }

    @inlinable
    public mutating func write(_ value: UInt64) { writeLittleEndian(value, width: 8) }

    @inlinable
    internal mutating func writeLittleEndian(_ value: UInt64, width: Int) {
        for index in 0..<width { storage.append(UInt8(truncatingIfNeeded: value >> UInt64(index * 8))) }
    }

    /// Writes an unsigned LEB128 varint (1–10 bytes).
    @inlinable
    public mutating func writeVarint(_ value: UInt64) {
        var remaining = value
        while remaining >= 0x80 {
            storage.append(UInt8(truncatingIfNeeded: remaining) | 0x80)
            remaining >>= 7
        }
        storage.append(UInt8(remaining))
    }

    /// Writes a signed integer as a zig-zag varint.
    @inlinable
    public mutating func writeSignedVarint(_ value: Int64) {
        writeVarint(UInt64(bitPattern: (value << 1) ^ (value >> 63)))
    }

    /// Writes raw bytes with no length prefix.
    @inlinable
    public mutating func write<Bytes: Sequence>(raw: Bytes) where Bytes.Element == UInt8 {
        storage.append(contentsOf: raw)
    }

    /// Writes a varint length followed by the bytes.
    @inlinable
    public mutating func write<Bytes: Collection>(lengthPrefixed value: Bytes) where Bytes.Element == UInt8 {
        writeVarint(UInt64(value.count))
        storage.append(contentsOf: value)
    }

    /// Writes a varint length followed by the UTF-8 bytes of `value`.
    @inlinable
    public mutating func write(string value: String) {
        write(lengthPrefixed: value.utf8)
    }
}

/// Why bytes could not be read back.
public enum ByteReaderError: Error, Equatable, CustomStringConvertible {
    /// The input ended `needed` bytes short, at `offset`.
    case truncated(offset: Int, needed: Int)
    /// A varint ran past 10 bytes or 64 bits, at `offset`.
    case malformedVarint(offset: Int)
    /// A length or count field holds an implausible value.
    case invalidLength(offset: Int, length: UInt64)

    public var description: String {
        switch self {
        case .truncated(let offset, let needed): return "input ends at byte \(offset), \(needed) more bytes needed"
        case .malformedVarint(let offset): return "malformed varint at byte \(offset)"
        case .invalidLength(let offset, let length): return "implausible length \(length) at byte \(offset)"
        }
    }
}

/// Reads what `ByteWriter` wrote, checking every bound.
public struct ByteReader: Sendable {
    @usableFromInline
    internal let bytes: [UInt8]
    @usableFromInline
    internal var position: Int
    /// The next byte to read.
    @inlinable
    public var offset: Int { position }
    @usableFromInline
    internal let end: Int

    public init(_ bytes: [UInt8], range: Range<Int>? = nil) {
        self.bytes = bytes
        let range = range ?? 0..<bytes.count
        position = range.lowerBound
        end = range.upperBound
    }

    /// Bytes left to read.
    @inlinable
    public var remaining: Int { end - position }

    /// Whether every byte has been read.
    @inlinable
    public var isAtEnd: Bool { position >= end }

    @inlinable
    internal mutating func need(_ count: Int) throws(ByteReaderError) {
        if count > end - position { throw .truncated(offset: position, needed: count - (end - position)) }
    }

    @inlinable
    public mutating func readUInt8() throws(ByteReaderError) -> UInt8 {
        try need(1)
        defer { position += 1 }
        return bytes[position]
    }

    @inlinable
    public mutating func readUInt16() throws(ByteReaderError) -> UInt16 { UInt16(try readLittleEndian(width: 2)) }

    @inlinable
    public mutating func readUInt32() throws(ByteReaderError) -> UInt32 { UInt32(try readLittleEndian(width: 4)) }

    @inlinable
    public mutating func readUInt64() throws(ByteReaderError) -> UInt64 { try readLittleEndian(width: 8) }

    @inlinable
    internal mutating func readLittleEndian(width: Int) throws(ByteReaderError) -> UInt64 {
        try need(width)
        var value: UInt64 = 0
        for index in 0..<width { value |= UInt64(bytes[position + index]) << UInt64(index * 8) }
        position += width
        return value
    }

    @inlinable
    public mutating func readVarint() throws(ByteReaderError) -> UInt64 {
        if position < end, bytes[position] < 0x80 {
            defer { position += 1 }
            return UInt64(bytes[position])
        }
        return try readLongVarint()
    }

    @inlinable
    internal mutating func readLongVarint() throws(ByteReaderError) -> UInt64 {
        let start = position
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard position < end else { throw .truncated(offset: position, needed: 1) }
            let byte = bytes[position]
            position += 1
            if shift == 63 && byte > 1 { throw .malformedVarint(offset: start) }
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
            if shift > 63 { throw .malformedVarint(offset: start) }
        }
    }

    @inlinable
    public mutating func readSignedVarint() throws(ByteReaderError) -> Int64 {
        let raw = try readVarint()
        return Int64(bitPattern: raw >> 1) ^ -Int64(bitPattern: raw & 1)
    }

    /// Continues reading at `offset` of the buffer, which must not lie past the end.
    @inlinable
    public mutating func move(to offset: Int) throws(ByteReaderError) {
        guard offset >= 0, offset <= end else { throw .invalidLength(offset: position, length: UInt64(bitPattern: Int64(offset))) }
        position = offset
    }

    /// Reads past `count` varints.
    @inlinable
    public mutating func skipVarints(_ count: Int) throws(ByteReaderError) {
        for _ in 0..<count { _ = try readVarint() }
    }

    /// Reads a varint that counts items or bytes, refusing values above `limit`.
    @inlinable
    public mutating func readCount(limit: Int) throws(ByteReaderError) -> Int {
        let start = position
        let value = try readVarint()
        guard limit >= 0, value <= UInt64(limit) else { throw .invalidLength(offset: start, length: value) }
        return Int(value)
    }

    /// Reads a varint that indexes a table of `count` entries: below `count`, so an
    /// empty table refuses every index.
    @inlinable
    public mutating func readIndex(below count: Int) throws(ByteReaderError) -> Int {
        let start = position
        let value = try readVarint()
        guard value < UInt64(max(0, count)) else { throw .invalidLength(offset: start, length: value) }
        return Int(value)
    }

    @inlinable
    public mutating func readRaw(count: Int) throws(ByteReaderError) -> ArraySlice<UInt8> {
        bytes[try readRange(count: count)]
    }

    /// Reads past `count` bytes and returns where they are in the buffer.
    @inlinable
    public mutating func readRange(count: Int) throws(ByteReaderError) -> Range<Int> {
        try need(count)
        defer { position += count }
        return position..<position + count
    }

    @inlinable
    public mutating func readLengthPrefixed() throws(ByteReaderError) -> ArraySlice<UInt8> {
        bytes[try readLengthPrefixedRange()]
    }

    /// Reads past a varint length and that many bytes; returns where the bytes are in the buffer.
    @inlinable
    public mutating func readLengthPrefixedRange() throws(ByteReaderError) -> Range<Int> {
        let count = try readCount(limit: remaining)
        return try readRange(count: count)
    }

    /// The buffer being read (all of it, not only the range given at init).
    @inlinable
    public var buffer: [UInt8] { bytes }

    /// Reads a length-prefixed string; invalid UTF-8 is repaired with U+FFFD.
    @inlinable
    public mutating func readString() throws(ByteReaderError) -> String {
        String(decoding: try readLengthPrefixed(), as: UTF8.self)
    }
}
