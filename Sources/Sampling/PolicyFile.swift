import Foundation
import MeshCore
import Yams

/// A sampling policy file: how long to wait for a trace's spans, how much to hold
/// while waiting, and the policies that decide.
///
/// The shape is the OpenTelemetry Collector's `tail_sampling` processor config, so
/// an existing one can be brought along (the file may hold it bare, under
/// `tail_sampling:`, or under `processors: tail_sampling:`), plus meshtrace's
/// buffer bounds and mesh policies.
public struct PolicyFile: Sendable {
    /// How long a trace waits for more spans after its first one arrives.
    public var decisionWait: Duration = .seconds(10)
    /// How long a trace waits after its root span arrives (when sooner than `decisionWait`).
    public var rootWait: Duration = .seconds(2)
    /// The most bytes of spans held undecided; past it the oldest traces are decided early.
    public var maxBufferBytes = 256 << 20
    /// The most traces held undecided (OpenTelemetry's `num_traces`).
    public var maxTraces = 1_000_000
    /// A trace reaching this many spans is decided at once; its later spans follow that decision.
    public var maxSpansPerTrace = 10_000
    /// How many recent decisions are remembered for spans that arrive after them.
    public var decisionCacheSize = 200_000
    public var policies: [Policy] = []
    /// Settings accepted for compatibility that have no effect here, with why.
    public var ignored: [String] = []
    /// Where it was read from.
    public var source = "<built-in>"

    /// Every policy, nested ones included.
    var allPolicies: [Policy] { policies.flatMap(\.all) }

    /// A policy file that cannot be used, saying where and why.
    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
    }

    /// Reads the policy file at `path`.
    public static func load(path: String) throws(Invalid) -> PolicyFile {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Invalid(description: "\(path): cannot read the file")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw Invalid(description: "\(path): not UTF-8 text") }
        return try parse(yaml: text, file: path)
    }

    /// Parses policy-file YAML; `file` names it in errors.
    public static func parse(yaml: String, file: String) throws(Invalid) -> PolicyFile {
        var parser = Parser(file: file)
        return try parser.file(yaml)
    }

    /// The default policy: every error and server error, every entry call slower
    /// than its edge's p99, the first traces over each new edge, a tenth of the
    /// traces with plaintext calls, and 1 % of everything else.
    public static let defaultYAML = """
        # meshtrace's default sampling policy (docs/sampling.md).
        decision_wait: 10s
        root_wait: 2s
        max_buffer_bytes: 256MiB
        policies:
          - name: errors
            type: status_code
            status_code: {status_codes: [ERROR]}
          - name: server-errors
            type: numeric_attribute
            numeric_attribute: {key: http.response.status_code, min_value: 500, max_value: 599}
          - name: slow
            type: slow_for_edge
            slow_for_edge: {quantile: 0.99, scope: root}
          - name: new-edges
            type: new_edge
            new_edge: {traces_per_edge: 10}
          - name: plaintext
            type: and
            and:
              and_sub_policy:
                - {name: plaintext-calls, type: plaintext}
                - {name: a-tenth, type: probabilistic, probabilistic: {sampling_percentage: 10}}
          - name: baseline
            type: probabilistic
            probabilistic: {sampling_percentage: 1}
        """

    /// The default policy, parsed.
    public static func builtIn() -> PolicyFile {
        do { return try parse(yaml: defaultYAML, file: "<built-in>") } catch { fatalError("the built-in policy is invalid: \(error)") }
    }
}

/// Reads a policy file's YAML nodes, naming the file, line and column of anything wrong.
private struct Parser {
    let file: String
    var nextSlot = 0

    init(file: String) { self.file = file }

    func place(_ node: Node) -> String { node.mark.map { "\(file):\($0.line):\($0.column)" } ?? file }

    func fail(_ node: Node, _ path: String, _ reason: String) -> PolicyFile.Invalid {
        PolicyFile.Invalid(description: "\(place(node)): \(path): \(reason)")
    }

