/// A rejection threshold of OpenTelemetry's consistent probability sampling: a
/// trace whose 56-bit randomness `R` is at least the threshold `T` is kept, so it is
/// kept with probability `(2⁵⁶ − T) / 2⁵⁶`. Every sampler that compares the same
/// randomness with the same threshold makes the same decision, on any collector,
/// after any restart.
public struct Threshold: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// 2⁵⁶: one more than the largest randomness value.
    public static let range: UInt64 = 1 << 56
    /// The threshold of probability 1 (`th:0`): everything is kept.
    public static let always = Threshold(rejecting: 0)
    /// A threshold no randomness reaches: nothing is kept.
    public static let never = Threshold(rejecting: range)

    /// How many of the 2⁵⁶ randomness values are rejected.
    public let rejected: UInt64

    public init(rejecting rejected: UInt64) {
        self.rejected = min(rejected, Self.range)
    }

    /// The threshold of `probability` (0…1), rounded to `precision` significant hex
    /// digits after any leading `f`s, as OpenTelemetry's samplers do (4 by default:
    /// 10 % becomes `th:e666`, 1 % `th:fd70a`, 0.1 % `th:ffbe77`).
    public init(probability: Double, precision: Int = 4) {
        guard probability > 0 else { self = .never; return }
        guard probability < 1 else { self = .always; return }
        let exact = (1 - probability) * Double(Self.range)
        var rejected = UInt64(min(exact.rounded(), Double(Self.range - 1)))
        var leadingF = 0
        while leadingF < 13 && (rejected >> UInt64(4 * (13 - leadingF))) & 0xF == 0xF { leadingF += 1 }
        let digits = max(1, min(14, precision + leadingF))
        let drop = UInt64(4 * (14 - digits))
        if drop > 0 {
            // Round to the nearest value with `digits` significant hex digits; never to 2⁵⁶.
            let unit: UInt64 = 1 << drop
            let rounded = (rejected + unit / 2) / unit * unit
            rejected = rounded >= Self.range ? rejected / unit * unit : rounded
        }
        self.init(rejecting: rejected)
    }

    /// The probability that a trace is kept.
    public var probability: Double { Double(Self.range - rejected) / Double(Self.range) }

    /// How many traces one kept trace stands for: 1 / probability (infinite for `never`).
    public var adjustedCount: Double { rejected >= Self.range ? .infinity : Double(Self.range) / Double(Self.range - rejected) }

    /// Whether a trace with this randomness is kept.
    @inlinable
    public func keeps(_ randomness: UInt64) -> Bool { randomness >= rejected }

    /// The `th` value: 14 hex digits with trailing zeros dropped (`0` for probability 1).
    public var hex: String {
        guard rejected > 0 else { return "0" }
        guard rejected < Self.range else { return "never" }
        var digits = Array(String(rejected, radix: 16))
        digits.insert(contentsOf: repeatElement("0", count: 14 - digits.count), at: 0)
        while digits.last == "0" { digits.removeLast() }
        return String(digits)
    }

    /// Parses a `th` value: 1 to 14 hex digits, padded on the right with zeros.
    public init?(hex: some StringProtocol) {
        guard (1...14).contains(hex.count), let value = UInt64(hex, radix: 16) else { return nil }
        self.init(rejecting: value << UInt64(4 * (14 - hex.count)))
    }

    public var description: String { "th:\(hex)" }

    public static func < (lhs: Threshold, rhs: Threshold) -> Bool { lhs.rejected < rhs.rejected }
}

extension TraceID {
    /// The randomness OpenTelemetry takes from a trace id: its 56 least significant bits.
    @inlinable
    public var randomness: UInt64 { low & (Threshold.range - 1) }
}

/// The `ot` entry of a W3C `tracestate`, where OpenTelemetry's sampling records its
/// threshold (`th`) and explicit randomness (`rv`).
public struct OTelTraceState: Sendable, Equatable {
    public var threshold: Threshold?
    /// Explicit randomness, when an upstream set it.
    public var randomness: UInt64?
    /// The `ot` entry's other sub-keys, kept as they were.
    public var otherFields: [String] = []

    public init(threshold: Threshold? = nil, randomness: UInt64? = nil) {
        self.threshold = threshold
        self.randomness = randomness
    }

    /// Reads the `ot` entry of `traceState`; an absent or malformed entry yields nothing.
    public init(traceState: some StringProtocol) {
        for member in traceState.split(separator: ",") {
            let trimmed = member.drop(while: { $0 == " " || $0 == "\t" })
            guard trimmed.hasPrefix("ot=") else { continue }
            for field in trimmed.dropFirst(3).split(separator: ";") {
                if field.hasPrefix("th:"), let threshold = Threshold(hex: field.dropFirst(3)) {
                    self.threshold = threshold
                } else if field.hasPrefix("rv:"), field.count == 17, let value = UInt64(field.dropFirst(3), radix: 16) {
                    randomness = value
                } else if !field.hasPrefix("th:") && !field.hasPrefix("rv:") {
                    otherFields.append(String(field))
                }
            }
            return
        }
    }

    /// The `ot` entry's value (`th:fd70a;rv:…`), or nil when it would be empty.
    var entryValue: String? {
        var fields: [String] = []
        if let threshold { fields.append("th:" + threshold.hex) }
        if let randomness {
            let digits = String(randomness, radix: 16)
            fields.append("rv:" + String(repeating: "0", count: max(0, 14 - digits.count)) + digits)
        }
        fields += otherFields
        return fields.isEmpty ? nil : fields.joined(separator: ";")
    }

    /// `traceState` with its `ot` entry replaced by this one, first in the list as
    /// W3C asks of a modified entry; the other members stay as they were.
    public func applied(to traceState: some StringProtocol) -> String {
        var members: [String] = []
        for member in traceState.split(separator: ",") {
            let trimmed = member.drop(while: { $0 == " " || $0 == "\t" })
            if !trimmed.isEmpty && !trimmed.hasPrefix("ot=") { members.append(String(trimmed)) }
        }
        if let value = entryValue { members.insert("ot=" + value, at: 0) }
        return members.joined(separator: ",")
    }
}
