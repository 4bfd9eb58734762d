import MeshCore

/// An OTLP trace export request decoded into columns, with the protobuf bytes the
/// WAL logs.
public struct DecodedTraceExport: Sendable {
    /// The request's valid spans.
    public var spans: SpanBatch
    /// How many spans were accepted and refused, and why.
    public var outcome: IngestOutcome
    /// The request as protobuf `ExportTraceServiceRequest` bytes.
    public var encoded: [UInt8]
    /// What each span's attributes say about its request, row for row with `spans`.
    public var facts: [RequestFacts]

    /// Decodes protobuf `ExportTraceServiceRequest` bytes straight into columns,
    /// without building message objects.
    ///
    /// It accepts and refuses exactly the inputs swift-protobuf's generated message
    /// does, and yields the same spans as `SpanBatch.append(_:)` on that message
    /// (attributes, resources, scopes and extras may be encoded differently, but they
    /// decode to equal messages).
    public init(protobuf bytes: [UInt8]) throws(OTLPDecodingError) {
        encoded = bytes
        let result = bytes.withUnsafeBufferPointer { buffer -> Result<(SpanBatch, [RequestFacts], IngestOutcome), OTLPDecodingError> in
            guard let base = buffer.baseAddress, !buffer.isEmpty else { return .success((SpanBatch(), [], IngestOutcome())) }
            var decoder = OTLPTraceDecoder(input: OTLPInput(base: base))
            return Result { () throws(OTLPDecodingError) in
                try decoder.decodeRequest(0..<buffer.count)
                return (decoder.batch, decoder.facts, decoder.outcome)
            }
        }
        (spans, facts, outcome) = try result.get()
    }

    /// A request built in memory (from JSON or Zipkin, say), converted through its message.
    public init(_ request: ExportTraceServiceRequest) {
        var spans = SpanBatch()
        outcome = spans.append(request)
        self.spans = spans
        facts = spans.requestFacts()
        encoded = SpanBatch.encode(request)
    }
}

/// Walks an `ExportTraceServiceRequest` once per nesting level: a message's
/// resource or scope is read (and interned) before its children, wherever it lies in
/// the bytes, and each span is read once, its attributes and other fields copied
/// into their stored form as they are validated.
struct OTLPTraceDecoder {
    var batch = SpanBatch()
    var facts: [RequestFacts] = []
    var outcome = IngestOutcome()
    let input: OTLPInput
    /// A span's attributes, extras and status fields on their way into the batch.
    private var attributeBuffer: [UInt8] = []
    private var extraBuffer: [UInt8] = []
    private var statusBuffer: [UInt8] = []

    init(input: OTLPInput) {
        self.input = input
    }

    /// `ExportTraceServiceRequest` (the same bytes as `TracesData`).
    mutating func decodeRequest(_ range: Range<Int>) throws(OTLPDecodingError) {
        let depth = 1
        var cursor = try input.cursor(range, depth: depth)
        while !cursor.isAtEnd {
            let (field, wireType) = try cursor.tag()
            if field == 1 && wireType == 2 {
                try decodeResourceSpans(try cursor.lengthDelimited(), depth: depth + 1)
            } else {
                try cursor.skip(field: field, wireType: wireType, depth: depth)
            }
        }
    }

    private mutating func decodeResourceSpans(_ range: Range<Int>, depth: Int) throws(OTLPDecodingError) {
        var serviceName = FirstAttribute<Range<Int>>()
        let encoded = try input.header(of: range, depth: depth) { cursor, resource throws(OTLPDecodingError) in
            try cursor.resource(resource, depth: depth + 1, serviceName: &serviceName)
        }
        let resourceIndex = batch.intern(resource: ResourceEntry(
            serviceName: serviceName.value.map(input.string) ?? "unknown_service", encoded: encoded))

        var cursor = try input.cursor(range, depth: depth)
        while !cursor.isAtEnd {
            let (field, wireType) = try cursor.tag()
            if field == 2 && wireType == 2 {
                try decodeScopeSpans(try cursor.lengthDelimited(), resourceIndex: resourceIndex, depth: depth + 1)
            } else {
                try cursor.skip(field: field, wireType: wireType, depth: depth)
            }
        }
    }

    private mutating func decodeScopeSpans(_ range: Range<Int>, resourceIndex: UInt32, depth: Int) throws(OTLPDecodingError) {
        let scopeIndex = batch.intern(scope: try input.header(of: range, depth: depth) { cursor, scope throws(OTLPDecodingError) in
            try cursor.instrumentationScope(scope, depth: depth + 1)
        })

        var cursor = try input.cursor(range, depth: depth)
        while !cursor.isAtEnd {
            let (field, wireType) = try cursor.tag()
            if field == 2 && wireType == 2 {
                try decodeSpan(try cursor.lengthDelimited(), resourceIndex: resourceIndex, scopeIndex: scopeIndex, depth: depth + 1)
            } else {
                try cursor.skip(field: field, wireType: wireType, depth: depth)
            }
        }
    }

