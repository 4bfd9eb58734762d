import MeshCore

/// Version 2 of the span segment: rows grouped by trace into blocks that are read
/// and decoded independently, parents as offsets within the trace, times relative
/// to the parent, and one column per frequent attribute key. Dictionaries (names,
/// resources, scopes, attribute keys and layouts) are shared by all blocks.
/// storage/FORMAT.md specifies it; `SegmentDecoderV2` reads it.
enum SegmentFormatV2 {
    static let version: UInt16 = 2
    /// A block closes at the first trace boundary after this many spans.
    static let defaultBlockSpans = 4096
    /// Attribute (key, type) pairs beyond this many share the generic column.
    static let maxDedicatedAttributes = 64

    /// Segment-wide dictionary chunks.
    enum Dictionary: String, CaseIterable {
        case names = "dict.names"
        case resources = "dict.resources"
        case scopes = "dict.scopes"
        case attributes = "dict.attributes"
    }

    /// Per-block columns, in file order; dedicated attribute columns follow.
    enum Column: String, CaseIterable {
        case traceID = "trace.id"
        case traceSpans = "trace.spans"
        case traceStart = "trace.start"
        case spanID = "span.id"
        case parent = "span.parent"
        case parentExternal = "span.parent_external"
        case start = "span.start"
        case duration = "span.duration"
        case name = "span.name"
        case kindStatus = "span.kind_status"
        case statusMessage = "span.status_message"
        case traceState = "span.trace_state"
        case flags = "span.flags"
        case resource = "span.resource"
        case scope = "span.scope"
        case extras = "span.extras"
        case layout = "attr.layout"
        case fallback = "attr.fallback"
        case generic = "attr.generic"
    }

    /// Bits of `span.kind_status` above the kind (bits 0–2) and status code (bits 3–4).
    static let hasStatusMessage: UInt8 = 1 << 5
    static let hasExtras: UInt8 = 1 << 6
    static let hasTraceState: UInt8 = 1 << 7

    /// The chunk name of a block's column: `<block>/<column>`.
    static func chunkName(block: Int, column: String) -> String { "\(block)/\(column)" }

    /// Name of the column holding a dedicated attribute.
    static func attributeColumnName(key: [UInt8], type: AttributeType) -> String {
        let typeName: String
        switch type {
        case .absent: typeName = "absent"
        case .string: typeName = "string"
        case .bool: typeName = "bool"
        case .int: typeName = "int"
        case .double: typeName = "double"
        case .other: typeName = "any"
        }
        return "attr/\(typeName)/" + String(decoding: key, as: UTF8.self)
    }

    /// A segment's encoded chunks and index, before compression.
    struct Encoded {
        var blocks: [(info: BlockInfo, columns: [(name: String, bytes: [UInt8])])]
        var dictionaries: [(name: String, bytes: [UInt8])]
        var bloom: TraceBloomFilter
    }