    mutating func file(_ yaml: String) throws(PolicyFile.Invalid) -> PolicyFile {
        let parsed: Node?
        do {
            parsed = try Yams.compose(yaml: yaml)
        } catch let error as YamlError {
            throw PolicyFile.Invalid(description: "\(file): not valid YAML: \(Self.describe(error))")
        } catch {
            throw PolicyFile.Invalid(description: "\(file): not valid YAML: \(error)")
        }
        guard var root = parsed else { throw PolicyFile.Invalid(description: "\(file): the file is empty; it needs a policies list") }
        // An OpenTelemetry Collector config brought along as it was.
        if let processors = root.mapping?["processors"] { root = processors }
        if let wrapped = root.mapping?["tail_sampling"] { root = wrapped }
        guard let mapping = root.mapping else { throw fail(root, "the file", "expected a mapping with a policies list") }

        var result = PolicyFile()
        result.source = file
        var sawPolicies = false
        var rootWaitNode: Node?
        for (keyNode, value) in mapping {
            let key = keyNode.string ?? ""
            switch key {
            case "decision_wait": result.decisionWait = try duration(value, key, allowZero: true)
            case "root_wait":
                result.rootWait = try duration(value, key, allowZero: true)
                rootWaitNode = value
            case "max_buffer_bytes": result.maxBufferBytes = try bytes(value, key)
            case "num_traces": result.maxTraces = try integer(value, key, in: 1...100_000_000)
            case "max_spans_per_trace": result.maxSpansPerTrace = try integer(value, key, in: 1...10_000_000)
            case "decision_cache":
                guard let cache = value.mapping else { throw fail(value, key, "expected a mapping with sampled_cache_size and non_sampled_cache_size") }
                var total = 0
                for (subKey, size) in cache {
                    let name = subKey.string ?? ""
                    guard name == "sampled_cache_size" || name == "non_sampled_cache_size" else {
                        throw fail(subKey, "decision_cache.\(name)", "unknown setting; expected sampled_cache_size or non_sampled_cache_size")
                    }
                    total += try integer(size, "decision_cache.\(name)", in: 0...50_000_000)
                }
                result.decisionCacheSize = total
            case "expected_new_traces_per_sec", "sample_on_first_match", "decision_wait_after_root_received", "block_on_overflow":
                result.ignored.append("\(place(keyNode)): \(key) has no effect: the buffer is bounded in bytes and sized as it goes")
            case "policies":
                guard let list = value.sequence else { throw fail(value, key, "expected a list of policies") }
                var names: Set<String> = []
                for (index, item) in list.enumerated() {
                    let policy = try policy(item, path: "policies[\(index)]")
                    guard names.insert(policy.name).inserted else {
                        throw fail(item, "policies[\(index)]", "the name \(policy.name.debugDescription) is used twice")
                    }
                    result.policies.append(policy)
                }
                sawPolicies = true
            default:
                throw fail(keyNode, key, "unknown setting; expected decision_wait, root_wait, max_buffer_bytes, num_traces, max_spans_per_trace, decision_cache or policies")
            }
        }
        guard sawPolicies, !result.policies.isEmpty else { throw fail(root, "policies", "the file needs at least one policy") }
        if let rootWaitNode, result.rootWait > result.decisionWait {
            throw fail(rootWaitNode, "root_wait", "must not be longer than decision_wait")
        }
        result.rootWait = min(result.rootWait, result.decisionWait)
        return result
    }

    private static func describe(_ error: YamlError) -> String {
        switch error {
        case let .scanner(context, problem, mark, _), let .parser(context, problem, mark, _):
            return "line \(mark.line), column \(mark.column): \(problem)" + (context.map { " (\($0.text))" } ?? "")
        default:
            return "\(error)"
        }
    }

    // MARK: Policies

    static let types = [
        "always_sample", "probabilistic", "latency", "status_code", "numeric_attribute", "string_attribute",
        "boolean_attribute", "rate_limiting", "span_count", "trace_state", "and", "composite", "drop",
        "edge", "new_edge", "slow_for_edge", "plaintext",
    ]

