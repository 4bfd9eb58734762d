import MeshCore

/// Writes an OTLP `ExportTraceServiceRequest` straight from drained slots: one
/// `ResourceSpans` (the proxy's resource), one `ScopeSpans`, a `Span` per slot.
/// Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto`.
struct OTLPSpanEncoder {
    /// The resource's encoded `KeyValue` attributes (field 1 of `Resource`, each tagged).
    private let resource: [UInt8]
    /// The encoded `InstrumentationScope`.
    private let scope: [UInt8]
    private var span: [UInt8] = []
    private var scopeSpans: [UInt8] = []

    init(resourceAttributes: [(String, String)], scopeName: String, scopeVersion: String) {
        var resource = ProtoWriter()
        for (key, value) in resourceAttributes { resource.stringAttribute(field: 1, key: Array(key.utf8)[...], value: Array(value.utf8)[...]) }
        self.resource = resource.bytes
        var scope = ProtoWriter()
        scope.bytes(field: 1, Array(scopeName.utf8)[...])
        scope.bytes(field: 2, Array(scopeVersion.utf8)[...])
        self.scope = scope.bytes
    }

    private static let keys: [SlotString: [UInt8]] = [
        .method: Array("http.request.method".utf8), .path: Array("url.path".utf8),
        .peerService: Array("peer.service".utf8), .upstreamCluster: Array("upstream_cluster".utf8),
        .peerAddress: Array("peer.address".utf8), .responseFlags: Array("response_flags".utf8),
        .requestID: Array("guid:x-request-id".utf8), .userAgent: Array("user_agent.original".utf8),
    ]
    private static let attributeOrder: [SlotString] = [.method, .path, .upstreamCluster, .peerAddress, .peerService, .userAgent, .responseFlags, .requestID]
    private static let statusKey = Array("http.response.status_code".utf8)
    private static let requestSizeKey = Array("http.request.body.size".utf8)
    private static let responseSizeKey = Array("http.response.body.size".utf8)
    private static let securityKey = Array("connection_security_policy".utf8)
    private static let componentKey = Array("component".utf8)
    private static let proxy = Array("proxy".utf8)
    private static let mutualTLS = Array("mutual_tls".utf8)
    private static let none = Array("none".utf8)

    /// The request holding the spans of `drained` whose export bit is set.
    mutating func encode(_ drained: DrainedSpans) -> [UInt8] {
        scopeSpans.removeAll(keepingCapacity: true)
        var scopeWriter = ProtoWriter(reusing: scopeSpans)
        scopeWriter.bytes(field: 1, scope[...])
        for index in 0..<drained.count where drained.headers[index].bits & SlotHeader.exportBit != 0 {
            encodeSpan(drained, index)
            scopeWriter.bytes(field: 2, span[...])
        }
        scopeSpans = scopeWriter.bytes
        var resourceSpans = ProtoWriter()
        resourceSpans.bytes(field: 1, resource[...])
        resourceSpans.bytes(field: 2, scopeSpans[...])
        var request = ProtoWriter()
        request.bytes(field: 1, resourceSpans.bytes[...])
        return request.bytes
    }

