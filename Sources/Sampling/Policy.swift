import Foundation
import MeshCore

/// One sampling policy of a policy file, with the name it was given.
///
/// A policy looks at a whole trace and says with which probability it keeps it, as
/// a consistent-sampling `Threshold`: `.always` (a predicate that matched),
/// `.never` (one that did not), or something between (`probabilistic`,
/// `rate_limiting`). A trace is kept when its randomness reaches the lowest
/// threshold any policy gives it — so every kept trace knows the probability it was
/// kept with, and counts rebuilt from stored traces stay unbiased.
public final class Policy: Sendable {
    public let name: String
    public let rule: Rule
    /// Index of this policy's mutable state (rate windows, seen edges) in a sampler.
    let slot: Int
    /// Where the policy was written, `file:line:column`.
    public let origin: String

    init(name: String, rule: Rule, slot: Int, origin: String) {
        self.name = name
        self.rule = rule
        self.slot = slot
        self.origin = origin
    }

    /// What a policy checks.
    public enum Rule: Sendable {
        case alwaysSample
        case probabilistic(Threshold)
        /// The trace lasts at least `threshold` (from its first span's start to its last
        /// span's end), and less than `upper` when set. Nanoseconds.
        case latency(threshold: UInt64, upper: UInt64?)
        case statusCode(Set<StatusCode>)
        /// A span or resource attribute of integer value (or decimal text) in `min…max`.
        case numericAttribute(key: String, min: Int64, max: Int64, invert: Bool)
        /// A span or resource attribute of string value among `values` or matching one of `patterns`.
        case stringAttribute(key: String, values: Set<String>, patterns: [NSRegularExpressionBox], invert: Bool)
        case booleanAttribute(key: String, value: Bool, invert: Bool)
        /// Keeps about `spansPerSecond` spans a second, by a threshold that adapts each second.
        case rateLimiting(spansPerSecond: Double)
        /// The trace has `min…max` spans.
        case spanCount(min: Int, max: Int)
        /// A span's `tracestate` has the member `key` with one of `values`.
        case traceState(key: String, values: Set<String>)
        /// Every sub-policy keeps the trace (the least probable one decides).
        case and([Policy])
        /// Sub-policies, each held to its share of `maxSpansPerSecond`.
        case composite(maxSpansPerSecond: Double, [(policy: Policy, share: Double)])
        /// Every sub-policy matches: the trace is dropped, whatever other policies say.
        case drop([Policy])
        /// A call from `caller` to `callee` (either may be `*`) is in the trace.
        case edge(caller: String, callee: String)
        /// The trace crosses an edge that has been in fewer than `tracesPerEdge` traces so far.
        case newEdge(tracesPerEdge: Int, maxEdges: Int)
        /// A call in the trace (the entry call only, for `.root`) took longer than its
        /// edge's live `quantile`, from the golden signals.
        case slowForEdge(quantile: Double, scope: SlowScope)
        /// A span of the trace went over a connection without TLS.
        case plaintext
    }

    public enum SlowScope: String, Sendable {
        /// The call the request entered the mesh by: the trace's root span.
        case root
        /// Any call in the trace.
        case any
    }

    /// The policy and every policy below it.
    var all: [Policy] {
        switch rule {
        case .and(let children), .drop(let children): return [self] + children.flatMap(\.all)
        case .composite(_, let children): return [self] + children.flatMap(\.policy.all)
        default: return [self]
        }
    }

    /// Whether the decision depends on anything but the trace id (and so must wait
    /// for the trace's spans).
    var readsContent: Bool {
        switch rule {
        case .alwaysSample, .probabilistic: return false
        case .and(let children): return children.contains(where: \.readsContent)
        default: return true
        }
    }

