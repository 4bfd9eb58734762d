import MeshCore
import SegmentStore

/// The subset of TraceQL that Grafana's Tempo search builder writes, and Jaeger-style
/// searches are translated into.
///
/// A query is one or more spansets joined by `&&` and `||`:
/// `{ resource.service.name = "cart" && span.http.response.status_code >= 500 } && { duration > 300ms }`.
/// A spanset holds when some span of the trace satisfies its condition; conditions
/// combine comparisons with `&&`, `||` and parentheses. Fields: scoped attributes
/// (`resource.x`, `span.x`), unscoped ones (`.x`: the span's, else its resource's),
/// the span intrinsics `name`, `status`, `statusMessage`, `kind` and `duration`
/// (also written `span:name`, …), and the trace intrinsics `rootServiceName`,
/// `rootName` and `traceDuration` (`trace:rootService`, `trace:rootName`,
/// `trace:duration`). Operators: `= != =~ !~ > >= < <=`; regular expressions match the
/// whole value. Literals: strings, integers, decimals, durations (`300ms`, `1.5s`),
/// `true`/`false`, status (`error`, `ok`, `unset`), kind (`server`, `client`, …) and
/// `nil` (`span.x != nil`: the attribute is set).
public indirect enum TraceQL: Sendable, Equatable {
    case spanset(Condition)
    case and(TraceQL, TraceQL)
    case or(TraceQL, TraceQL)

    /// A condition on one span.
    public indirect enum Condition: Sendable, Equatable {
        /// `{}`: every span.
        case always
        case compare(Field, Operator, Literal)
        case and(Condition, Condition)
        case or(Condition, Condition)

        /// All of `conditions` on the same span; `always` when there are none.
        public static func all(_ conditions: [Condition]) -> Condition {
            conditions.dropFirst().reduce(conditions.first ?? .always) { .and($0, $1) }
        }
    }

    public enum Scope: String, Sendable, Equatable {
        case span, resource, any
    }

    public enum Field: Sendable, Equatable {
        case name, status, statusMessage, kind, duration
        case rootServiceName, rootName, traceDuration
        /// The resource's `service.name`, read from the store's service column.
        case serviceName
        case attribute(Scope, String)

        /// Whether only the whole trace can say (the root, the trace's duration).
        var isTraceLevel: Bool {
            switch self {
            case .rootServiceName, .rootName, .traceDuration: return true
            default: return false
            }
        }
    }

    public enum Operator: String, Sendable, Equatable, CaseIterable {
        case equal = "=", notEqual = "!=", matches = "=~", notMatches = "!~"
        case greater = ">", greaterOrEqual = ">=", less = "<", lessOrEqual = "<="
    }

    public enum Literal: Sendable, Equatable {
        case string(String)
        case integer(Int64)
        case decimal(Double)
        /// Nanoseconds.
        case duration(UInt64)
        case bool(Bool)
        case status(StatusCode)
        case kind(SpanKind)
        case `nil`
    }

    /// The spanset conditions, left to right.
    public var spansets: [Condition] {
        switch self {
        case .spanset(let condition): return [condition]
        case .and(let left, let right), .or(let left, let right): return left.spansets + right.spansets
        }
    }
}

// MARK: - Parsing

