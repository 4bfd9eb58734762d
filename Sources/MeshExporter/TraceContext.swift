import MeshCore

/// The trace context a request carries between services: W3C Trace Context
/// (`traceparent`, `tracestate`) or Zipkin's B3, single or multi-header.
public struct TraceContext: Sendable, Equatable {
    public var traceID: TraceID
    /// The caller's span: the parent of the span this hop records.
    public var spanID: SpanID
    /// W3C `trace-flags`; bit 0 is *sampled*.
    public var flags: UInt8
    /// The W3C `tracestate` list, as received (empty when none).
    public var traceState: String

    public init(traceID: TraceID, spanID: SpanID, flags: UInt8 = 1, traceState: String = "") {
        self.traceID = traceID
        self.spanID = spanID
        self.flags = flags
        self.traceState = traceState
    }

    /// Whether the caller recorded its span (the W3C sampled flag, B3's `1` or `d`).
    public var sampled: Bool {
        get { flags & 1 != 0 }
        set { flags = newValue ? flags | 1 : flags & ~1 }
    }

    // MARK: W3C Trace Context

    /// Parses a `traceparent` header (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`),
    /// with its `tracestate`. Version `ff`, all-zero ids, upper-case hex and wrong
    /// lengths are refused (nil), as the W3C recommendation asks; a later version is
    /// read by its first four fields.
    public init?(traceparent: some StringProtocol, tracestate: (some StringProtocol)? = String?.none) {
        let bytes = Array(traceparent.utf8)
        guard bytes.count >= 55, bytes[2] == UInt8(ascii: "-"), bytes[35] == UInt8(ascii: "-"), bytes[52] == UInt8(ascii: "-"),
              let version = Self.lowerHex(bytes[0..<2]), version != 0xFF,
              version != 0 || bytes.count == 55, bytes.count == 55 || bytes[55] == UInt8(ascii: "-"),
              let high = Self.lowerHex(bytes[3..<19]), let low = Self.lowerHex(bytes[19..<35]),
              let span = Self.lowerHex(bytes[36..<52]), let flags = Self.lowerHex(bytes[53..<55]),
              high | low != 0, span != 0
        else { return nil }
        self.init(traceID: TraceID(high: high, low: low), spanID: SpanID(span), flags: UInt8(flags),
                  traceState: tracestate.map { String($0) } ?? "")
    }

    /// The `traceparent` header naming `spanID` as the parent of the next hop.
    public var traceparent: String {
        "00-" + traceID.hex + "-" + spanID.hex + "-" + (flags < 0x10 ? "0" : "") + String(flags, radix: 16)
    }

    /// The headers that carry this context to the next hop in W3C form.
    public var w3cHeaders: [(name: String, value: String)] {
        var headers = [("traceparent", traceparent)]
        if !traceState.isEmpty { headers.append(("tracestate", traceState)) }
        return headers
    }

    // MARK: B3

    /// Parses B3 from its headers: the single `b3` header, else `X-B3-TraceId`,
    /// `X-B3-SpanId`, `X-B3-Sampled` and `X-B3-Flags`. A 64-bit trace id is
    /// zero-extended. `header` looks a header up by lower-case name.
    public init?(b3 header: (String) -> String?) {
        if let single = header("b3") {
            let parts = single.split(separator: "-", omittingEmptySubsequences: false)
            guard parts.count >= 2, let traceID = TraceID(hex: parts[0]), let span = SpanID(hex: parts[1]),
                  traceID != .zero, span != .zero
            else { return nil }
            var sampled = true
            if parts.count >= 3 {
                switch parts[2] {
                case "1", "d": sampled = true
                case "0": sampled = false
                default: return nil
                }
            }
            self.init(traceID: traceID, spanID: span, flags: sampled ? 1 : 0)
            return
        }
        guard let trace = header("x-b3-traceid"), let span = header("x-b3-spanid"),
              let traceID = TraceID(hex: trace), let spanID = SpanID(hex: span), traceID != .zero, spanID != .zero
        else { return nil }
        let sampled = header("x-b3-flags") == "1" || header("x-b3-sampled").map { $0 == "1" || $0 == "true" } ?? true
        self.init(traceID: traceID, spanID: spanID, flags: sampled ? 1 : 0)
    }

    /// The single `b3` header naming `spanID` as the parent of the next hop.
    public var b3: String { traceID.hex + "-" + spanID.hex + "-" + (sampled ? "1" : "0") }

    private static func lowerHex(_ digits: ArraySlice<UInt8>) -> UInt64? {
        var value: UInt64 = 0
        for digit in digits {
            switch digit {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = value << 4 | UInt64(digit - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = value << 4 | UInt64(digit - UInt8(ascii: "a") + 10)
            default: return nil
            }
        }
        return value
    }
}