    /// One `Span`. Fields the columns hold are read; attributes are copied into a
    /// `KeyValueList`; everything else (trace state, flags, events, links, dropped
    /// counts, unknown fields, and a status the columns cannot say) is copied as the
    /// fields of an extras `Span`. Repeated singular fields keep their last value, as
    /// protobuf decoding does.
    private mutating func decodeSpan(
        _ range: Range<Int>, resourceIndex: UInt32, scopeIndex: UInt32, depth: Int
    ) throws(OTLPDecodingError) {
        var cursor = try input.cursor(range, depth: depth)
        let empty = range.lowerBound..<range.lowerBound
        var traceID = empty, spanID = empty, parentSpanID = empty, name = empty
        var kind: UInt64 = 0, startTime: UInt64 = 0, endTime: UInt64 = 0
        // Attributes, extras and status occurrences are copied as they are read; a
        // refused span simply leaves them behind.
        attributeBuffer.removeAll(keepingCapacity: true)
        extraBuffer.removeAll(keepingCapacity: true)
        statusBuffer.removeAll(keepingCapacity: true)
        var status = StatusFields(message: empty)
        var responseStatus = FirstAttribute<Int64>(), legacyStatus = FirstAttribute<Int64>()
        var requestFacts = RequestFacts()
        while !cursor.isAtEnd {
            let fieldStart = cursor.position
            let (field, wireType) = try cursor.tag()
            switch (field, wireType) {
            case (1, 2): traceID = try cursor.lengthDelimited()
            case (2, 2): spanID = try cursor.lengthDelimited()
            case (4, 2): parentSpanID = try cursor.lengthDelimited()
            case (5, 2):
                name = try cursor.lengthDelimited()
                try cursor.validateUTF8(name)
            case (6, 0): kind = try cursor.varint()
            case (7, 1): startTime = try cursor.fixed64()
            case (8, 1): endTime = try cursor.fixed64()
            case (9, 2):
                let payload = try cursor.lengthDelimited()
                let attribute = try cursor.keyValue(payload, depth: depth + 1)
                appendListEntry(payload)
                // The payload now ends the span's stored list: `shift` maps its offsets there.
                requestFacts.observe(input.buffer(0..<payload.upperBound), key: attribute.key, value: attribute.lastValue,
                                     storedAt: attributeBuffer.count - payload.upperBound)
                if !responseStatus.isDecided, cursor.equals(attribute.key, "http.response.status_code") {
                    responseStatus.decide(attribute.value.intValue)
                } else if !legacyStatus.isDecided, cursor.equals(attribute.key, "http.status_code") {
                    legacyStatus.decide(attribute.value.intValue)
                }
            case (15, 2):
                try status.merge(try cursor.lengthDelimited(), cursor: cursor, depth: depth + 1)
                statusBuffer.append(contentsOf: input.buffer(fieldStart..<cursor.position))
            case (3, 2):
                try cursor.validateUTF8(try cursor.lengthDelimited())
                extraBuffer.append(contentsOf: input.buffer(fieldStart..<cursor.position))
            case (11, 2):
                try cursor.spanEvent(try cursor.lengthDelimited(), depth: depth + 1)
                extraBuffer.append(contentsOf: input.buffer(fieldStart..<cursor.position))
            case (13, 2):
                try cursor.spanLink(try cursor.lengthDelimited(), depth: depth + 1)
                extraBuffer.append(contentsOf: input.buffer(fieldStart..<cursor.position))
            default:
                // Dropped counts, flags, and fields this version does not know.
                try cursor.skip(field: field, wireType: wireType, depth: depth)
                extraBuffer.append(contentsOf: input.buffer(fieldStart..<cursor.position))
            }
        }

        let spanName = input.string(name)
        let trace = traceID.count == 16 ? TraceID(high: input.bigEndian64(at: traceID.lowerBound), low: input.bigEndian64(at: traceID.lowerBound + 8)) : .zero
        guard trace != .zero else {
            outcome.reject("span \(spanName.debugDescription) has an invalid trace id (\(traceID.count) bytes; 16 non-zero bytes required)")
            return
        }
        let span = spanID.count == 8 ? SpanID(input.bigEndian64(at: spanID.lowerBound)) : .zero
        guard span != .zero else {
            outcome.reject("span \(spanName.debugDescription) has an invalid span id (\(spanID.count) bytes; 8 non-zero bytes required)")
            return
        }
        guard parentSpanID.isEmpty || parentSpanID.count == 8 else {
            outcome.reject("span \(spanName.debugDescription) has an invalid parent span id (\(parentSpanID.count) bytes; empty or 8 required)")
            return
        }
        let parent = parentSpanID.isEmpty ? SpanID.zero : SpanID(input.bigEndian64(at: parentSpanID.lowerBound))
        let columnStatus = status.columnStatus
        let kind32 = Int32(truncatingIfNeeded: kind)
        let httpStatusCode = responseStatus.value ?? legacyStatus.value ?? 0

        // A status the columns cannot say is kept whole with the extras (after the
        // other fields: field order carries no meaning, and the status's own
        // occurrences keep theirs).
        if columnStatus == nil { extraBuffer.append(contentsOf: statusBuffer) }
        let statusMessage = columnStatus == nil ? "" : input.string(status.message)
        batch.append(SpanBatch.Row(
            traceID: trace, spanID: span, parentSpanID: parent, name: spanName,
            kind: (0...5).contains(kind32) ? SpanKind(rawValue: UInt8(kind32))! : .unspecified,
            startTime: startTime, endTime: endTime,
            statusCode: columnStatus ?? .unset, statusMessage: statusMessage,
            httpStatusCode: (0...999).contains(httpStatusCode) ? UInt16(httpStatusCode) : 0,
            resourceIndex: resourceIndex, scopeIndex: scopeIndex,
            attributes: attributeBuffer, extras: extraBuffer))
        facts.append(requestFacts)
        outcome.accepted += 1
    }