extension TraceQL {
    /// Why a query was refused, with the character offset where reading stopped.
    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var offset: Int
        public var reason: String
        public var description: String { "TraceQL at character \(offset + 1): \(reason)" }
    }

    /// Parses `text`; an empty or blank query is `{}`.
    public static func parse(_ text: String) throws(ParseError) -> TraceQL {
        var parser = Parser(Array(text.unicodeScalars))
        parser.skipSpace()
        if parser.atEnd { return .spanset(.always) }
        let query = try parser.query()
        parser.skipSpace()
        guard parser.atEnd else {
            throw parser.error(parser.peek == "|" ? "pipelines (`| …`) are not supported" : "unexpected \(parser.describeNext)")
        }
        return query
    }

    /// Parses one field, as Tempo's tag routes name them: `resource.service.name`,
    /// `span.http.method`, `.x`, `name`, `status`, `kind`, …
    public static func parseField(_ text: String) throws(ParseError) -> Field {
        var parser = Parser(Array(text.unicodeScalars))
        let field = try parser.field()
        parser.skipSpace()
        guard parser.atEnd else { throw parser.error("unexpected \(parser.describeNext) after the field") }
        return field
    }

    private struct Parser {
        let scalars: [Unicode.Scalar]
        var index = 0

        init(_ scalars: [Unicode.Scalar]) { self.scalars = scalars }

        var atEnd: Bool { index >= scalars.count }
        var peek: Unicode.Scalar? { atEnd ? nil : scalars[index] }
        var describeNext: String { peek.map { "'\($0)'" } ?? "end of query" }

        func error(_ reason: String) -> ParseError { ParseError(offset: index, reason: reason) }

        mutating func skipSpace() {
            while let next = peek, next.properties.isWhitespace { index += 1 }
        }

        mutating func take(_ token: String) -> Bool {
            skipSpace()
            let expected = Array(token.unicodeScalars)
            guard index + expected.count <= scalars.count, Array(scalars[index..<index + expected.count]) == expected else { return false }
            index += expected.count
            return true
        }

        mutating func query() throws(ParseError) -> TraceQL {
            var left = try queryTerm()
            while true {
                if take("&&") { left = .and(left, try queryTerm()) }
                else if take("||") { left = .or(left, try queryTerm()) }
                else { return left }
            }
        }

        mutating func queryTerm() throws(ParseError) -> TraceQL {
            skipSpace()
            if take("(") {
                let inner = try query()
                guard take(")") else { throw error("expected ')'") }
                return inner
            }
            guard take("{") else { throw error("expected '{' to open a spanset, found \(describeNext)") }
            skipSpace()
            if take("}") { return .spanset(.always) }
            let condition = try conditionOr()
            guard take("}") else { throw error("expected '}' or '&&' or '||', found \(describeNext)") }
            skipSpace()
            if let next = peek, next == ">" || next == "~" || next == "<" {
                throw error("structural operators (`>>`, `>`, `~`, `<<`) are not supported")
            }
            return .spanset(condition)
        }

        mutating func conditionOr() throws(ParseError) -> Condition {
            var left = try conditionAnd()
            while take("||") { left = .or(left, try conditionAnd()) }
            return left
        }

        mutating func conditionAnd() throws(ParseError) -> Condition {
            var left = try conditionTerm()
            while take("&&") { left = .and(left, try conditionTerm()) }
            return left
        }

        mutating func conditionTerm() throws(ParseError) -> Condition {
            if take("(") {
                let inner = try conditionOr()
                guard take(")") else { throw error("expected ')'") }
                return inner
            }
            let field = try self.field()
            skipSpace()
            guard let op = comparison() else {
                throw error("expected a comparison (= != =~ !~ > >= < <=) after the field, found \(describeNext)")
            }
            skipSpace()
            let literalStart = index
            let value = try literal()
            try check(field, op, value, at: literalStart)
            return .compare(field, op, value)
        }

        mutating func comparison() -> Operator? {
            // Longest first, so `>=` is not read as `>`.
            for op in [Operator.notEqual, .matches, .notMatches, .greaterOrEqual, .lessOrEqual, .equal, .greater, .less] where take(op.rawValue) {
                return op
            }
            return nil
        }

        static func isIdentifier(_ scalar: Unicode.Scalar) -> Bool {
            scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) || "_.-/".unicodeScalars.contains(scalar)
        }

        mutating func identifier() -> String {
            let start = index
            while let next = peek, Self.isIdentifier(next) { index += 1 }
            return String(String.UnicodeScalarView(scalars[start..<index]))
        }

        mutating func field() throws(ParseError) -> Field {
            skipSpace()
            let start = index
            if take(".") {
                return try attribute(scope: .any, from: start)
            }
            let word = identifier()
            if take(":") {
                let name = identifier()
                switch (word, name) {
                case ("span", "name"): return .name
                case ("span", "status"): return .status
                case ("span", "statusMessage"): return .statusMessage
                case ("span", "kind"): return .kind
                case ("span", "duration"): return .duration
                case ("trace", "rootService"): return .rootServiceName
                case ("trace", "rootName"): return .rootName
                case ("trace", "duration"): return .traceDuration
                default:
                    index = start
                    throw error("unknown intrinsic '\(word):\(name)'")
                }
            }
            switch word {
            case "name": return .name
            case "status": return .status
            case "statusMessage": return .statusMessage
            case "kind": return .kind
            case "duration": return .duration
            case "rootServiceName": return .rootServiceName
            case "rootName": return .rootName
            case "traceDuration": return .traceDuration
            default: break
            }
            for scope in [Scope.resource, .span] where word.hasPrefix(scope.rawValue + ".") {
                index = start + scope.rawValue.unicodeScalars.count + 1
                return try attribute(scope: scope, from: start)
            }
            if word.isEmpty {
                throw error("expected a field (name, status, duration, span.x, resource.x, .x), found \(describeNext)")
            }
            index = start
            throw error("unknown field '\(word)': attributes need a scope (span.\(word), resource.\(word) or .\(word))")
        }

        /// The attribute name after `resource.`, `span.` or `.`; it may be quoted.
        mutating func attribute(scope: Scope, from start: Int) throws(ParseError) -> Field {
            let name: String
            if peek == "\"" {
                name = try quoted()
            } else {
                name = identifier()
            }
            guard !name.isEmpty else {
                index = start
                throw error("an attribute needs a name after its scope")
            }
            if name == "service.name" && scope != .span { return .serviceName }
            return .attribute(scope, name)
        }

        mutating func quoted() throws(ParseError) -> String {
            let quote = scalars[index]
            let start = index
            index += 1
            var text = String.UnicodeScalarView()
            while let next = peek {
                index += 1
                if next == quote { return String(text) }
                if next == "\\" && quote == "\"" {
                    guard let escaped = peek else { break }
                    index += 1
                    switch escaped {
                    case "n": text.append("\n")
                    case "t": text.append("\t")
                    default: text.append(escaped)
                    }
                } else {
                    text.append(next)
                }
            }
            index = start
            throw error("unterminated string")
        }

        mutating func literal() throws(ParseError) -> Literal {
            skipSpace()
            guard let first = peek else { throw error("expected a value, found end of query") }
            if first == "\"" || first == "`" { return .string(try quoted()) }
            let start = index
            if first == "-" || ("0"..."9").contains(first) {
                index += 1
                while let next = peek, ("0"..."9").contains(next) || next == "." || next.properties.isAlphabetic { index += 1 }
                let text = String(String.UnicodeScalarView(scalars[start..<index]))
                if let integer = Int64(text) { return .integer(integer) }
                if let decimal = Double(text), decimal.isFinite { return .decimal(decimal) }
                if !text.hasPrefix("-"), let nanoseconds = DurationText.nanoseconds(text) { return .duration(nanoseconds) }
                index = start
                throw error("'\(text)' is not a number or a duration (300ms, 1.5s)")
            }
            let word = identifier()
            switch word {
            case "true": return .bool(true)
            case "false": return .bool(false)
            case "nil": return .nil
            case "error": return .status(.error)
            case "ok": return .status(.ok)
            case "unset": return .status(.unset)
            default: break
            }
            if let kind = SpanKind.allCases.first(where: { $0.name == word }) { return .kind(kind) }
            index = start
            throw error(word.isEmpty ? "expected a value, found \(describeNext)" : "unknown value '\(word)' (strings are quoted)")
        }

        /// Refuses comparisons that can never hold by their types: a status with `>`, a
        /// duration with a string, a regular expression that does not compile.
        func check(_ field: Field, _ op: Operator, _ value: Literal, at offset: Int) throws(ParseError) {
            let ordering: Set<Operator> = [.greater, .greaterOrEqual, .less, .lessOrEqual]
            let fail = { (reason: String) -> ParseError in ParseError(offset: offset, reason: reason) }
            switch field {
            case .status:
                guard case .status = value, op == .equal || op == .notEqual else { throw fail("status compares with = or != to error, ok or unset") }
            case .kind:
                guard case .kind = value, op == .equal || op == .notEqual else { throw fail("kind compares with = or != to server, client, producer, consumer, internal or unspecified") }
            case .duration, .traceDuration:
                switch value {
                case .duration, .integer: guard op != .matches && op != .notMatches else { fallthrough }
                default: throw fail("a duration compares with = != > >= < <= to a duration such as 300ms")
                }
            case .name, .statusMessage, .rootServiceName, .rootName, .serviceName:
                guard case .string = value, !ordering.contains(op) else { throw fail("\(field) compares with = != =~ !~ to a quoted string") }
            case .attribute:
                if case .nil = value, op != .equal, op != .notEqual { throw fail("nil compares with = or !=") }
            }
            if op == .matches || op == .notMatches {
                guard case .string(let pattern) = value else { throw fail("=~ and !~ take a quoted regular expression") }
                guard (try? Regex(pattern)) != nil else { throw fail("'\(pattern)' is not a valid regular expression") }
            }
        }
    }
}

