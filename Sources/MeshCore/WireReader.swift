/// A bounds-checked protobuf wire-format reader over a range of a buffer; payloads
/// come back as ranges of that buffer.
public struct WireReader {
    @usableFromInline let bytes: UnsafeBufferPointer<UInt8>
    @usableFromInline var offset: Int
    /// The next byte to read.
    @inlinable
    public var position: Int { offset }
    @usableFromInline let end: Int

    @inlinable
    public init(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) {
        self.bytes = bytes
        offset = range.lowerBound
        end = range.upperBound
    }

    @inlinable
    public var isAtEnd: Bool { offset >= end }

    @inlinable @inline(__always)
    public mutating func varint() -> UInt64? {
        // Tags, lengths and most values fit one byte: read that here, the rest out of line.
        if offset < end && bytes[offset] < 0x80 {
            offset += 1
            return UInt64(bytes[offset - 1])
        }
        return longVarint()
    }

    @inlinable
    mutating func longVarint() -> UInt64? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while offset < end {
            let byte = bytes[offset]
            offset += 1
            if shift == 63 && byte > 1 { return nil }
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
            if shift > 63 { return nil }
        }
        return nil
    }

    @inlinable
    public mutating func tag() -> (field: UInt64, wireType: UInt8)? {
        guard let key = varint(), key >> 3 > 0 else { return nil }
        return (key >> 3, UInt8(key & 7))
    }

    @inlinable
    public mutating func lengthDelimited() -> Range<Int>? {
        guard let length = varint(), length <= UInt64(end - offset) else { return nil }
        defer { offset += Int(length) }
        return offset..<offset + Int(length)
    }

    @inlinable
    public mutating func fixed32() -> UInt32? {
        guard end - offset >= 4 else { return nil }
        defer { offset += 4 }
        return (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[offset + $1]) << UInt32($1 * 8) }
    }

    @inlinable
    public mutating func fixed64() -> UInt64? {
        guard end - offset >= 8 else { return nil }
        defer { offset += 8 }
        return (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[offset + $1]) << UInt64($1 * 8) }
    }

    /// Skips one field's payload; false when the wire type is unknown or the input ends.
    @inlinable
    public mutating func skip(wireType: UInt8) -> Bool {
        switch wireType {
        case 0: return varint() != nil
        case 1: return fixed64() != nil
        case 2: return lengthDelimited() != nil
        case 5: return fixed32() != nil
        default: return false
        }
    }
}