    mutating func policy(_ node: Node, path: String) throws(PolicyFile.Invalid) -> Policy {
        guard let mapping = node.mapping else { throw fail(node, path, "expected a mapping with name and type") }
        guard let typeNode = mapping["type"] else { throw fail(node, path, "missing type; expected one of \(Self.types.joined(separator: ", "))") }
        guard let type = typeNode.scalar?.string, Self.types.contains(type) else {
            throw fail(typeNode, path + ".type", "unknown policy type \(typeNode.scalar?.string.debugDescription ?? "(not text)"); expected one of \(Self.types.joined(separator: ", "))")
        }
        let name = mapping["name"]?.scalar?.string ?? type
        let here = "\(path) (\(name))"
        for (keyNode, _) in mapping {
            let key = keyNode.string ?? ""
            guard key == "name" || key == "type" || key == type else {
                throw fail(keyNode, here, "unexpected key \(key.debugDescription) in a \(type) policy; its settings go under \(type):")
            }
        }
        let settings = mapping[Node(type)]
        let rule = try self.rule(type: type, settings: settings, at: node, path: here + "." + type)
        let slot = nextSlot
        nextSlot += 1
        return Policy(name: name, rule: rule, slot: slot, origin: place(node))
    }

    mutating func rule(type: String, settings: Node?, at node: Node, path: String) throws(PolicyFile.Invalid) -> Policy.Rule {
        var fields = Fields(parser: self, node: settings ?? node, path: path, mapping: settings?.mapping)
        if let settings, settings.mapping == nil, !(settings.scalar?.string.isEmpty ?? false) {
            throw fail(settings, path, "expected a mapping of settings")
        }
        let rule: Policy.Rule
        switch type {
        case "always_sample":
            rule = .alwaysSample
        case "probabilistic":
            let percentage = try fields.number("sampling_percentage", required: true)!
            guard (0...100).contains(percentage) else { throw fields.error("sampling_percentage", "must be between 0 and 100, got \(format(percentage))") }
            let precision = try fields.integer("sampling_precision", in: 1...14) ?? 4
            if fields.has("hash_salt") {
                _ = try fields.string("hash_salt")
            }
            rule = .probabilistic(Threshold(probability: percentage / 100, precision: precision))
        case "latency":
            let threshold = try fields.integer("threshold_ms", in: 0...Int(Int32.max), required: true)!
            let upper = try fields.integer("upper_threshold_ms", in: 0...Int(Int32.max))
            if let upper, upper <= threshold {
                throw fields.error("upper_threshold_ms", "must be more than threshold_ms (\(threshold)), got \(upper)")
            }
            rule = .latency(threshold: UInt64(threshold) * 1_000_000, upper: upper.map { UInt64($0) * 1_000_000 })
        case "status_code":
            let names = try fields.strings("status_codes", required: true)
            var codes: Set<StatusCode> = []
            for name in names {
                switch name.uppercased() {
                case "OK": codes.insert(.ok)
                case "ERROR": codes.insert(.error)
                case "UNSET": codes.insert(.unset)
                default: throw fields.error("status_codes", "expected OK, ERROR or UNSET, got \(name.debugDescription)")
                }
            }
            guard !codes.isEmpty else { throw fields.error("status_codes", "needs at least one status") }
            rule = .statusCode(codes)
        case "numeric_attribute":
            let key = try fields.string("key", required: true)!
            let min = try fields.integer64("min_value")
            let max = try fields.integer64("max_value")
            guard min != nil || max != nil else { throw fields.error("min_value", "set min_value, max_value or both") }
            if let min, let max, min > max { throw fields.error("max_value", "must not be less than min_value (\(min)), got \(max)") }
            rule = .numericAttribute(key: key, min: min ?? .min, max: max ?? .max, invert: try fields.bool("invert_match") ?? false)
        case "string_attribute":
            let key = try fields.string("key", required: true)!
            let values = try fields.strings("values", required: true)
            guard !values.isEmpty else { throw fields.error("values", "needs at least one value") }
            let regex = try fields.bool("enabled_regex_matching") ?? false
            _ = try fields.integer("cache_max_size", in: 0...Int.max)
            var patterns: [NSRegularExpressionBox] = []
            if regex {
                for value in values {
                    do { patterns.append(try NSRegularExpressionBox(value)) } catch {
                        throw fields.error("values", "\(value.debugDescription) is not a valid regular expression")
                    }
                }
            }
            rule = .stringAttribute(key: key, values: regex ? [] : Set(values), patterns: patterns, invert: try fields.bool("invert_match") ?? false)
        case "boolean_attribute":
            let key = try fields.string("key", required: true)!
            guard let value = try fields.bool("value") else { throw fields.error("value", "missing; expected true or false") }
            rule = .booleanAttribute(key: key, value: value, invert: try fields.bool("invert_match") ?? false)
        case "rate_limiting":
            let rate = try fields.number("spans_per_second", required: true)!
            guard rate > 0 else { throw fields.error("spans_per_second", "must be more than 0, got \(format(rate))") }
            rule = .rateLimiting(spansPerSecond: rate)
        case "span_count":
            let min = try fields.integer("min_spans", in: 0...Int(Int32.max), required: true)!
            let max = try fields.integer("max_spans", in: 0...Int(Int32.max))
            if let max, max < min { throw fields.error("max_spans", "must not be less than min_spans (\(min)), got \(max)") }
            rule = .spanCount(min: min, max: max ?? .max)
        case "trace_state":
            let key = try fields.string("key", required: true)!
            let values = try fields.strings("values", required: true)
            guard !values.isEmpty else { throw fields.error("values", "needs at least one value") }
            rule = .traceState(key: key, values: Set(values))
        case "and":
            rule = .and(try fields.subPolicies("and_sub_policy", parser: &self))
        case "drop":
            rule = .drop(try fields.subPolicies("drop_sub_policy", parser: &self))
        case "composite":
            let total = try fields.number("max_total_spans_per_second", required: true)!
            guard total > 0 else { throw fields.error("max_total_spans_per_second", "must be more than 0, got \(format(total))") }
            let children = try fields.subPolicies("composite_sub_policy", parser: &self)
            var order = try fields.strings("policy_order")
            if order.isEmpty { order = children.map(\.name) }
            var shares: [String: Double] = [:]
            if let allocation = fields.node("rate_allocation") {
                guard let list = allocation.sequence else { throw fields.error("rate_allocation", "expected a list of {policy, percent}") }
                for entry in list {
                    guard let policy = entry.mapping?["policy"]?.string, let percent = entry.mapping?["percent"]?.float,
                          (0...100).contains(percent)
                    else { throw fail(entry, path + ".rate_allocation", "expected {policy: NAME, percent: 0…100}") }
                    guard children.contains(where: { $0.name == policy }) else {
                        throw fail(entry, path + ".rate_allocation", "no sub-policy is named \(policy.debugDescription)")
                    }
                    shares[policy] = percent / 100
                }
            }
            let allocated = shares.values.reduce(0, +)
            guard allocated <= 1.000001 else { throw fields.error("rate_allocation", "the percents add up to more than 100") }
            var ordered: [(policy: Policy, share: Double)] = []
            let unallocated = children.filter { shares[$0.name] == nil }.count
            for name in order {
                guard let child = children.first(where: { $0.name == name }) else {
                    throw fields.error("policy_order", "no sub-policy is named \(name.debugDescription)")
                }
                ordered.append((child, shares[name] ?? (unallocated > 0 ? max(0, 1 - allocated) / Double(unallocated) : 0)))
            }
            guard ordered.count == children.count else {
                throw fields.error("policy_order", "must name every sub-policy once")
            }
            rule = .composite(maxSpansPerSecond: total, ordered)
        case "edge":
            let caller = try fields.string("caller") ?? "*"
            let callee = try fields.string("callee") ?? "*"
            guard caller != "*" || callee != "*" else { throw fields.error("caller", "set caller, callee or both") }
            rule = .edge(caller: caller, callee: callee)
        case "new_edge":
            rule = .newEdge(
                tracesPerEdge: try fields.integer("traces_per_edge", in: 1...1_000_000) ?? 10,
                maxEdges: try fields.integer("max_edges", in: 1...10_000_000) ?? 100_000)
        case "slow_for_edge":
            let quantile = try fields.number("quantile") ?? 0.99
            guard quantile > 0 && quantile < 1 else { throw fields.error("quantile", "must be between 0 and 1 (0.99 for p99), got \(format(quantile))") }
            let scopeText = try fields.string("scope") ?? "root"
            guard let scope = Policy.SlowScope(rawValue: scopeText) else {
                throw fields.error("scope", "expected root (the entry call) or any (every call), got \(scopeText.debugDescription)")
            }
            rule = .slowForEdge(quantile: quantile, scope: scope)
        case "plaintext":
            rule = .plaintext
        default:
            throw fail(node, path, "unknown policy type")
        }
        try fields.finish()
        return rule
    }
}

