#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CCacheHints
import MeshCore
import Synchronization

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
            var decoder = OTLPTraceDecoder(input: OTLPInput(base: base, count: buffer.count))
            defer {
                // Moved out first, so that the pool holds the only reference to it.
                var names = SpanNames()
                swap(&names, &decoder.names)
                SpanNames.giveBack(names)
            }
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

/// Walks an `ExportTraceServiceRequest` in one pass over its spans: a resource is
/// read (and interned) before its scopes, wherever it lies in the bytes; spans are
/// read as they come and pointed at their scope once the scope's fields (which may
/// follow them) are read; each span is read once, its attributes and other fields
/// copied into the batch's columns as they are validated.
struct OTLPTraceDecoder: ~Copyable {
    var batch = SpanBatch()
    var facts: [RequestFacts] = []
    var outcome = IngestOutcome()
    let input: OTLPInput
    /// A span's status fields, kept with its extras when the columns cannot say them.
    private var statusBuffer: [UInt8] = []
    /// Attributes lying end to end in the input, each a one-byte tag and a length in
    /// its shortest form, copied into the batch at once: the input's bytes from
    /// `attributeRunStart` to `attributeRunEnd`, with each tag turned from
    /// `Span.attributes` into `KeyValueList.values`.
    private var attributeRunStart = 0
    private var attributeRunEnd = 0
    /// Bytes of the span's stored attributes already copied into the batch.
    private var attributesCopied = 0
    var names = SpanNames.take()
    /// Spans read, not yet in `batch`.
    var pending = SpanBatch.PendingRows()

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

    /// One `ScopeSpans`, in one pass: a first pass over the spans only to find the
    /// scope's fields would fetch every span's bytes from memory one after another.
    private mutating func decodeScopeSpans(_ range: Range<Int>, resourceIndex: UInt32, depth: Int) throws(OTLPDecodingError) {
        let firstRow = batch.count
        var header: [UInt8] = []
        var cursor = try input.cursor(range, depth: depth)
        while !cursor.isAtEnd {
            let fieldStart = cursor.position
            let (field, wireType) = try cursor.tag()
            switch (field, wireType) {
            case (2, 2):
                try decodeSpan(try cursor.lengthDelimited(), resourceIndex: resourceIndex, depth: depth + 1)
                continue
            case (1, 2): try cursor.instrumentationScope(try cursor.lengthDelimited(), depth: depth + 1)
            case (3, 2): try cursor.validateUTF8(try cursor.lengthDelimited())
            default:
                try cursor.skip(field: field, wireType: wireType, depth: depth)
                continue
            }
            header.append(contentsOf: input.buffer(fieldStart..<cursor.position))
        }
        flushPending()
        batch.setScope(batch.intern(scope: header), of: firstRow..<batch.count)
    }

    /// One `Span`. Fields the columns hold are read; attributes are copied into a
    /// `KeyValueList`; everything else (trace state, flags, events, links, dropped
    /// counts, unknown fields, and a status the columns cannot say) is copied as the
    /// fields of an extras `Span`. Repeated singular fields keep their last value, as
    /// protobuf decoding does.
    private mutating func decodeSpan(_ range: Range<Int>, resourceIndex: UInt32, depth: Int) throws(OTLPDecodingError) {
        var cursor = try input.cursor(range, depth: depth)
        input.prefetch(range.upperBound..<range.upperBound + range.count)
        let empty = range.lowerBound..<range.lowerBound
        var traceID = empty, spanID = empty, parentSpanID = empty, name = empty
        var kind: UInt64 = 0, startTime: UInt64 = 0, endTime: UInt64 = 0
        // Attributes and extras are copied into the open rows of their columns as they
        // are read; a refused span discards them.
        if !statusBuffer.isEmpty { statusBuffer.removeAll(keepingCapacity: true) }
        attributeRunStart = range.lowerBound
        attributeRunEnd = range.lowerBound
        attributesCopied = 0
        var status = StatusFields(message: empty)
        var attributes = SpanAttributes()
        while !cursor.isAtEnd {
            let fieldStart = cursor.position
            if cursor.peek() == Self.attributeTag {
                // Attributes come many in a row: they are read in a loop of their own.
                try decodeAttributes(&cursor, into: &attributes, depth: depth + 1)
                continue
            }
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
                // An attribute whose tag is written in more than one byte.
                try decodeAttribute(fieldStart, payload: try cursor.lengthDelimited(), cursor: cursor, into: &attributes, depth: depth + 1)
            case (15, 2):
                try status.merge(try cursor.lengthDelimited(), cursor: cursor, depth: depth + 1)
                statusBuffer.append(contentsOf: input.buffer(fieldStart..<cursor.position))
            case (3, 2):
                try cursor.validateUTF8(try cursor.lengthDelimited())
                batch.extras.appendToOpenRow(input.buffer(fieldStart..<cursor.position))
            case (11, 2):
                try cursor.spanEvent(try cursor.lengthDelimited(), depth: depth + 1)
                batch.extras.appendToOpenRow(input.buffer(fieldStart..<cursor.position))
            case (13, 2):
                try cursor.spanLink(try cursor.lengthDelimited(), depth: depth + 1)
                batch.extras.appendToOpenRow(input.buffer(fieldStart..<cursor.position))
            default:
                // Dropped counts, flags, and fields this version does not know.
                try cursor.skip(field: field, wireType: wireType, depth: depth)
                batch.extras.appendToOpenRow(input.buffer(fieldStart..<cursor.position))
            }
        }

