/// A 16-byte W3C / OpenTelemetry trace id, ordered as its big-endian bytes.
public struct TraceID: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The first eight bytes, big-endian.
    public var high: UInt64
    /// The last eight bytes, big-endian.
    public var low: UInt64

    /// The all-zero id, which OTLP treats as invalid.
    @inlinable
    public static var zero: TraceID { TraceID(high: 0, low: 0) }

    @inlinable
    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// Reads 16 bytes; any other length gives nil.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 16 else { return nil }
        var high: UInt64 = 0
        var low: UInt64 = 0
        for (offset, byte) in bytes.enumerated() {
            if offset < 8 { high = high << 8 | UInt64(byte) } else { low = low << 8 | UInt64(byte) }
        }
        self.init(high: high, low: low)
    }

    /// Parses 32 hex digits, or 16 for a 64-bit id (zero-extended, as Zipkin and Jaeger do).
    public init?(hex: some StringProtocol) {
        let digits = Array(hex.utf8)
        switch digits.count {
        case 32:
            guard let high = parseHex64(digits[0..<16]), let low = parseHex64(digits[16..<32]) else { return nil }
            self.init(high: high, low: low)
        case 16:
            guard let low = parseHex64(digits[0..<16]) else { return nil }
            self.init(high: 0, low: low)
        default:
            return nil
        }
    }

    /// The 16 bytes, big-endian.
    public var bytes: [UInt8] {
        var result = [UInt8]()
        result.reserveCapacity(16)
        appendBigEndian(high, to: &result)
        appendBigEndian(low, to: &result)
        return result
    }

    /// 32 lower-case hex digits.
    public var hex: String { hex64(high) + hex64(low) }

    public var description: String { hex }

    @inlinable
    public static func == (lhs: TraceID, rhs: TraceID) -> Bool {
        lhs.high == rhs.high && lhs.low == rhs.low
    }

    @inlinable
    public static func < (lhs: TraceID, rhs: TraceID) -> Bool {
        (lhs.high, lhs.low) < (rhs.high, rhs.low)
    }
}

/// An 8-byte span id; zero means "none" (a root span's parent).
public struct SpanID: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The eight bytes, big-endian.
    public var value: UInt64

    /// The all-zero id: no span.
    @inlinable
    public static var zero: SpanID { SpanID(0) }

    @inlinable
    public init(_ value: UInt64) { self.value = value }

    /// Reads 8 bytes; an empty collection is `.zero`; any other length gives nil.
    public init?(bytes: some Collection<UInt8>) {
        if bytes.isEmpty { self.init(0); return }
        guard bytes.count == 8 else { return nil }
        self.init(bytes.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
    }

    /// Parses 16 hex digits.
    public init?(hex: some StringProtocol) {
        let digits = Array(hex.utf8)
        guard digits.count == 16, let value = parseHex64(digits[...]) else { return nil }
        self.init(value)
    }

    /// The 8 bytes, big-endian; empty for `.zero`.
    public var bytes: [UInt8] {
        guard value != 0 else { return [] }
        var result = [UInt8]()
        result.reserveCapacity(8)
        appendBigEndian(value, to: &result)
        return result
    }

    /// 16 lower-case hex digits.
    public var hex: String { hex64(value) }

    public var description: String { hex }

    @inlinable
    public static func == (lhs: SpanID, rhs: SpanID) -> Bool { lhs.value == rhs.value }

    @inlinable
    public static func < (lhs: SpanID, rhs: SpanID) -> Bool { lhs.value < rhs.value }
}

private func appendBigEndian(_ value: UInt64, to bytes: inout [UInt8]) {
    for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
}

private let hexDigits = Array("0123456789abcdef".utf8)

private func hex64(_ value: UInt64) -> String {
    var digits = [UInt8](repeating: 0, count: 16)
    for index in 0..<16 {
        digits[index] = hexDigits[Int((value >> UInt64(60 - index * 4)) & 0xF)]
    }
    return String(decoding: digits, as: UTF8.self)
}

private func parseHex64(_ digits: ArraySlice<UInt8>) -> UInt64? {
    var value: UInt64 = 0
    for digit in digits {
        let nibble: UInt8
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = digit - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): nibble = digit - UInt8(ascii: "A") + 10
        default: return nil
        }
        value = value << 4 | UInt64(nibble)
    }
    return value
}