/// The settings mapping of one policy: typed reads that remember which keys were
/// read, so any left over is reported as unknown.
private struct Fields {
    let parser: Parser
    let node: Node
    let path: String
    let mapping: Node.Mapping?
    var used: Set<String> = []

    init(parser: Parser, node: Node, path: String, mapping: Node.Mapping?) {
        self.parser = parser
        self.node = node
        self.path = path
        self.mapping = mapping
    }

    func has(_ key: String) -> Bool { mapping?[key] != nil }

    mutating func node(_ key: String) -> Node? {
        used.insert(key)
        return mapping?[key]
    }

    func error(_ key: String, _ reason: String) -> PolicyFile.Invalid {
        parser.fail(mapping?[key] ?? node, path + "." + key, reason)
    }

    private mutating func scalar(_ key: String, required: Bool, expected: String) throws(PolicyFile.Invalid) -> String? {
        guard let value = node(key) else {
            if required { throw parser.fail(node, path + "." + key, "missing; expected \(expected)") }
            return nil
        }
        guard let scalar = value.scalar else { throw error(key, "expected \(expected), got a \(value.mapping != nil ? "mapping" : "list")") }
        return scalar.string
    }

    mutating func string(_ key: String, required: Bool = false) throws(PolicyFile.Invalid) -> String? {
        guard let text = try scalar(key, required: required, expected: "text") else { return nil }
        guard !text.isEmpty else { throw error(key, "must not be empty") }
        return text
    }