        let spanName = names.string(name, in: input)
        let trace = traceID.count == 16 ? TraceID(high: input.bigEndian64(at: traceID.lowerBound), low: input.bigEndian64(at: traceID.lowerBound + 8)) : .zero
        let span = spanID.count == 8 ? SpanID(input.bigEndian64(at: spanID.lowerBound)) : .zero
        let refusal: String? = if trace == .zero {
            "an invalid trace id (\(traceID.count) bytes; 16 non-zero bytes required)"
        } else if span == .zero {
            "an invalid span id (\(spanID.count) bytes; 8 non-zero bytes required)"
        } else if !parentSpanID.isEmpty && parentSpanID.count != 8 {
            "an invalid parent span id (\(parentSpanID.count) bytes; empty or 8 required)"
        } else {
            nil
        }
        if let refusal {
            outcome.reject("span \(spanName.debugDescription) has \(refusal)")
            // The open rows start where the last span read ends.
            flushPending()
            batch.attributes.discardOpenRow()
            batch.extras.discardOpenRow()
            return
        }
        flushAttributeRun()
        let parent = parentSpanID.isEmpty ? SpanID.zero : SpanID(input.bigEndian64(at: parentSpanID.lowerBound))
        let columnStatus = status.columnStatus
        let kind32 = Int32(truncatingIfNeeded: kind)
        let httpStatusCode = attributes.responseStatus.value ?? attributes.legacyStatus.value ?? 0

