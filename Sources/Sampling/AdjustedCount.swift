import MeshCore

/// How many spans one stored span stands for, from the threshold its `tracestate`
/// records: 1 / the probability it was kept with. A span without a threshold counts once.
public enum AdjustedCount {
    /// The adjusted count of a stored span, given its extras (the protobuf `Span`
    /// fields outside the columns, where `trace_state` lives). The sampler leaves
    /// spans it kept with probability 1 without a threshold: they count once.
    public static func of(extras: ArraySlice<UInt8>) -> Double {
        guard let traceState = TraceStateField.read(extras), traceState.contains("ot="),
              let threshold = OTelTraceState(traceState: traceState).threshold, threshold < .never
        else { return 1 }
        return threshold.adjustedCount
    }
}
