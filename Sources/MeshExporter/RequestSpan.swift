import MeshCore

/// One request as a proxy saw it: the span `MeshExporter.record` takes.
///
/// Its fields are the attributes a mesh proxy sets on every span (Envoy's, named
/// as OpenTelemetry's semantic conventions name them); they are exported as OTLP
/// span attributes under those names. Strings are copied into the exporter's
/// buffer when the span is recorded: the caller keeps ownership and nothing is
/// allocated.
public struct RequestSpan: Sendable {
    public var traceID: TraceID
    public var spanID: SpanID
    /// `.zero` for a span that starts a trace.
    public var parentSpanID: SpanID
    /// `GET /api/orders/{id}`, say: method and route template, not the raw path.
    public var name: String
    public var kind: SpanKind
    /// Nanoseconds since the Unix epoch.
    public var startTime: UInt64
    public var endTime: UInt64
    /// `http.response.status_code`; 0 when there was no response.
    public var httpStatus: UInt16
    /// Status ERROR: a 5xx, a reset, a timeout.
    public var failed: Bool
    /// `http.request.method`.
    public var method: String
    /// `url.path`.
    public var path: String
    /// `peer.service`: the callee of a CLIENT span (empty for SERVER spans).
    public var peerService: String
    /// `upstream_cluster`, as Envoy names it (`outbound|8080||payments.shop.svc.cluster.local`).
    public var upstreamCluster: String
    /// `peer.address`: the other side's address and port.
    public var peerAddress: String
    /// `response_flags`, Envoy's (`-` when none).
    public var responseFlags: String
    /// `guid:x-request-id`.
    public var requestID: String
    /// `user_agent.original`.
    public var userAgent: String
    /// `http.request.body.size` and `http.response.body.size`.
    public var requestBytes: UInt64
    public var responseBytes: UInt64
    /// `connection_security_policy`: `mutual_tls` when true, `none` when false, absent when nil.
    public var mutualTLS: Bool?
    /// The W3C `tracestate` to store with the span (the head sampler adds its `ot=th:`).
    public var traceState: String
    /// Labels (`MeshExporter.label(_:)`) for the strings a proxy repeats: a labelled
    /// field is exported from the label, and recording copies two bytes instead of its
    /// string.
    public var labels = SpanLabels()

    public init(
        traceID: TraceID, spanID: SpanID, parentSpanID: SpanID = .zero, name: String, kind: SpanKind,
        startTime: UInt64, endTime: UInt64, httpStatus: UInt16 = 0, failed: Bool = false,
        method: String = "", path: String = "", peerService: String = "", upstreamCluster: String = "",
        peerAddress: String = "", responseFlags: String = "", requestID: String = "", userAgent: String = "",
        requestBytes: UInt64 = 0, responseBytes: UInt64 = 0, mutualTLS: Bool? = nil, traceState: String = ""
    ) {
        self.traceID = traceID
        self.spanID = spanID
        self.parentSpanID = parentSpanID
        self.name = name
        self.kind = kind
        self.startTime = startTime
        self.endTime = endTime
        self.httpStatus = httpStatus
        self.failed = failed
        self.method = method
        self.path = path
        self.peerService = peerService
        self.upstreamCluster = upstreamCluster
        self.peerAddress = peerAddress
        self.responseFlags = responseFlags
        self.requestID = requestID
        self.userAgent = userAgent
        self.requestBytes = requestBytes
        self.responseBytes = responseBytes
        self.mutualTLS = mutualTLS
        self.traceState = traceState
    }
}