// MARK: - Evaluation

/// Three-valued truth: a condition on the whole trace is `unknown` while only one span is in hand.
enum Truth: Equatable {
    case yes, no, unknown

    static func && (lhs: Truth, rhs: @autoclosure () -> Truth) -> Truth {
        if lhs == .no { return .no }
        let right = rhs()
        if right == .no { return .no }
        return lhs == .yes && right == .yes ? .yes : .unknown
    }

    static func || (lhs: Truth, rhs: @autoclosure () -> Truth) -> Truth {
        if lhs == .yes { return .yes }
        let right = rhs()
        if right == .yes { return .yes }
        return lhs == .no && right == .no ? .no : .unknown
    }

    init(_ value: Bool) { self = value ? .yes : .no }
}

/// What the trace intrinsics compare against, once the whole trace is known.
struct TraceFacts {
    var rootService: String
    var rootName: String
    var duration: UInt64
}

/// A condition compiled for repeated evaluation: attribute keys as bytes, regular
/// expressions compiled once.
final class CompiledCondition: @unchecked Sendable {
    private indirect enum Node {
        case always
        case and(Node, Node)
        case or(Node, Node)
        case compare(TraceQL.Field, TraceQL.Operator, TraceQL.Literal, key: [UInt8], regex: Regex<AnyRegexOutput>?)
    }