    static func encode(_ batch: SpanBatch, blockSpans: Int = defaultBlockSpans) -> Encoded {
        let order = (0..<batch.count).sorted { a, b in
            if batch.traceIDs[a] != batch.traceIDs[b] { return batch.traceIDs[a] < batch.traceIDs[b] }
            if batch.startTimes[a] != batch.startTimes[b] { return batch.startTimes[a] < batch.startTimes[b] }
            return batch.spanIDs[a] < batch.spanIDs[b]
        }
        var traceRanges: [Range<Int>] = []
        var runStart = 0
        for position in 0..<order.count where position + 1 == order.count
            || batch.traceIDs[order[position + 1]] != batch.traceIDs[order[position]] {
            traceRanges.append(runStart..<position + 1)
            runStart = position + 1
        }

        var names = StringDictionary()
        var attributes = AttributeDictionary(batch: batch, order: order)
        var blocks: [(info: BlockInfo, columns: [(name: String, bytes: [UInt8])])] = []
        var firstTrace = 0
        while firstTrace < traceRanges.count {
            var lastTrace = firstTrace
            while lastTrace + 1 < traceRanges.count
                && traceRanges[lastTrace].upperBound - traceRanges[firstTrace].lowerBound < blockSpans {
                lastTrace += 1
            }
            blocks.append(encodeBlock(
                batch: batch, order: order, traces: traceRanges[firstTrace...lastTrace],
                names: &names, attributes: &attributes))
            firstTrace = lastTrace + 1
        }

        var nameChunk = ByteWriter()
        nameChunk.writeVarint(UInt64(names.values.count))
        for name in names.values { nameChunk.write(string: name) }
        var resources = ByteWriter()
        resources.writeVarint(UInt64(batch.resources.count))
        for resource in batch.resources {
            resources.write(string: resource.serviceName)
            resources.write(lengthPrefixed: resource.encoded)
        }
        var scopes = ByteWriter()
        scopes.writeVarint(UInt64(batch.scopes.count))
        for scope in batch.scopes { scopes.write(lengthPrefixed: scope) }
        return Encoded(
            blocks: blocks,
            dictionaries: [
                (Dictionary.names.rawValue, nameChunk.bytes),
                (Dictionary.resources.rawValue, resources.bytes),
                (Dictionary.scopes.rawValue, scopes.bytes),
                (Dictionary.attributes.rawValue, attributes.serialized()),
            ],
            bloom: TraceBloomFilter(traceIDs: traceRanges.map { batch.traceIDs[order[$0.lowerBound]] }))
    }