    private mutating func encodeSpan(_ drained: DrainedSpans, _ index: Int) {
        let header = drained.headers[index]
        let strings = drained.strings(index)
        span.removeAll(keepingCapacity: true)
        var writer = ProtoWriter(reusing: span)
        var id = ProtoWriter()
        id.bigEndian(header.traceHigh)
        id.bigEndian(header.traceLow)
        writer.bytes(field: 1, id.bytes[...])
        writer.fixedBytes(field: 2, header.spanID)
        if !strings[SlotString.traceState.rawValue].isEmpty { writer.bytes(field: 3, strings[SlotString.traceState.rawValue]) }
        if header.parentSpanID != 0 { writer.fixedBytes(field: 4, header.parentSpanID) }
        writer.bytes(field: 5, strings[SlotString.name.rawValue])
        if header.kind != 0 { writer.varint(field: 6, UInt64(header.kind)) }
        writer.fixed64(field: 7, header.startTime)
        writer.fixed64(field: 8, header.endTime)
        for field in Self.attributeOrder where !strings[field.rawValue].isEmpty {
            writer.stringAttribute(field: 9, key: Self.keys[field]![...], value: strings[field.rawValue])
        }
        if header.httpStatus != 0 { writer.intAttribute(field: 9, key: Self.statusKey[...], value: Int64(header.httpStatus)) }
        writer.intAttribute(field: 9, key: Self.requestSizeKey[...], value: Int64(clamping: header.requestBytes))
        writer.intAttribute(field: 9, key: Self.responseSizeKey[...], value: Int64(clamping: header.responseBytes))
        if header.bits & SlotHeader.securityKnownBit != 0 {
            let value = header.bits & SlotHeader.mutualTLSBit != 0 ? Self.mutualTLS : Self.none
            writer.stringAttribute(field: 9, key: Self.securityKey[...], value: value[...])
        }
        writer.stringAttribute(field: 9, key: Self.componentKey[...], value: Self.proxy[...])
        if header.bits & SlotHeader.failedBit != 0 {
            // Status { code = STATUS_CODE_ERROR (2) }: field 3 of Status.
            writer.bytes(field: 15, [0x18, 0x02][...])
        }
        span = writer.bytes
    }
}

/// Protobuf wire-format writing, just what the exporter's messages need.
struct ProtoWriter {
    private(set) var bytes: [UInt8]

    init() { bytes = [] }

    init(reusing buffer: [UInt8]) {
        bytes = buffer
        bytes.removeAll(keepingCapacity: true)
    }

    mutating func rawVarint(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }

    mutating func tag(_ field: Int, _ wireType: UInt8) { rawVarint(UInt64(field) << 3 | UInt64(wireType)) }

    mutating func varint(field: Int, _ value: UInt64) {
        tag(field, 0)
        rawVarint(value)
    }

    mutating func fixed64(field: Int, _ value: UInt64) {
        tag(field, 1)
        for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    mutating func bigEndian(_ value: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    /// An 8-byte id as a length-delimited field, big-endian.
    mutating func fixedBytes(field: Int, _ value: UInt64) {
        tag(field, 2)
        bytes.append(8)
        bigEndian(value)
    }

    mutating func bytes(field: Int, _ value: ArraySlice<UInt8>) {
        tag(field, 2)
        rawVarint(UInt64(value.count))
        bytes.append(contentsOf: value)
    }

    private static func varintSize(_ value: UInt64) -> Int {
        var size = 1
        var value = value
        while value >= 0x80 { value >>= 7; size += 1 }
        return size
    }

    /// A `KeyValue` with a string `AnyValue` (field 1), as field `field`.
    mutating func stringAttribute(field: Int, key: ArraySlice<UInt8>, value: ArraySlice<UInt8>) {
        keyValue(field: field, key: key, anyValue: 1 + Self.varintSize(UInt64(value.count)) + value.count)
        bytes(field: 1, value)
    }

    /// A `KeyValue` with an int `AnyValue` (field 3), as field `field`.
    mutating func intAttribute(field: Int, key: ArraySlice<UInt8>, value: Int64) {
        let encoded = UInt64(bitPattern: value)
        keyValue(field: field, key: key, anyValue: 1 + Self.varintSize(encoded))
        varint(field: 3, encoded)
    }

    /// Opens a `KeyValue` whose `AnyValue` (field 2) takes `anyValue` bytes, which follow.
    private mutating func keyValue(field: Int, key: ArraySlice<UInt8>, anyValue: Int) {
        let length = 1 + Self.varintSize(UInt64(key.count)) + key.count + 1 + Self.varintSize(UInt64(anyValue)) + anyValue
        tag(field, 2)
        rawVarint(UInt64(length))
        bytes(field: 1, key)
        tag(2, 2)
        rawVarint(UInt64(anyValue))
    }
}