    private let root: Node
    let condition: TraceQL.Condition

    init(_ condition: TraceQL.Condition) {
        self.condition = condition
        func compile(_ condition: TraceQL.Condition) -> Node {
            switch condition {
            case .always: return .always
            case .and(let left, let right): return .and(compile(left), compile(right))
            case .or(let left, let right): return .or(compile(left), compile(right))
            case .compare(let field, let op, let literal):
                var key: [UInt8] = []
                if case .attribute(_, let name) = field { key = Array(name.utf8) }
                var regex: Regex<AnyRegexOutput>?
                if op == .matches || op == .notMatches, case .string(let pattern) = literal { regex = try? Regex(pattern) }
                return .compare(field, op, literal, key: key, regex: regex)
            }
        }
        root = compile(condition)
    }

    /// Whether the span at `row` satisfies the condition; trace intrinsics are
    /// `unknown` when `trace` is nil.
    func evaluate<Rows: SpanRows>(_ rows: Rows, _ row: Int, trace: TraceFacts?) -> Truth {
        evaluate(root, rows, row, trace)
    }

    private func evaluate<Rows: SpanRows>(_ node: Node, _ rows: Rows, _ row: Int, _ trace: TraceFacts?) -> Truth {
        switch node {
        case .always: return .yes
        case .and(let left, let right): return evaluate(left, rows, row, trace) && evaluate(right, rows, row, trace)
        case .or(let left, let right): return evaluate(left, rows, row, trace) || evaluate(right, rows, row, trace)
        case .compare(let field, let op, let literal, let key, let regex):
            switch field {
            case .name: return Truth(Self.compare(text: rows.name(row), op, literal, regex))
            case .statusMessage: return Truth(Self.compare(text: rows.statusMessage(row), op, literal, regex))
            case .serviceName: return Truth(Self.compare(text: rows.serviceName(row), op, literal, regex))
            case .status:
                guard case .status(let code) = literal else { return .no }
                return Truth((rows.status(row) == code) == (op == .equal))
            case .kind:
                guard case .kind(let kind) = literal else { return .no }
                return Truth((rows.kind(row) == kind) == (op == .equal))
            case .duration: return Truth(Self.compare(nanoseconds: rows.duration(row), op, literal))
            case .rootServiceName:
                guard let trace else { return .unknown }
                return Truth(Self.compare(text: trace.rootService, op, literal, regex))
            case .rootName:
                guard let trace else { return .unknown }
                return Truth(Self.compare(text: trace.rootName, op, literal, regex))
            case .traceDuration:
                guard let trace else { return .unknown }
                return Truth(Self.compare(nanoseconds: trace.duration, op, literal))
            case .attribute(let scope, _):
                var found: AttributeValue?
                let capture = { (value: AttributeValue) -> Bool in
                    found = value
                    return true
                }
                if scope != .resource {
                    _ = AttributeValue.find(key, in: rows.spanAttributes(row), capture)
                }
                if found == nil && scope != .span {
                    _ = AttributeValue.find(key, inResourceSpans: rows.resourceSpans(row), capture)
                }
                return Truth(Self.compare(found, op, literal, regex))
            }
        }
    }