    mutating func number(_ key: String, required: Bool = false) throws(PolicyFile.Invalid) -> Double? {
        guard let text = try scalar(key, required: required, expected: "a number") else { return nil }
        guard let value = Double(text), value.isFinite else { throw error(key, "expected a number, got \(text.debugDescription)") }
        return value
    }

    mutating func integer(_ key: String, in range: ClosedRange<Int>, required: Bool = false) throws(PolicyFile.Invalid) -> Int? {
        guard let text = try scalar(key, required: required, expected: "a whole number") else { return nil }
        guard let value = Int(text) else { throw error(key, "expected a whole number, got \(text.debugDescription)") }
        guard range.contains(value) else { throw error(key, "must be \(range.lowerBound) to \(range.upperBound), got \(value)") }
        return value
    }

    mutating func integer64(_ key: String) throws(PolicyFile.Invalid) -> Int64? {
        guard let text = try scalar(key, required: false, expected: "a whole number") else { return nil }
        guard let value = Int64(text) else { throw error(key, "expected a whole number, got \(text.debugDescription)") }
        return value
    }

    mutating func bool(_ key: String) throws(PolicyFile.Invalid) -> Bool? {
        guard let text = try scalar(key, required: false, expected: "true or false") else { return nil }
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw error(key, "expected true or false, got \(text.debugDescription)")
        }
    }

    mutating func strings(_ key: String, required: Bool = false) throws(PolicyFile.Invalid) -> [String] {
        guard let value = node(key) else {
            if required { throw parser.fail(node, path + "." + key, "missing; expected a list") }
            return []
        }
        guard let list = value.sequence else { throw error(key, "expected a list, like [a, b]") }
        var result: [String] = []
        for item in list {
            guard let text = item.scalar?.string else { throw parser.fail(item, path + "." + key, "expected text in the list") }
            result.append(text)
        }
        return result
    }

    mutating func subPolicies(_ key: String, parser: inout Parser) throws(PolicyFile.Invalid) -> [Policy] {
        guard let value = node(key) else { throw self.parser.fail(node, path + "." + key, "missing; expected a list of policies") }
        guard let list = value.sequence, !list.isEmpty else { throw error(key, "expected a list of at least one policy") }
        var result: [Policy] = []
        for (index, item) in list.enumerated() {
            let child = try parser.policy(item, path: "\(path).\(key)[\(index)]")
            guard !result.contains(where: { $0.name == child.name }) else {
                throw parser.fail(item, "\(path).\(key)[\(index)]", "the name \(child.name.debugDescription) is used twice")
            }
            result.append(child)
        }
        return result
    }

    /// Throws for any key of the mapping that no read asked for.
    func finish() throws(PolicyFile.Invalid) {
        guard let mapping else { return }
        for (keyNode, _) in mapping {
            let key = keyNode.string ?? ""
            guard used.contains(key) else {
                let known = used.sorted().joined(separator: ", ")
                throw parser.fail(keyNode, path + "." + key, "unknown setting" + (known.isEmpty ? "; this policy takes none" : "; expected \(known)"))
            }
        }
    }
}

