/// Appends little-endian integers, LEB128 varints and length-prefixed bytes to a buffer.
public struct ByteWriter: Sendable {
    /// The bytes written so far.
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 0) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    /// Number of bytes written so far.
    public var count: Int { bytes.count }

    public mutating func write(_ value: UInt8) { bytes.append(value) }

    public mutating func write(_ value: UInt16) { writeLittleEndian(UInt64(value), width: 2) }

    public mutating func write(_ value: UInt32) { writeLittleEndian(UInt64(value), width: 4) }

    public mutating func write(_ value: UInt64) { writeLittleEndian(value, width: 8) }

    private mutating func writeLittleEndian(_ value: UInt64, width: Int) {
        for index in 0..<width { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(index * 8))) }
    }

    /// Writes an unsigned LEB128 varint (1–10 bytes).
    public mutating func writeVarint(_ value: UInt64) {
        var remaining = value
        while remaining >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: remaining) | 0x80)
            remaining >>= 7
        }
        bytes.append(UInt8(remaining))
    }

    /// Writes a signed integer as a zig-zag varint.
    public mutating func writeSignedVarint(_ value: Int64) {
        writeVarint(UInt64(bitPattern: (value << 1) ^ (value >> 63)))
    }

    /// Writes raw bytes with no length prefix.
    public mutating func write<Bytes: Sequence>(raw: Bytes) where Bytes.Element == UInt8 {
        bytes.append(contentsOf: raw)
    }

    /// Writes a varint length followed by the bytes.
    public mutating func write<Bytes: Collection>(lengthPrefixed value: Bytes) where Bytes.Element == UInt8 {
        writeVarint(UInt64(value.count))
        bytes.append(contentsOf: value)
    }

    /// Writes a varint length followed by the UTF-8 bytes of `value`.
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
    private let bytes: [UInt8]
    /// The next byte to read.
    public private(set) var offset: Int
    private let end: Int

    public init(_ bytes: [UInt8], range: Range<Int>? = nil) {
        self.bytes = bytes
        let range = range ?? 0..<bytes.count
        offset = range.lowerBound
        end = range.upperBound
    }

    /// Bytes left to read.
    public var remaining: Int { end - offset }

    /// Whether every byte has been read.
    public var isAtEnd: Bool { offset >= end }

    private mutating func need(_ count: Int) throws(ByteReaderError) {
        if count > end - offset { throw .truncated(offset: offset, needed: count - (end - offset)) }
    }

    public mutating func readUInt8() throws(ByteReaderError) -> UInt8 {
        try need(1)
        defer { offset += 1 }
        return bytes[offset]
    }

    public mutating func readUInt16() throws(ByteReaderError) -> UInt16 { UInt16(try readLittleEndian(width: 2)) }

    public mutating func readUInt32() throws(ByteReaderError) -> UInt32 { UInt32(try readLittleEndian(width: 4)) }

    public mutating func readUInt64() throws(ByteReaderError) -> UInt64 { try readLittleEndian(width: 8) }

    private mutating func readLittleEndian(width: Int) throws(ByteReaderError) -> UInt64 {
        try need(width)
        var value: UInt64 = 0
        for index in 0..<width { value |= UInt64(bytes[offset + index]) << UInt64(index * 8) }
        offset += width
        return value
    }

    public mutating func readVarint() throws(ByteReaderError) -> UInt64 {
        let start = offset
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard offset < end else { throw .truncated(offset: offset, needed: 1) }
            let byte = bytes[offset]
            offset += 1
            if shift == 63 && byte > 1 { throw .malformedVarint(offset: start) }
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
            if shift > 63 { throw .malformedVarint(offset: start) }
        }
    }

    public mutating func readSignedVarint() throws(ByteReaderError) -> Int64 {
        let raw = try readVarint()
        return Int64(bitPattern: raw >> 1) ^ -Int64(bitPattern: raw & 1)
    }

    /// Reads a varint that counts items or bytes, refusing values above `limit`.
    public mutating func readCount(limit: Int) throws(ByteReaderError) -> Int {
        let start = offset
        let value = try readVarint()
        guard value <= UInt64(limit) else { throw .invalidLength(offset: start, length: value) }
        return Int(value)
    }

    public mutating func readRaw(count: Int) throws(ByteReaderError) -> ArraySlice<UInt8> {
        try need(count)
        defer { offset += count }
        return bytes[offset..<offset + count]
    }

    public mutating func readLengthPrefixed() throws(ByteReaderError) -> ArraySlice<UInt8> {
        let count = try readCount(limit: remaining)
        return try readRaw(count: count)
    }

    /// Reads a length-prefixed string; invalid UTF-8 is repaired with U+FFFD.
    public mutating func readString() throws(ByteReaderError) -> String {
        String(decoding: try readLengthPrefixed(), as: UTF8.self)
    }
}
