import MeshCore

/// OpenTelemetry's consistent probability sampling at the head of a trace: the
/// decision compares the trace's randomness (its id's 56 low bits, or an upstream
/// `rv`) with the threshold of the configured probability, so every proxy of the
/// mesh keeps or drops the same traces. A context from upstream is followed.
public struct HeadSampler: Sendable {
    public let threshold: Threshold

    public init(probability: Double) {
        threshold = Threshold(probability: probability)
    }

    /// Whether this hop's span is exported, and the `tracestate` it carries on (and is stored with).
    public func decide(traceID: TraceID, parent: TraceContext?) -> (sampled: Bool, traceState: String) {
        if let parent {
            // The caller decided: a kept trace stays kept with the threshold it was kept with.
            return (parent.sampled, parent.traceState)
        }
        let sampled = threshold.keeps(traceID.randomness)
        guard sampled, threshold > .always else { return (sampled, "") }
        return (true, OTelTraceState(threshold: threshold).applied(to: ""))
    }
}
