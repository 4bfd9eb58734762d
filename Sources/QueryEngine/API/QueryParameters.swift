import Foundation
import MeshCore

/// A request's query parameters, several values per name, with parsers whose
/// errors name the parameter.
public struct QueryParameters: Sendable {
    private var values: [String: [String]]

    public init(_ pairs: [(String, String)] = []) {
        var values: [String: [String]] = [:]
        for (name, value) in pairs { values[name, default: []].append(value) }
        self.values = values
    }

    /// Parses `a=1&b=x%20y` (`+` is a space, as in forms).
    public init(query: String) {
        self.init(query.split(separator: "&").map { pair in
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ text: Substring) -> String {
                let spaced = text.replacingOccurrences(of: "+", with: " ")
                return spaced.removingPercentEncoding ?? spaced
            }
            return (decode(parts[0]), parts.count > 1 ? decode(parts[1]) : "")
        })
    }

    /// The first value of `name`, nil when absent or empty.
    public subscript(_ name: String) -> String? {
        guard let value = values[name]?.first, !value.isEmpty else { return nil }
        return value
    }

    /// The first value of the first of `names` that is present (for aliases such as `query.service_name`).
    public func first(_ names: String...) -> String? {
        names.lazy.compactMap { self[$0] }.first
    }

    public func all(_ name: String) -> [String] { values[name] ?? [] }

    /// The query string, names sorted: `a=1&b=x%20y`.
    public var encoded: String {
        values.keys.sorted().flatMap { name in
            values[name]!.map { "\(Self.escape(name))=\(Self.escape($0))" }
        }.joined(separator: "&")
    }

    public mutating func set(_ name: String, _ value: String?) {
        if let value { values[name] = [value] } else { values[name] = nil }
    }

    public mutating func add(_ name: String, _ value: String) {
        values[name, default: []].append(value)
    }

    static func escape(_ text: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~:")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }

    /// A refused parameter; the message names it.
    public struct Invalid: Error, CustomStringConvertible {
        public var message: String
        public init(_ message: String) { self.message = message }
        public var description: String { message }
    }

    public func integer(_ name: String, default value: Int? = nil, in range: ClosedRange<Int> = 0...Int.max) throws(Invalid) -> Int? {
        guard let text = self[name] else { return value }
        guard let parsed = Int(text), range.contains(parsed) else {
            throw Invalid("parameter '\(name)' must be an integer in \(range.lowerBound)...\(range.upperBound), got \(text.debugDescription)")
        }
        return parsed
    }

    /// A duration such as `100ms`, `1.5s` or `2h` (Go's syntax), in nanoseconds.
    public func duration(_ name: String) throws(Invalid) -> UInt64? {
        guard let text = self[name] else { return nil }
        guard let parsed = DurationText.nanoseconds(text) else {
            throw Invalid("parameter '\(name)' must be a duration like 100ms or 1.5s, got \(text.debugDescription)")
        }
        return parsed
    }

    /// Unix time in the unit `scale` nanoseconds each (1000 for microseconds), in nanoseconds.
    public func epoch(_ name: String, scale: UInt64) throws(Invalid) -> UInt64? {
        guard let text = self[name] else { return nil }
        guard let value = UInt64(text) else {
            throw Invalid("parameter '\(name)' must be a Unix time in \(Self.unitName(scale)), got \(text.debugDescription)")
        }
        let (product, overflow) = value.multipliedReportingOverflow(by: scale)
        guard !overflow else { throw Invalid("parameter '\(name)' is out of range: \(text)") }
        return product
    }

    private static func unitName(_ scale: UInt64) -> String {
        switch scale {
        case 1: return "nanoseconds"
        case 1_000: return "microseconds"
        case 1_000_000: return "milliseconds"
        default: return "seconds"
        }
    }

    /// The window of the native API and the CLI: `since` (relative) or `start`
    /// (RFC 3339), up to `until` (relative to now, or RFC 3339) or `end` (RFC 3339).
    /// Without either bound, the last `defaultSince` nanoseconds.
    public func window(defaultSince: UInt64 = TimeWindow.defaultSince, now: UInt64 = TimeWindow.now()) throws(Invalid) -> ClosedRange<UInt64> {
        var upper = now
        if let text = first("until", "end") {
            let name = self["until"] != nil ? "until" : "end"
            if let relative = DurationText.nanoseconds(text) {
                upper = now > relative ? now - relative : 0
            } else if let absolute = TimeWindow.rfc3339Nanoseconds(text) {
                upper = absolute
            } else {
                throw Invalid("parameter '\(name)' must be RFC 3339 or a duration before now (15m), got \(text.debugDescription)")
            }
        }
        var lower = upper > defaultSince ? upper - defaultSince : 0
        if let start = self["start"] {
            if self["since"] != nil { throw Invalid("parameters 'since' and 'start' cannot be combined") }
            guard let parsed = TimeWindow.rfc3339Nanoseconds(start) else {
                throw Invalid("parameter 'start' must be RFC 3339, got \(start.debugDescription)")
            }
            lower = parsed
        } else if let since = self["since"] {
            guard let span = DurationText.nanoseconds(since) else {
                throw Invalid("parameter 'since' must be a duration like 15m or 1h, got \(since.debugDescription)")
            }
            lower = upper > span ? upper - span : 0
        }
        guard lower <= upper else { throw Invalid("the window starts after it ends") }
        return lower...upper
    }
}

/// Clock and text forms of query windows.
public enum TimeWindow {
    /// The default look-back when no window is given, in nanoseconds (one hour).
    public static let defaultSince: UInt64 = 3_600_000_000_000

    /// Nanoseconds since the epoch, now.
    public static func now() -> UInt64 {
        UInt64(max(0, Date().timeIntervalSince1970 * 1e9))
    }

    public static func rfc3339Nanoseconds(_ text: String) -> UInt64? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) ?? ISO8601DateFormatter().date(from: text) {
            return UInt64(max(0, date.timeIntervalSince1970 * 1e9))
        }
        return nil
    }
}