    /// The policy's type as the file names it.
    public var typeName: String {
        switch rule {
        case .alwaysSample: return "always_sample"
        case .probabilistic: return "probabilistic"
        case .latency: return "latency"
        case .statusCode: return "status_code"
        case .numericAttribute: return "numeric_attribute"
        case .stringAttribute: return "string_attribute"
        case .booleanAttribute: return "boolean_attribute"
        case .rateLimiting: return "rate_limiting"
        case .spanCount: return "span_count"
        case .traceState: return "trace_state"
        case .and: return "and"
        case .composite: return "composite"
        case .drop: return "drop"
        case .edge: return "edge"
        case .newEdge: return "new_edge"
        case .slowForEdge: return "slow_for_edge"
        case .plaintext: return "plaintext"
        }
    }

    /// One line saying what the policy keeps, for `meshtrace policy check`.
    public var explanation: String {
        func ms(_ nanoseconds: UInt64) -> String { DurationText.format(nanoseconds: nanoseconds) }
        switch rule {
        case .alwaysSample:
            return "keeps every trace"
        case .probabilistic(let threshold):
            return "keeps \(percent(threshold.probability)) of traces by trace-id randomness (\(threshold), adjusted count \(format(threshold.adjustedCount)))"
        case .latency(let threshold, let upper):
            return "keeps traces lasting at least \(ms(threshold))" + (upper.map { " and less than \(ms($0))" } ?? "")
        case .statusCode(let codes):
            return "keeps traces with a span of status \(codes.map(\.name).sorted().joined(separator: " or "))"
        case .numericAttribute(let key, let min, let max, let invert):
            return "keeps traces \(invert ? "without" : "with") a span whose \(key) is \(min)…\(max)"
        case .stringAttribute(let key, let values, let patterns, let invert):
            let choices = values.sorted().map(\.debugDescription) + patterns.map { "/\($0.pattern)/" }
            return "keeps traces \(invert ? "without" : "with") a span whose \(key) is \(choices.joined(separator: " or "))"
        case .booleanAttribute(let key, let value, let invert):
            return "keeps traces \(invert ? "without" : "with") a span whose \(key) is \(value)"
        case .rateLimiting(let rate):
            return "keeps about \(format(rate)) spans/s, lowering the probability (and raising the adjusted count) as traffic grows"
        case .spanCount(let min, let max):
            return "keeps traces of \(min)\(max == .max ? " or more" : "…\(max)") spans"
        case .traceState(let key, let values):
            return "keeps traces whose tracestate has \(values.sorted().map { "\(key)=\($0)" }.joined(separator: " or "))"
        case .and(let children):
            return "keeps a trace only when all of: " + children.map { "\($0.name) (\($0.typeName))" }.joined(separator: ", ")
        case .composite(let rate, let children):
            return "keeps what its sub-policies keep, within \(format(rate)) spans/s: "
                + children.map { "\($0.policy.name) \(percent($0.share))" }.joined(separator: ", ")
        case .drop(let children):
            return "drops a trace, whatever other policies say, when all of: " + children.map { "\($0.name) (\($0.typeName))" }.joined(separator: ", ")
        case .edge(let caller, let callee):
            return "keeps traces with a call \(caller) → \(callee)"
        case .newEdge(let count, _):
            return "keeps the first \(count) traces over each edge not seen before"
        case .slowForEdge(let quantile, let scope):
            return "keeps traces \(scope == .root ? "whose entry call is" : "with a call") slower than its edge's live p\(format(quantile * 100)) (from the golden signals)"
        case .plaintext:
            return "keeps traces with a span sent without TLS"
        }
    }
}

/// A compiled regular expression that can cross threads (it is never mutated).
public struct NSRegularExpressionBox: @unchecked Sendable {
    public let pattern: String
    let expression: NSRegularExpression

    init(_ pattern: String) throws {
        self.pattern = pattern
        expression = try NSRegularExpression(pattern: pattern)
    }

    func matches(_ text: String) -> Bool {
        expression.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)) != nil
    }
}

func percent(_ probability: Double) -> String { format(probability * 100) + "%" }

func format(_ value: Double) -> String {
    if value == value.rounded() && abs(value) < 1e15 { return String(Int64(value)) }
    return String(format: "%.4g", value)
}
