#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why OTLP protobuf bytes could not be decoded.
public struct OTLPDecodingError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Reason: Sendable, Equatable {
        /// A field runs past the end of its message.
        case truncated
        /// A tag, varint or group is not valid protobuf.
        case malformed
        /// A string field holds bytes that are not UTF-8.
        case invalidUTF8
        /// Messages nest deeper than `ProtobufCursor.depthLimit`.
        case tooDeep
    }

    public var reason: Reason
    /// Offset in the input, in bytes, where decoding stopped.
    public var offset: Int

    public var description: String {
        switch reason {
        case .truncated: return "a field runs past the end of its message at byte \(offset)"
        case .malformed: return "malformed protobuf at byte \(offset)"
        case .invalidUTF8: return "a string field at byte \(offset) is not valid UTF-8"
        case .tooDeep: return "messages nest more than \(ProtobufCursor.depthLimit) deep at byte \(offset)"
        }
    }
}

/// Reads protobuf wire format from a buffer with the acceptance rules of
/// swift-protobuf, so that the direct OTLP decoder refuses exactly the inputs the
/// generated messages refuse: tags of at most five bytes naming field 1 or above,
/// varints of at most ten bytes, wire types 0–5 with groups matched, and messages
/// nested at most 100 deep.
struct ProtobufCursor {
    /// The deepest nesting of messages (and groups) accepted, counting the outermost message as 1.
    static let depthLimit = 100

    let base: UnsafePointer<UInt8>
    private(set) var position: Int
    let end: Int

    init(_ base: UnsafePointer<UInt8>, _ range: Range<Int>) {
        self.base = base
        position = range.lowerBound
        end = range.upperBound
    }

    var isAtEnd: Bool { position >= end }

    /// The next byte, not read past; only when not `isAtEnd`.
    @inline(__always)
    func peek() -> UInt8 { base[position] }

    /// Reads past the next byte; only when not `isAtEnd`.
    @inline(__always)
    mutating func skipByte() { position &+= 1 }

    func error(_ reason: OTLPDecodingError.Reason) -> OTLPDecodingError {
        OTLPDecodingError(reason: reason, offset: position)
    }

    @inline(__always)
    mutating func varint() throws(OTLPDecodingError) -> UInt64 {
        guard position < end else { throw error(.truncated) }
        var byte = base[position]
        position &+= 1
        if byte < 0x80 { return UInt64(byte) }
        var value = UInt64(byte & 0x7F)
        var shift: UInt64 = 7
        while true {
            guard position < end, shift <= 63 else { throw error(.malformed) }
            byte = base[position]
            position &+= 1
            value |= UInt64(byte & 0x7F) &<< shift
            if byte < 0x80 { return value }
            shift &+= 7
        }
    }

    /// The bytes `value` takes as a varint in its shortest form.
    @inline(__always)
    static func varintSize(_ value: UInt64) -> Int {
        (64 &- (value | 1).leadingZeroBitCount &+ 6) / 7
    }

    /// The next field's number and wire type; an end-group tag here is malformed.
    @inline(__always)
    mutating func tag() throws(OTLPDecodingError) -> (field: Int, wireType: UInt8) {
        let start = position
        let first = base[position]
        let wireType = first & 7
        guard wireType <= 5 else { throw error(.malformed) }
        var field = Int(first & 0x7F) &>> 3
        position &+= 1
        if first >= 0x80 {
            // At most five bytes, the fifth holding no more than four bits, as swift-protobuf reads them.
            var shift = 4
            while true {
                guard position < end, position - start < 5 else { throw error(.malformed) }
                let byte = base[position]
                position &+= 1
                if position - start == 5 && byte > 15 { throw error(.malformed) }
                field |= Int(byte & 0x7F) &<< shift
                if byte < 0x80 { break }
                shift &+= 7
            }
        }
        guard field != 0, wireType != 4 else { throw error(.malformed) }
        return (field, wireType)
    }

    /// A length-delimited payload's range.
    @inline(__always)
    mutating func lengthDelimited() throws(OTLPDecodingError) -> Range<Int> {
        let length = try varint()
        guard length <= UInt64(end - position) else { throw error(.truncated) }
        let start = position
        position &+= Int(length)
        return start..<position
    }

    @inline(__always)
    mutating func fixed64() throws(OTLPDecodingError) -> UInt64 {
        guard end - position >= 8 else { throw error(.truncated) }
        let value = UInt64(littleEndian: UnsafeRawPointer(base + position).loadUnaligned(as: UInt64.self))
        position &+= 8
        return value
    }