    private static func encodeBlock(
        batch: SpanBatch, order: [Int], traces: ArraySlice<Range<Int>>,
        names: inout StringDictionary, attributes: inout AttributeDictionary
    ) -> (info: BlockInfo, columns: [(name: String, bytes: [UInt8])]) {
        var columns: [Column: ByteWriter] = [:]
        for column in Column.allCases { columns[column] = ByteWriter() }
        let rows = traces.first!.lowerBound..<traces.last!.upperBound
        let blockStart = rows.map { batch.startTimes[order[$0]] }.min()!
        // Proxies often report microseconds; then every time is stored in µs.
        let timeUnit: UInt64 = rows.allSatisfy { batch.startTimes[order[$0]] % 1000 == 0 && batch.endTimes[order[$0]] % 1000 == 0 } ? 1000 : 1
        var traceStates = StringValueWriter()

        for range in traces {
            let first = order[range.lowerBound]
            columns[.traceID]!.write(raw: batch.traceIDs[first].bytes)
            columns[.traceSpans]!.writeVarint(UInt64(range.count))
            let traceStart = range.map { batch.startTimes[order[$0]] }.min()!
            columns[.traceStart]!.writeVarint((traceStart - blockStart) / timeUnit)

            // The end of the latest child of each row so far: a sibling called after it starts soon after.
            var lastChildEnd: [Int: UInt64] = [:]
            var indexInTrace: [SpanID: Int] = [:]
            for (local, position) in range.enumerated() where indexInTrace[batch.spanIDs[order[position]]] == nil {
                indexInTrace[batch.spanIDs[order[position]]] = local
            }
            for (local, position) in range.enumerated() {
                let row = order[position]
                writeBigEndian(batch.spanIDs[row].value, to: &columns[.spanID]!)

                let parentID = batch.parentSpanIDs[row]
                var parentRow: Int?
                var parentLocalIndex: Int?
                if parentID == .zero {
                    columns[.parent]!.writeVarint(0)
                } else if let parentLocal = indexInTrace[parentID], parentLocal != local {
                    columns[.parent]!.writeVarint(zigzag(Int64(local - parentLocal)) + 2)
                    // Times are coded against a parent that precedes the row, so a reader has it already.
                    if parentLocal < local {
                        parentRow = order[range.lowerBound + parentLocal]
                        parentLocalIndex = parentLocal
                    }
                } else {
                    columns[.parent]!.writeVarint(1)
                    writeBigEndian(parentID.value, to: &columns[.parentExternal]!)
                }

                let start = batch.startTimes[row]
                let base = parentLocalIndex.map { lastChildEnd[$0] ?? batch.startTimes[parentRow!] } ?? traceStart
                columns[.start]!.writeVarint(zigzag(Int64(bitPattern: start &- base) / Int64(timeUnit)))
                if let parentLocalIndex { lastChildEnd[parentLocalIndex] = batch.endTimes[row] }
                let duration = Int64(bitPattern: batch.endTimes[row] &- start)
                if let parentRow, batch.kinds[row] == .server, batch.kinds[parentRow] == .client {
                    let parentDuration = Int64(bitPattern: batch.endTimes[parentRow] &- batch.startTimes[parentRow])
                    columns[.duration]!.writeVarint(zigzag((duration &- parentDuration) / Int64(timeUnit)))
                } else {
                    columns[.duration]!.writeVarint(zigzag(duration / Int64(timeUnit)))
                }

                // 0: the same as the parent's; otherwise the dictionary index + 1.
                if let parentRow, batch.names[parentRow] == batch.names[row] {
                    columns[.name]!.writeVarint(0)
                } else {
                    columns[.name]!.writeVarint(UInt64(names.index(of: batch.names[row]) + 1))
                }
                if let parentRow, batch.resourceIndices[parentRow] == batch.resourceIndices[row] {
                    columns[.resource]!.writeVarint(0)
                } else {
                    columns[.resource]!.writeVarint(UInt64(batch.resourceIndices[row]) + 1)
                }
                columns[.scope]!.writeVarint(UInt64(batch.scopeIndices[row]))

                let split = ExtrasSplit(batch.extras[row])
                var kindStatus = batch.kinds[row].rawValue | batch.statusCodes[row].rawValue << 3
                if !batch.statusMessages[row].isEmpty {
                    kindStatus |= hasStatusMessage
                    columns[.statusMessage]!.write(string: batch.statusMessages[row])
                }
                if !split.rest.isEmpty {
                    kindStatus |= hasExtras
                    columns[.extras]!.write(lengthPrefixed: split.rest)
                }
                if let traceState = split.traceState {
                    kindStatus |= hasTraceState
                    traceStates.write(traceState, to: &columns[.traceState]!)
                }
                columns[.kindStatus]!.write(kindStatus)
                columns[.flags]!.writeVarint(UInt64(split.flags))
            }
        }

        let attributeColumns = attributes.encode(rows: rows.map { order[$0] }, of: batch)
        columns[.layout] = attributeColumns.layout
        columns[.fallback] = attributeColumns.fallback
        columns[.generic] = attributeColumns.generic
        let firstRow = order[rows.lowerBound]
        let lastRow = order[rows.upperBound - 1]
        let info = BlockInfo(
            firstTraceID: batch.traceIDs[firstRow], lastTraceID: batch.traceIDs[lastRow],
            spanCount: rows.count, traceCount: traces.count, minStartTime: blockStart,
            maxEndTime: rows.map { batch.endTimes[order[$0]] }.max()!, timeUnit: timeUnit)
        return (info, Column.allCases.map { ($0.rawValue, columns[$0]!.bytes) } + attributeColumns.dedicated)
    }

    static func zigzag(_ value: Int64) -> UInt64 {
        UInt64(bitPattern: (value << 1) ^ (value >> 63))
    }

    static func writeBigEndian(_ value: UInt64, to writer: inout ByteWriter) {
        for shift in stride(from: 56, through: 0, by: -8) {
            writer.write(UInt8(truncatingIfNeeded: value >> UInt64(shift)))
        }
    }
}

/// What a block holds, from the segment footer: enough to skip blocks that cannot match.
public struct BlockInfo: Sendable, Equatable {
    public var firstTraceID: TraceID
    public var lastTraceID: TraceID
    public var spanCount: Int
    public var traceCount: Int
    /// Nanoseconds since the Unix epoch.
    public var minStartTime: UInt64
    /// Nanoseconds since the Unix epoch.
    public var maxEndTime: UInt64
    /// The unit of the block's stored times, in nanoseconds: 1000 when every time
    /// is a whole microsecond, else 1.
    public var timeUnit: UInt64
}

/// A per-segment string dictionary in first-seen order.
struct StringDictionary {
    private var lookup: [String: Int] = [:]
    private(set) var values: [String] = []