    /// Whether some span of `group` (one resource's spans of one status in a block)
    /// may satisfy the condition: exact on service, status and kind, by range on
    /// duration, and yes for everything a summary does not hold.
    func mayMatch(_ group: BlockSummary.Group, service: String) -> Bool {
        mayMatch(root, group, service)
    }

    private func mayMatch(_ node: Node, _ group: BlockSummary.Group, _ service: String) -> Bool {
        switch node {
        case .always: return true
        case .and(let left, let right): return mayMatch(left, group, service) && mayMatch(right, group, service)
        case .or(let left, let right): return mayMatch(left, group, service) || mayMatch(right, group, service)
        case .compare(let field, let op, let literal, _, let regex):
            switch field {
            case .serviceName:
                return Self.compare(text: service, op, literal, regex)
            case .status:
                guard case .status(let code) = literal else { return false }
                return (group.status == code) == (op == .equal)
            case .kind:
                guard case .kind(let kind) = literal else { return false }
                let bit = UInt8(1) << kind.rawValue
                return op == .equal ? group.kinds & bit != 0 : group.kinds & ~bit != 0
            case .duration:
                let bound: Double
                switch literal {
                case .duration(let value): bound = Double(value)
                case .integer(let value): bound = Double(value)
                default: return false
                }
                let (low, high) = (Double(group.minDuration), Double(group.maxDuration))
                switch op {
                case .greater: return high > bound
                case .greaterOrEqual: return high >= bound
                case .less: return low < bound
                case .lessOrEqual: return low <= bound
                case .equal: return low <= bound && bound <= high
                case .notEqual: return !(low == bound && high == bound)
                case .matches, .notMatches: return false
                }
            default:
                return true
            }
        }
    }

    private static func compare(nanoseconds: UInt64, _ op: TraceQL.Operator, _ literal: TraceQL.Literal) -> Bool {
        let bound: Double
        switch literal {
        case .duration(let value): bound = Double(value)
        case .integer(let value): bound = Double(value)
        default: return false
        }
        return order(Double(nanoseconds), op, bound)
    }

    private static func order<T: Comparable>(_ value: T, _ op: TraceQL.Operator, _ bound: T) -> Bool {
        switch op {
        case .equal: return value == bound
        case .notEqual: return value != bound
        case .greater: return value > bound
        case .greaterOrEqual: return value >= bound
        case .less: return value < bound
        case .lessOrEqual: return value <= bound
        case .matches, .notMatches: return false
        }
    }

    private static func compare(text: String, _ op: TraceQL.Operator, _ literal: TraceQL.Literal, _ regex: Regex<AnyRegexOutput>?) -> Bool {
        switch op {
        case .matches, .notMatches:
            guard let regex else { return false }
            return ((try? regex.wholeMatch(in: text)) != nil) == (op == .matches)
        default:
            guard case .string(let expected) = literal else { return false }
            return order(text, op, expected)
        }
    }

    /// An attribute against a literal. Numbers compare with numbers, including
    /// decimal text (Envoy writes `http.status_code` as a string); strings with
    /// strings, and a string literal also matches a number or bool written as it.
    private static func compare(_ value: AttributeValue?, _ op: TraceQL.Operator, _ literal: TraceQL.Literal, _ regex: Regex<AnyRegexOutput>?) -> Bool {
        if case .nil = literal { return (value == nil) == (op == .equal) }
        guard let value else { return false }
        switch literal {
        case .string(let expected):
            guard let text = value.string ?? value.int.map({ String($0) }) ?? value.bool.map({ String($0) }) ?? value.double.map({ String($0) }) else { return false }
            if op == .matches || op == .notMatches { return compare(text: text, op, literal, regex) }
            return order(text, op, expected)
        case .integer(let expected):
            if let integer = value.integer { return order(integer, op, expected) }
            if let double = value.double ?? value.string.flatMap(Double.init) { return order(double, op, Double(expected)) }
            return false
        case .decimal(let expected):
            guard let number = value.double ?? value.integer.map(Double.init) ?? value.string.flatMap(Double.init) else { return false }
            return order(number, op, expected)
        case .duration(let expected):
            guard let number = value.integer.map(Double.init) ?? value.double else { return false }
            return order(number, op, Double(expected))
        case .bool(let expected):
            guard let bool = value.bool ?? value.string.flatMap(Bool.init) else { return false }
            return op == .equal ? bool == expected : op == .notEqual ? bool != expected : false
        case .status, .kind, .nil:
            return false
        }
    }
}