    @inline(__always)
    mutating func fixed32() throws(OTLPDecodingError) -> UInt32 {
        guard end - position >= 4 else { throw error(.truncated) }
        let value = UInt32(littleEndian: UnsafeRawPointer(base + position).loadUnaligned(as: UInt32.self))
        position &+= 4
        return value
    }

    /// Skips the payload of a field whose tag was just read, checking that it is well formed.
    mutating func skip(field: Int, wireType: UInt8, depth: Int) throws(OTLPDecodingError) {
        switch wireType {
        case 0: _ = try varint()
        case 1: _ = try fixed64()
        case 2: _ = try lengthDelimited()
        case 5: _ = try fixed32()
        case 3:
            guard depth + 1 <= Self.depthLimit else { throw error(.tooDeep) }
            while true {
                // Tags inside a group are read as plain varints, as swift-protobuf does.
                guard position < end else { throw error(.truncated) }
                let key = try varint()
                let innerWire = UInt8(key & 7)
                guard key < UInt64(UInt32.max), key >> 3 != 0, innerWire <= 5 else { throw error(.malformed) }
                if innerWire == 4 {
                    guard Int(key >> 3) == field else { throw error(.malformed) }
                    return
                }
                try skip(field: Int(key >> 3), wireType: innerWire, depth: depth + 1)
            }
        default:
            throw error(.malformed)
        }
    }

    /// Checks that `range` holds UTF-8.
    @inline(__always)
    func validateUTF8(_ range: Range<Int>) throws(OTLPDecodingError) {
        guard isValidUTF8(base + range.lowerBound, range.count) else {
            throw OTLPDecodingError(reason: .invalidUTF8, offset: range.lowerBound)
        }
    }

    /// Whether `range` holds exactly the bytes of `text` (an ASCII constant).
    @inline(__always)
    func equals(_ range: Range<Int>, _ text: StaticString) -> Bool {
        guard range.count == text.utf8CodeUnitCount else { return false }
        return memcmp(base + range.lowerBound, text.utf8Start, range.count) == 0
    }
}

/// Whether `count` bytes at `bytes` are well-formed UTF-8 (no overlong forms,
/// surrogates or code points above U+10FFFF).
@inline(__always)
func isValidUTF8(_ bytes: UnsafePointer<UInt8>, _ count: Int) -> Bool {
    isASCII(bytes, count) || isValidMultibyteUTF8(bytes, count)
}

/// Whether every one of `count` bytes at `bytes` is below 0x80. ASCII, by far the
/// commonest text, is checked a word at a time, the last word overlapping the one
/// before so no byte-by-byte tail is needed.
@inline(__always)
func isASCII(_ bytes: UnsafePointer<UInt8>, _ count: Int) -> Bool {
    let raw = UnsafeRawPointer(bytes)
    if count >= 8 {
        var index = 0
        var high: UInt64 = 0
        while index &+ 8 <= count {
            high |= raw.loadUnaligned(fromByteOffset: index, as: UInt64.self)
            index &+= 8
        }
        high |= raw.loadUnaligned(fromByteOffset: count &- 8, as: UInt64.self)
        return high & 0x8080_8080_8080_8080 == 0
    } else if count >= 4 {
        let high = raw.loadUnaligned(as: UInt32.self) | raw.loadUnaligned(fromByteOffset: count &- 4, as: UInt32.self)
        return high & 0x8080_8080 == 0
    } else {
        var high: UInt8 = 0
        for index in 0..<count { high |= bytes[index] }
        return high < 0x80
    }
}

/// The byte-by-byte check, for text that is not all ASCII.
private func isValidMultibyteUTF8(_ bytes: UnsafePointer<UInt8>, _ count: Int) -> Bool {
    var index = 0
    while index < count {
        let lead = bytes[index]
        if lead < 0x80 {
            index &+= 1
            continue
        }
        let width: Int
        var low: UInt8 = 0x80
        var high: UInt8 = 0xBF
        switch lead {
        case 0xC2...0xDF: width = 2
        case 0xE0: width = 3; low = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: width = 3
        case 0xED: width = 3; high = 0x9F
        case 0xF0: width = 4; low = 0x90
        case 0xF1...0xF3: width = 4
        case 0xF4: width = 4; high = 0x8F
        default: return false
        }
        guard count - index >= width else { return false }
        let second = bytes[index &+ 1]
        guard second >= low && second <= high else { return false }
        var next = index &+ 2
        while next < index &+ width {
            guard bytes[next] & 0xC0 == 0x80 else { return false }
            next &+= 1
        }
        index = next
    }
    return true
}