        // A status the columns cannot say is kept whole with the extras (after the
        // other fields: field order carries no meaning, and the status's own
        // occurrences keep theirs).
        if columnStatus == nil && !statusBuffer.isEmpty { batch.extras.appendToOpenRow(statusBuffer) }
        let statusMessage = columnStatus == nil ? "" : input.string(status.message)
        pending.append(
            traceID: trace, spanID: span, parentSpanID: parent, name: spanName,
            kind: (0...5).contains(kind32) ? SpanKind(rawValue: UInt8(kind32))! : .unspecified,
            startTime: startTime, endTime: endTime,
            statusCode: columnStatus ?? .unset, statusMessage: statusMessage,
            httpStatusCode: (0...999).contains(httpStatusCode) ? UInt16(httpStatusCode) : 0,
            resourceIndex: resourceIndex,
            attributesEnd: batch.attributes.bytes.count, extrasEnd: batch.extras.bytes.count)
        facts.append(attributes.facts)
        if pending.isFull { flushPending() }
        outcome.accepted += 1
    }

    private mutating func flushPending() {
        batch.append(&pending)
    }

    /// `Span.attributes` (field 9, length-delimited) as its one-byte tag.
    private static let attributeTag: UInt8 = 0x4A

    /// The attribute fields starting at the cursor, up to the first field that is not
    /// one (each tag the one byte `attributeTag`).
    private mutating func decodeAttributes(
        _ cursor: inout ProtobufCursor, into attributes: inout SpanAttributes, depth: Int
    ) throws(OTLPDecodingError) {
        repeat {
            let fieldStart = cursor.position
            cursor.skipByte()
            let payload = try cursor.lengthDelimited()
            try decodeAttribute(fieldStart, payload: payload, cursor: cursor, into: &attributes, depth: depth)
        } while !cursor.isAtEnd && cursor.peek() == Self.attributeTag
    }

    /// One attribute: its `KeyValue` at `payload`, its field starting at `fieldStart`.
    @inline(__always)
    private mutating func decodeAttribute(
        _ fieldStart: Int, payload: Range<Int>, cursor: ProtobufCursor, into attributes: inout SpanAttributes, depth: Int
    ) throws(OTLPDecodingError) {
        let attribute = try cursor.keyValue(payload, depth: depth)
        // `shift` maps the attribute's offsets in the input to the span's stored list.
        let shift = appendAttribute(fieldStart..<payload.upperBound, payload: payload)
        attributes.facts.observe(input.buffer(0..<payload.upperBound), key: attribute.key, value: attribute.lastValue,
                                 storedAt: shift)
        if !attributes.responseStatus.isDecided, cursor.equals(attribute.key, "http.response.status_code") {
            attributes.responseStatus.decide(attribute.value.intValue)
        } else if !attributes.legacyStatus.isDecided, cursor.equals(attribute.key, "http.status_code") {
            attributes.legacyStatus.decide(attribute.value.intValue)
        }
    }

    /// Adds the attribute field at `field` (its `KeyValue` at `payload`) to the span's
    /// stored `KeyValueList`, and returns what added to an offset of the input gives
    /// the offset of the same byte in that list.
    ///
    /// A field whose tag is the one byte `Span.attributes` is written in is the
    /// list's entry but for that byte, so it joins the run of such fields before it
    /// when it directly follows them; any other is written out whole.
    @inline(__always)
    private mutating func appendAttribute(_ field: Range<Int>, payload: Range<Int>) -> Int {
        if payload.lowerBound - field.lowerBound == 1 + ProtobufCursor.varintSize(UInt64(payload.count)) {
            if attributeRunEnd != field.lowerBound { flushAttributeRun() }
            if attributeRunStart == attributeRunEnd { attributeRunStart = field.lowerBound }
            let stored = attributesCopied + (field.lowerBound - attributeRunStart)
            attributeRunEnd = field.upperBound
            return stored - field.lowerBound
        }
        return appendAttributeWithLongTag(payload)
    }

    /// `appendAttribute` for a field whose tag takes more than one byte or whose
    /// length is not in its shortest form.
    private mutating func appendAttributeWithLongTag(_ payload: Range<Int>) -> Int {
        flushAttributeRun()
        var entry = ByteWriter()
        entry.write(Self.listEntryTag)
        entry.writeVarint(UInt64(payload.count))
        batch.attributes.appendToOpenRow(entry.bytes)
        batch.attributes.appendToOpenRow(input.buffer(payload))
        attributesCopied += entry.count + payload.count
        return attributesCopied - payload.upperBound
    }

    /// `KeyValueList.values` (field 1, length-delimited).
    private static let listEntryTag: UInt8 = 0x0A

    private mutating func flushAttributeRun() {
        guard attributeRunStart != attributeRunEnd else { return }
        batch.attributes.appendToOpenRow(input.buffer(attributeRunStart..<attributeRunEnd)) { run in
            // Entry after entry: its one-byte tag is rewritten, then the entry read past.
            var entries = WireReader(UnsafeBufferPointer(run), 0..<run.count)
            while !entries.isAtEnd {
                run[entries.position] = Self.listEntryTag
                guard entries.tag() != nil, entries.lengthDelimited() != nil else { return }
            }
        }
        attributesCopied += attributeRunEnd - attributeRunStart
        attributeRunStart = attributeRunEnd
    }
}

/// Span names already made into strings, kept from request to request, so that the
/// spans of one name share one `String` instead of a new one per request: a table of
/// 1,024 slots, each holding the last name whose hash chose it. Sharing the string
/// lets the golden signals tell equal names by the string's bits, without reading
/// its bytes (which, for a string of each request, lie in memory no longer in the
/// cache), lets string comparisons settle on those bits, and saves an allocation per
/// name and request.
///
/// A decoder takes a table from a pool for one request and gives it back after, so
/// tables are never shared between threads; there are at most as many as requests
/// decoded at once. Names longer than `longestName` bytes are not kept.
struct SpanNames {
    private struct Slot {
        var hash: UInt64 = 0
        var string: String?
    }