/// Spans as a condition reads them: a decoded batch, or a block's facts.
protocol SpanRows {
    var count: Int { get }
    /// The resources `resourceIndex` points into.
    var resourceTable: [ResourceEntry] { get }
    func resourceIndex(_ row: Int) -> Int
    func traceID(_ row: Int) -> TraceID
    func start(_ row: Int) -> UInt64
    func name(_ row: Int) -> String
    func serviceName(_ row: Int) -> String
    func statusMessage(_ row: Int) -> String
    func status(_ row: Int) -> StatusCode
    func kind(_ row: Int) -> SpanKind
    func duration(_ row: Int) -> UInt64
    /// The span's attributes, a protobuf `KeyValueList`.
    func spanAttributes(_ row: Int) -> ArraySlice<UInt8>
    /// The span's resource, a protobuf `ResourceSpans` without spans.
    func resourceSpans(_ row: Int) -> [UInt8]
}

extension SpanBatch: SpanRows {
    var resourceTable: [ResourceEntry] { resources }
    func resourceIndex(_ row: Int) -> Int { Int(resourceIndices[row]) }
    func traceID(_ row: Int) -> TraceID { traceIDs[row] }
    func start(_ row: Int) -> UInt64 { startTimes[row] }
    func name(_ row: Int) -> String { names[row] }
    func serviceName(_ row: Int) -> String { serviceName(at: row) }
    func statusMessage(_ row: Int) -> String { statusMessages[row] }
    func status(_ row: Int) -> StatusCode { statusCodes[row] }
    func kind(_ row: Int) -> SpanKind { kinds[row] }
    func duration(_ row: Int) -> UInt64 { duration(at: row) }
    func spanAttributes(_ row: Int) -> ArraySlice<UInt8> { attributes[row] }
    func resourceSpans(_ row: Int) -> [UInt8] { resources[Int(resourceIndices[row])].encoded }
}

/// A block's facts with the segment's dictionaries: no span attributes nor status messages.
struct FactRows: SpanRows {
    let facts: SpanFacts
    let names: [String]
    let resources: [ResourceEntry]

    var count: Int { facts.count }
    var resourceTable: [ResourceEntry] { resources }
    func resourceIndex(_ row: Int) -> Int { Int(facts.resources[row]) }
    func traceID(_ row: Int) -> TraceID { facts.traceIDs[Int(facts.traces[row])] }
    func start(_ row: Int) -> UInt64 { facts.startTimes[row] }
    func name(_ row: Int) -> String { names[Int(facts.names[row])] }
    func serviceName(_ row: Int) -> String { resources[Int(facts.resources[row])].serviceName }
    func statusMessage(_ row: Int) -> String { "" }
    func status(_ row: Int) -> StatusCode { facts.statusCodes[row] }
    func kind(_ row: Int) -> SpanKind { facts.kinds[row] }
    func duration(_ row: Int) -> UInt64 { facts.endTimes[row] &- facts.startTimes[row] }
    func spanAttributes(_ row: Int) -> ArraySlice<UInt8> { [] }
    func resourceSpans(_ row: Int) -> [UInt8] { resources[Int(facts.resources[row])].encoded }
}

extension TraceQL.Condition {
    /// Whether evaluating the condition reads what a block's facts leave out: span
    /// attributes or status messages.
    var readsBeyondFacts: Bool {
        switch self {
        case .always: return false
        case .compare(.attribute(let scope, _), _, _): return scope != .resource
        case .compare(.statusMessage, _, _): return true
        case .compare: return false
        case .and(let left, let right), .or(let left, let right): return left.readsBeyondFacts || right.readsBeyondFacts
        }
    }

    /// Services one of which a matching span must come from, or nil when any may.
    var requiredServices: Set<String>? {
        switch self {
        case .always: return nil
        case .compare(.serviceName, .equal, .string(let name)): return [name]
        case .compare: return nil
        case .and(let left, let right):
            switch (left.requiredServices, right.requiredServices) {
            case let (l?, r?): return l.intersection(r)
            case let (l?, nil): return l
            case let (nil, r): return r
            }
        case .or(let left, let right):
            guard let l = left.requiredServices, let r = right.requiredServices else { return nil }
            return l.union(r)
        }
    }
}

extension TraceQL {
    /// Whether a part of the store whose spans come from `services` can hold a span
    /// of some spanset of the query.
    func couldMatch(services: Set<String>) -> Bool {
        spansets.contains { condition in
            condition.requiredServices.map { !$0.isDisjoint(with: services) } ?? true
        }
    }
}