extension Parser {
    func duration(_ node: Node, _ key: String, allowZero: Bool) throws(PolicyFile.Invalid) -> Duration {
        guard let text = node.scalar?.string, let nanoseconds = text == "0" ? 0 : DurationText.nanoseconds(text),
              allowZero || nanoseconds > 0
        else { throw fail(node, key, "expected a duration like 10s or 500ms, got \(node.scalar?.string.debugDescription ?? "a collection")") }
        guard nanoseconds <= 3_600_000_000_000 else { throw fail(node, key, "must be at most 1h, got \(text)") }
        return .nanoseconds(Int64(nanoseconds))
    }

    func integer(_ node: Node, _ key: String, in range: ClosedRange<Int>) throws(PolicyFile.Invalid) -> Int {
        guard let text = node.scalar?.string, let value = Int(text) else {
            throw fail(node, key, "expected a whole number, got \(node.scalar?.string.debugDescription ?? "a collection")")
        }
        guard range.contains(value) else { throw fail(node, key, "must be \(range.lowerBound) to \(range.upperBound), got \(value)") }
        return value
    }

    /// A byte size: a whole number, or one with KiB, MiB or GiB (also KB, MB, GB as powers of 1000).
    func bytes(_ node: Node, _ key: String) throws(PolicyFile.Invalid) -> Int {
        let text = node.scalar?.string.trimmingCharacters(in: .whitespaces) ?? ""
        let units: [(String, Int)] = [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("KB", 1_000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("B", 1)]
        var number = Substring(text)
        var unit = 1
        for (suffix, size) in units where text.hasSuffix(suffix) {
            number = text.dropLast(suffix.count)
            unit = size
            break
        }
        guard let value = Int(number.trimmingCharacters(in: .whitespaces)), value > 0 else {
            throw fail(node, key, "expected a size like 256MiB or 1GiB, got \(text.debugDescription)")
        }
        let (total, overflow) = value.multipliedReportingOverflow(by: unit)
        guard !overflow, total >= 1 << 20 else { throw fail(node, key, "must be at least 1MiB, got \(text)") }
        return total
    }
}
