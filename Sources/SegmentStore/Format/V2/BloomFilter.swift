import MeshCore

/// A bloom filter over the trace ids of a segment, kept in its footer, so a trace
/// lookup skips segments that cannot hold the trace. Trace ids are random, so
/// their own bits serve as the two base hashes (Kirsch–Mitzenmacher double hashing).
public struct TraceBloomFilter: Sendable, Equatable {
    /// About 0.07% false positives at 16 bits per trace with 7 probes: a lookup
    /// tests every segment's filter, so over 100 segments about one lookup in 14
    /// reads a block in vain (at 10 bits, 1%, it would be one block per lookup).
    static let bitsPerTrace = 16
    static let probes: UInt64 = 7

    private(set) var words: [UInt64]

    init(words: [UInt64]) {
        self.words = words
    }

    init(traceIDs: some Collection<TraceID>) {
        let bits = max(64, traceIDs.count * Self.bitsPerTrace)
        words = [UInt64](repeating: 0, count: (bits + 63) / 64)
        for traceID in traceIDs { insert(traceID) }
    }

    private var bitCount: UInt64 { UInt64(words.count * 64) }

    private mutating func insert(_ traceID: TraceID) {
        for probe in 0..<Self.probes {
            let bit = (traceID.low &+ probe &* (traceID.high | 1)) % bitCount
            words[Int(bit / 64)] |= 1 << (bit % 64)
        }
    }

    /// False when the segment certainly does not hold `traceID`.
    public func mightContain(_ traceID: TraceID) -> Bool {
        for probe in 0..<Self.probes {
            let bit = (traceID.low &+ probe &* (traceID.high | 1)) % bitCount
            if words[Int(bit / 64)] & (1 << (bit % 64)) == 0 { return false }
        }
        return true
    }
}