    mutating func index(of value: String) -> Int {
        if let known = lookup[value] { return known }
        lookup[value] = values.count
        values.append(value)
        return values.count - 1
    }
}

/// A span's `extras` protobuf split into what v2 stores in columns (trace state,
/// flags) and the remaining fields (events, links, dropped counts), kept as bytes.
struct ExtrasSplit {
    var traceState: ArraySlice<UInt8>?
    var flags: UInt32 = 0
    var rest: [UInt8] = []

    init(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        var reader = WireReader(bytes: bytes[...])
        var seenTraceState = false
        var seenFlags = false
        while !reader.isAtEnd {
            let fieldStart = reader.bytes.startIndex
            guard let (field, wireType) = reader.tag() else { self = ExtrasSplit(keeping: bytes); return }
            switch (field, wireType) {
            case (3, 2) where !seenTraceState:
                guard let value = reader.lengthDelimited() else { self = ExtrasSplit(keeping: bytes); return }
                seenTraceState = true
                if !value.isEmpty { traceState = value } else { rest += bytes[fieldStart..<reader.bytes.startIndex] }
            case (16, 5) where !seenFlags:
                guard reader.bytes.count >= 4 else { self = ExtrasSplit(keeping: bytes); return }
                flags = reader.bytes.prefix(4).enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << UInt32($1.offset * 8) }
                reader.bytes = reader.bytes.dropFirst(4)
                seenFlags = true
                if flags == 0 { rest += bytes[fieldStart..<reader.bytes.startIndex] }
            default:
                guard reader.skip(wireType: wireType) else { self = ExtrasSplit(keeping: bytes); return }
                rest += bytes[fieldStart..<reader.bytes.startIndex]
            }
        }
    }

    /// Keeps malformed or unusual bytes whole.
    private init(keeping bytes: [UInt8]) {
        rest = bytes
    }
}

extension WireReader {
    /// Skips one field's payload; false when the wire type is unknown or the input ends.
    mutating func skip(wireType: UInt8) -> Bool {
        switch wireType {
        case 0: return varint() != nil
        case 1: return fixed64() != nil
        case 2: return lengthDelimited() != nil
        case 5:
            guard bytes.count >= 4 else { return false }
            bytes = bytes.dropFirst(4)
            return true
        default: return false
        }
    }
}

/// The segment-wide half of attribute storage — keys, which (key, type) pairs get a
/// column of their own, and layouts (which keys a span has, in order) — and the
/// per-block value columns.
struct AttributeDictionary {
    private struct Pair: Hashable {
        var key: Int
        var type: AttributeType
    }

    private var keys: [[UInt8]] = []
    private var keyIndex: [ByteKey: Int] = [:]
    private var chosen: [Pair] = []
    private var columnOf: [Pair: Int] = [:]
    private var layouts: [[UInt64]] = []
    private var layoutIndex: [[UInt64]: Int] = [:]

    /// Rows sampled to choose the dedicated columns.
    static let sampleRows = 8192

    /// Chooses the dedicated columns: the most frequent (key, type) pairs among a
    /// sample of rows spread over the batch.
    init(batch: SpanBatch, order: [Int]) {
        var frequency: [Pair: Int] = [:]
        let step = max(1, order.count / Self.sampleRows)
        for row in stride(from: 0, to: order.count, by: step).map({ order[$0] }) {
            guard let scanned = AttributeCoding.scan(batch.attributes[row]) else { continue }
            for attribute in scanned where attribute.type != .absent {
                frequency[Pair(key: keyID(attribute.key), type: attribute.type), default: 0] += 1
            }
        }
        chosen = frequency.sorted { ($0.value, -$0.key.key) > ($1.value, -$1.key.key) }
            .prefix(SegmentFormatV2.maxDedicatedAttributes).map(\.key)
        for (index, pair) in chosen.enumerated() { columnOf[pair] = index }
    }

    private mutating func keyID(_ key: ArraySlice<UInt8>) -> Int {
        if let known = keyIndex[ByteKey(key)] { return known }
        keyIndex[ByteKey(key)] = keys.count
        keys.append(Array(key))
        return keys.count - 1
    }