    /// Appends an attribute's `KeyValue` bytes as an entry of a `KeyValueList`
    /// (field 1), the form the store keeps.
    private mutating func appendListEntry(_ payload: Range<Int>) {
        attributeBuffer.append(0x0A)
        var length = UInt64(payload.count)
        while length >= 0x80 {
            attributeBuffer.append(UInt8(truncatingIfNeeded: length) | 0x80)
            length >>= 7
        }
        attributeBuffer.append(UInt8(length))
        attributeBuffer.append(contentsOf: input.buffer(payload))
    }
}

/// The bytes being decoded. Kept apart from the decoder's growing batch so that
/// reading them never copies the batch.
struct OTLPInput {
    let base: UnsafePointer<UInt8>

    func cursor(_ range: Range<Int>, depth: Int) throws(OTLPDecodingError) -> ProtobufCursor {
        guard depth <= ProtobufCursor.depthLimit else { throw OTLPDecodingError(reason: .tooDeep, offset: range.lowerBound) }
        return ProtobufCursor(base, range)
    }

    func bigEndian64(at offset: Int) -> UInt64 {
        UInt64(bigEndian: UnsafeRawPointer(base + offset).loadUnaligned(as: UInt64.self))
    }

    /// The bytes of fields 1 (a message, checked by `validate`) and 3 (a schema URL)
    /// of a `ResourceSpans` or `ScopeSpans`: the resource or scope its spans share.
    func header(
        of range: Range<Int>, depth: Int,
        validate: (ProtobufCursor, Range<Int>) throws(OTLPDecodingError) -> Void
    ) throws(OTLPDecodingError) -> [UInt8] {
        var cursor = try self.cursor(range, depth: depth)
        var bytes: [UInt8] = []
        while !cursor.isAtEnd {
            let fieldStart = cursor.position
            let (field, wireType) = try cursor.tag()
            switch (field, wireType) {
            case (1, 2):
                let message = try cursor.lengthDelimited()
                try validate(cursor, message)
            case (3, 2): try cursor.validateUTF8(try cursor.lengthDelimited())
            default:
                try cursor.skip(field: field, wireType: wireType, depth: depth)
                continue
            }
            bytes.append(contentsOf: buffer(fieldStart..<cursor.position))
        }
        return bytes
    }

    func buffer(_ range: Range<Int>) -> UnsafeBufferPointer<UInt8> {
        UnsafeBufferPointer(start: base + range.lowerBound, count: range.count)
    }

    /// A string from validated UTF-8.
    func string(_ range: Range<Int>) -> String {
        range.isEmpty ? "" : String(decoding: buffer(range), as: UTF8.self)
    }
}

/// A span's `Status`, merged over every occurrence of the field as protobuf does.
private struct StatusFields {
    var isPresent = false
    var hasUnknownFields = false
    var code: UInt64 = 0
    var message: Range<Int>

    mutating func merge(_ range: Range<Int>, cursor outer: ProtobufCursor, depth: Int) throws(OTLPDecodingError) {
        guard depth <= ProtobufCursor.depthLimit else { throw OTLPDecodingError(reason: .tooDeep, offset: range.lowerBound) }
        isPresent = true
        var cursor = ProtobufCursor(outer.base, range)
        while !cursor.isAtEnd {
            let (field, wireType) = try cursor.tag()
            switch (field, wireType) {
            case (2, 2):
                message = try cursor.lengthDelimited()
                try cursor.validateUTF8(message)
            case (3, 0):
                code = try cursor.varint()
            default:
                try cursor.skip(field: field, wireType: wireType, depth: depth)
                hasUnknownFields = true
            }
        }
    }

    /// The code the status columns hold, or nil when the status is absent or says
    /// something they cannot: present but empty, a code this version does not know,
    /// unknown fields. The extras then keep the status whole.
    var columnStatus: MeshCore.StatusCode? {
        let code32 = Int32(truncatingIfNeeded: code)
        guard isPresent, !hasUnknownFields, (0...2).contains(code32),
              let statusCode = MeshCore.StatusCode(rawValue: UInt8(code32)),
              statusCode != .unset || !message.isEmpty
        else { return nil }
        return statusCode
    }
}

extension AnyValueShape {
    var intValue: Int64? {
        if case .int(let value) = self { return value }
        return nil
    }
}
