/// Parses the relative durations that `--since` and the query API accept.
public enum DurationText {
    /// Parses `90s`, `15m`, `1h30m`, `2d`, `500ms`, `250us`; returns nanoseconds, or nil
    /// when malformed or longer than `Int64.max` nanoseconds (about 292 years).
    public static func nanoseconds(_ text: String) -> UInt64? {
        let units: [(String, UInt64)] = [
            ("ns", 1), ("us", 1_000), ("µs", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000),
            ("m", 60_000_000_000), ("h", 3_600_000_000_000), ("d", 86_400_000_000_000),
        ]
        var rest = Substring(text.trimmingCharacters(in: " "))
        guard !rest.isEmpty else { return nil }
        var total: UInt64 = 0
        while !rest.isEmpty {
            let number = rest.prefix { $0.isNumber || $0 == "." }
            guard !number.isEmpty, let value = Double(number) else { return nil }
            rest = rest.dropFirst(number.count)
            let unitText = rest.prefix { !$0.isNumber && $0 != "." }
            guard let unit = units.first(where: { $0.0 == unitText }) else { return nil }
            rest = rest.dropFirst(unitText.count)
            let part = value * Double(unit.1)
            guard part.isFinite, part < Double(Int64.max) else { return nil }
            let (sum, overflow) = total.addingReportingOverflow(UInt64(part))
            guard !overflow, sum <= UInt64(Int64.max) else { return nil }
            total = sum
        }
        return total
    }

    /// Formats nanoseconds for people: `850µs`, `12.3ms`, `1.25s`.
    public static func format(nanoseconds value: UInt64) -> String {
        switch value {
        case ..<1_000: return "\(value)ns"
        case ..<1_000_000: return "\(value / 1_000)µs"
        case ..<1_000_000_000: return formatDecimal(Double(value) / 1e6) + "ms"
        default: return formatDecimal(Double(value) / 1e9) + "s"
        }
    }

    private static func formatDecimal(_ value: Double) -> String {
        let digits = value >= 100 ? 0 : value >= 10 ? 1 : 2
        var text = String(Int64((value * pow10(digits)).rounded()))
        guard digits > 0 else { return text }
        while text.count <= digits { text = "0" + text }
        text.insert(".", at: text.index(text.endIndex, offsetBy: -digits))
        return text
    }

    private static func pow10(_ exponent: Int) -> Double {
        (0..<exponent).reduce(1.0) { value, _ in value * 10 }
    }
}

extension String {
    fileprivate func trimmingCharacters(in character: Character) -> String {
        var result = Substring(self)
        while result.first == character { result = result.dropFirst() }
        while result.last == character { result = result.dropLast() }
        return String(result)
    }
}