    /// Encodes the attributes of `rows` (batch row indices, in block order).
    mutating func encode(rows: [Int], of batch: SpanBatch)
        -> (layout: ByteWriter, fallback: ByteWriter, generic: ByteWriter, dedicated: [(name: String, bytes: [UInt8])])
    {
        var layout = ByteWriter(capacity: rows.count)
        var fallback = ByteWriter()
        var generic = ByteWriter()
        var values = [ByteWriter](repeating: ByteWriter(), count: chosen.count)
        var strings = [StringValueWriter](repeating: StringValueWriter(), count: chosen.count)
        var integers = [IntegerValueCoder](repeating: IntegerValueCoder(), count: chosen.count)
        for row in rows {
            let bytes = batch.attributes[row]
            if bytes.isEmpty {
                layout.writeVarint(0)
                continue
            }
            guard let scanned = AttributeCoding.scan(bytes) else {
                layout.writeVarint(1)
                fallback.write(lengthPrefixed: bytes)
                continue
            }
            var shape: [UInt64] = []
            shape.reserveCapacity(scanned.count)
            for attribute in scanned {
                let pair = Pair(key: keyID(attribute.key), type: attribute.type)
                shape.append(UInt64(pair.key) << 3 | UInt64(pair.type.rawValue))
                if let column = columnOf[pair] {
                    switch attribute.type {
                    case .string: strings[column].write(attribute.bytes, to: &values[column])
                    case .int: integers[column].write(attribute.scalar, to: &values[column])
                    default: Self.writePlain(attribute, to: &values[column])
                    }
                } else {
                    Self.writePlain(attribute, to: &generic)
                }
            }
            let index: Int
            if let known = layoutIndex[shape] {
                index = known
            } else {
                index = layouts.count
                layouts.append(shape)
                layoutIndex[shape] = index
            }
            layout.writeVarint(UInt64(index + 2))
        }
        let dedicated = chosen.enumerated().map { index, pair in
            (SegmentFormatV2.attributeColumnName(key: keys[pair.key], type: pair.type), values[index].bytes)
        }
        return (layout, fallback, generic, dedicated)
    }

    /// Keys, dedicated pairs and layouts, as the `dict.attributes` chunk.
    func serialized() -> [UInt8] {
        var writer = ByteWriter()
        writer.writeVarint(UInt64(keys.count))
        for key in keys { writer.write(lengthPrefixed: key) }
        writer.writeVarint(UInt64(chosen.count))
        for pair in chosen {
            writer.writeVarint(UInt64(pair.key))
            writer.write(pair.type.rawValue)
        }
        writer.writeVarint(UInt64(layouts.count))
        for shape in layouts {
            writer.writeVarint(UInt64(shape.count))
            for entry in shape { writer.writeVarint(entry) }
        }
        return writer.bytes
    }

    /// Writes one value plainly: strings as byte strings, integers as zig-zag
    /// varints, doubles as 8 bytes, booleans as a byte, other values as protobuf
    /// `AnyValue` bytes.
    private static func writePlain(_ attribute: ScannedAttribute, to writer: inout ByteWriter) {
        switch attribute.type {
        case .absent:
            break
        case .string, .other:
            writer.write(lengthPrefixed: attribute.bytes)
        case .bool:
            writer.write(UInt8(attribute.scalar))
        case .int:
            writer.writeVarint(SegmentFormatV2.zigzag(Int64(bitPattern: attribute.scalar)))
        case .double:
            writer.write(attribute.scalar)
        }
    }
}

/// Bytes as a dictionary key, hashed in one call rather than byte by byte.
struct ByteKey: Hashable {
    let bytes: ArraySlice<UInt8>

    init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
    }

    func hash(into hasher: inout Hasher) {
        bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
    }

    static func == (lhs: ByteKey, rhs: ByteKey) -> Bool {
        lhs.bytes.count == rhs.bytes.count && lhs.bytes.elementsEqual(rhs.bytes)
    }
}