    private static let slotCount = 1024
    static let longestName = 256
    private static let pool = Mutex<[SpanNames]>([])
    private static let poolLimit = 16

    /// Empty until the first name is looked up.
    private var slots: [Slot] = []

    /// A table from the pool, or a new one.
    static func take() -> SpanNames {
        pool.withLock { $0.popLast() } ?? SpanNames()
    }

    /// Gives a table back to the pool (dropped when the pool is full).
    static func giveBack(_ names: SpanNames) {
        pool.withLock { pool in
            if pool.count < poolLimit { pool.append(names) }
        }
    }

    mutating func string(_ range: Range<Int>, in input: OTLPInput) -> String {
        guard !range.isEmpty else { return "" }
        let count = range.count
        guard count <= Self.longestName else { return input.string(range) }
        if slots.isEmpty { slots = Array(repeating: Slot(), count: Self.slotCount) }
        let bytes = UnsafeRawPointer(input.base + range.lowerBound)
        // The first and last eight bytes (overlapping when shorter), and the length.
        var hash = UInt64(count) &* 0x9E37_79B9_7F4A_7C15
        if count >= 8 {
            hash = (hash ^ bytes.loadUnaligned(as: UInt64.self)) &* 0xBF58_476D_1CE4_E5B9
            hash = (hash ^ bytes.loadUnaligned(fromByteOffset: count &- 8, as: UInt64.self)) &* 0x94D0_49BB_1331_11EB
        } else {
            for index in 0..<count { hash = (hash ^ UInt64(bytes.load(fromByteOffset: index, as: UInt8.self))) &* 0xBF58_476D_1CE4_E5B9 }
        }
        let index = Int(truncatingIfNeeded: hash >> 54)
        let found: String? = slots.withUnsafeBufferPointer { slots in
            guard slots[index].hash == hash, let string = slots[index].string else { return nil }
            let equal = string.utf8.withContiguousStorageIfAvailable { stored in
                stored.count == count && memcmp(stored.baseAddress!, bytes, count) == 0
            }
            return equal == true ? string : nil
        }
        if let found { return found }
        let string = input.string(range)
        slots[index] = Slot(hash: hash, string: string)
        return string
    }
}

/// The bytes being decoded. Kept apart from the decoder's growing batch so that
/// reading them never copies the batch.
struct OTLPInput {
    let base: UnsafePointer<UInt8>
    let count: Int

    /// Asks for the cache lines of `range` (clipped to the input, at most 2 KiB) ahead
    /// of reading them: spans are read front to back, and the next span's bytes are
    /// on their way while this one is decoded.
    @inline(__always)
    func prefetch(_ range: Range<Int>) {
        var line = range.lowerBound
        let end = min(range.upperBound, count, range.lowerBound &+ 2048)
        while line < end {
            meshtrace_prefetch_for_read(base + line)
            line &+= 64
        }
    }

    func cursor(_ range: Range<Int>, depth: Int) throws(OTLPDecodingError) -> ProtobufCursor {
        guard depth <= ProtobufCursor.depthLimit else { throw OTLPDecodingError(reason: .tooDeep, offset: range.lowerBound) }
        return ProtobufCursor(base, range)
    }

    func bigEndian64(at offset: Int) -> UInt64 {
        UInt64(bigEndian: UnsafeRawPointer(base + offset).loadUnaligned(as: UInt64.self))
    }

    /// The bytes of fields 1 (a message, checked by `validate`) and 3 (a schema URL)
    /// of a `ResourceSpans`: the resource its spans share. It skips over the scopes,
    /// a few per resource; a `ScopeSpans`, whose spans are many, is read in one pass
    /// instead (`OTLPTraceDecoder.decodeScopeSpans`).
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

/// What a span's attributes say, gathered as they are read.
private struct SpanAttributes {
    var facts = RequestFacts()
    /// The first `http.response.status_code`, and the first `http.status_code` (older conventions).
    var responseStatus = FirstAttribute<Int64>()
    var legacyStatus = FirstAttribute<Int64>()
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
