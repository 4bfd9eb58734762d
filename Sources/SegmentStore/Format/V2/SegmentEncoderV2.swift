import MeshCore

/// Versions 2 and 3 of the span segment: rows grouped by trace into blocks that are
/// read and decoded independently, parents as offsets within the trace, times
/// relative to the parent, and one column per frequent attribute key. Dictionaries
/// (names, resources, scopes, attribute keys and layouts) are shared by all blocks.
/// Version 3 adds runs: within a block, every move-to-front list starts empty again
/// every few hundred spans, and `trace.runs` says where each run starts in every
/// column, so a lookup decodes one run instead of the block up to its trace.
/// storage/FORMAT.md specifies it; `SegmentDecoderV2` reads both versions.
enum SegmentFormatV2 {
    /// The version written.
    static let version: UInt16 = 4
    /// The first version with runs.
    static let runsVersion: UInt16 = 3
    /// The first version that stores block summaries.
    static let summariesVersion: UInt16 = 4
    /// The chunk of every block's summary, in block order.
    static let summariesChunk = "block.summaries"
    /// A block closes at the first trace boundary after this many spans.
    static let defaultBlockSpans = 4096
    /// A run closes at the first trace boundary after this many spans.
    static let defaultRunSpans = 256
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
        /// Version 3: where each run after the first starts.
        case runs = "trace.runs"
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

        /// The columns with entries per row (not per trace), in file order: a run
        /// records its offset in each of them, then in each dedicated attribute column.
        static let rowColumns = allCases.filter { !$0.rawValue.hasPrefix("trace.") }
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
        /// Every block's `BlockSummary`, coded for `block.summaries`.
        var summaries: [UInt8]
    }

    static func encode(_ batch: SpanBatch, blockSpans: Int = defaultBlockSpans, runSpans: Int = defaultRunSpans) -> Encoded {
        let order = batch.traceOrder()
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
        var summaries = ByteWriter()
        var firstTrace = 0
        while firstTrace < traceRanges.count {
            var lastTrace = firstTrace
            while lastTrace + 1 < traceRanges.count
                && traceRanges[lastTrace].upperBound - traceRanges[firstTrace].lowerBound < blockSpans {
                lastTrace += 1
            }
            blocks.append(encodeBlock(
                batch: batch, order: order, traces: traceRanges[firstTrace...lastTrace], runSpans: runSpans,
                names: &names, attributes: &attributes))
            var summary = BlockSummary()
            for position in traceRanges[firstTrace].lowerBound..<traceRanges[lastTrace].upperBound {
                let row = order[position]
                summary.add(resource: Int32(batch.resourceIndices[row]), status: batch.statusCodes[row], kind: batch.kinds[row],
                            duration: batch.endTimes[row] &- batch.startTimes[row])
            }
            summary.write(to: &summaries, block: blocks[blocks.count - 1].info)
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
            bloom: TraceBloomFilter(traceIDs: traceRanges.map { batch.traceIDs[order[$0.lowerBound]] }),
            summaries: summaries.bytes)
    }

    private static func encodeBlock(
        batch: SpanBatch, order: [Int], traces: ArraySlice<Range<Int>>, runSpans: Int,
        names: inout StringDictionary, attributes: inout AttributeDictionary
    ) -> (info: BlockInfo, columns: [(name: String, bytes: [UInt8])]) {
        var columns = BlockColumns()
        let rows = traces.first!.lowerBound..<traces.last!.upperBound
        var blockStart = UInt64.max
        var blockEnd = UInt64.min
        var wholeMicroseconds = true
        for position in rows {
            let row = order[position]
            blockStart = min(blockStart, batch.startTimes[row])
            blockEnd = max(blockEnd, batch.endTimes[row])
            wholeMicroseconds = wholeMicroseconds && batch.startTimes[row] % 1000 == 0 && batch.endTimes[row] % 1000 == 0
        }
        // Proxies often report microseconds; then every time is stored in µs.
        let timeUnit: UInt64 = wholeMicroseconds ? 1000 : 1
        let lists = ListArena()
        defer { withExtendedLifetime(lists) {} }
        var traceStates = StringValueWriter(in: lists)
        var trace = TraceRows()

        // A run closes at the first trace boundary after `runSpans` rows; for each run
        // after the first, its first trace and first row within the block.
        var runTraces: [Int] = []
        var runRows: [Int] = []
        var blockRow = 0
        for (index, range) in traces.enumerated() {
            if index > 0 && blockRow - (runRows.last ?? 0) >= runSpans {
                runTraces.append(index)
                runRows.append(blockRow)
            }
            blockRow += range.count
        }
        var runOffsets: [[Int]] = []
        // Rows are visited in trace order, not in the order they arrived: each trace
        // asks for the columns of the rows up to `rowsAhead` past its own.
        var prefetched = rows.lowerBound
        let rowsAhead = 16

        for (traceIndex, range) in traces.enumerated() {
            if runOffsets.count < runTraces.count && runTraces[runOffsets.count] == traceIndex {
                runOffsets.append(columns.rowColumnSizes())
                traceStates.restart()
            }
            while prefetched < min(range.upperBound + rowsAhead, rows.upperBound) {
                batch.prefetchColumns(row: order[prefetched])
                // That asked for where each row's extras lie; half as far ahead, the bytes there.
                if prefetched - rowsAhead / 2 >= rows.lowerBound { batch.extras.prefetch(row: order[prefetched - rowsAhead / 2], limit: 64) }
                prefetched += 1
            }
            trace.reset(batch: batch, order: order, range: range)
            let first = order[range.lowerBound]
            let traceID = batch.traceIDs[first]
            writeBigEndian(traceID.high, to: &columns.traceID)
            writeBigEndian(traceID.low, to: &columns.traceID)
            columns.traceSpans.writeVarint(UInt64(range.count))
            columns.traceStart.writeVarint((trace.start - blockStart) / timeUnit)

            for (local, position) in range.enumerated() {
                let row = order[position]
                writeBigEndian(batch.spanIDs[row].value, to: &columns.spanID)

                let parentID = batch.parentSpanIDs[row]
                var parentRow: Int?
                var parentLocalIndex: Int?
                if parentID == .zero {
                    columns.parent.writeVarint(0)
                } else if let parentLocal = trace.local(of: parentID), parentLocal != local {
                    columns.parent.writeVarint(zigzag(Int64(local - parentLocal)) + 2)
                    // Times are coded against a parent that precedes the row, so a reader has it already.
                    if parentLocal < local {
                        parentRow = order[range.lowerBound + parentLocal]
                        parentLocalIndex = parentLocal
                    }
                } else {
                    columns.parent.writeVarint(1)
                    writeBigEndian(parentID.value, to: &columns.parentExternal)
                }

                let start = batch.startTimes[row]
                // The end of the latest child of the parent so far: a sibling called after it starts soon after.
                let base = parentLocalIndex.map { trace.lastChildEnd[$0] ?? batch.startTimes[parentRow!] } ?? trace.start
                columns.start.writeVarint(zigzag(Int64(bitPattern: start &- base) / Int64(timeUnit)))
                if let parentLocalIndex { trace.lastChildEnd[parentLocalIndex] = batch.endTimes[row] }
                let duration = Int64(bitPattern: batch.endTimes[row] &- start)
                if let parentRow, batch.kinds[row] == .server, batch.kinds[parentRow] == .client {
                    let parentDuration = Int64(bitPattern: batch.endTimes[parentRow] &- batch.startTimes[parentRow])
                    columns.duration.writeVarint(zigzag((duration &- parentDuration) / Int64(timeUnit)))
                } else {
                    columns.duration.writeVarint(zigzag(duration / Int64(timeUnit)))
                }

                // 0: the same as the parent's; otherwise the dictionary index + 1.
                if let parentRow, batch.names[parentRow] == batch.names[row] {
                    columns.name.writeVarint(0)
                } else {
                    columns.name.writeVarint(UInt64(names.index(of: batch.names[row]) + 1))
                }
                if let parentRow, batch.resourceIndices[parentRow] == batch.resourceIndices[row] {
                    columns.resource.writeVarint(0)
                } else {
                    columns.resource.writeVarint(UInt64(batch.resourceIndices[row]) + 1)
                }
                columns.scope.writeVarint(UInt64(batch.scopeIndices[row]))

                var kindStatus = batch.kinds[row].rawValue | batch.statusCodes[row].rawValue << 3
                if !batch.statusMessages[row].isEmpty {
                    kindStatus |= hasStatusMessage
                    columns.statusMessage.write(string: batch.statusMessages[row])
                }
                batch.extras.withUnsafeBytes(ofRow: row) { extras in
                    let split = ExtrasSplit(extras)
                    if !split.rest.isEmpty {
                        kindStatus |= hasExtras
                        columns.extras.write(lengthPrefixed: split.rest)
                    }
                    if let traceState = split.traceState {
                        kindStatus |= hasTraceState
                        traceStates.write(UnsafeBufferPointer(rebasing: extras[traceState]), to: &columns.traceState)
                    }
                    columns.flags.writeVarint(UInt64(split.flags))
                }
                columns.kindStatus.write(kindStatus)
            }
        }

        let attributeColumns = attributes.encode(rows: rows.map { order[$0] }, runStarts: runRows, of: batch)
        columns.layout = attributeColumns.layout
        columns.fallback = attributeColumns.fallback
        columns.generic = attributeColumns.generic
        // Per run after the first: its first trace, then its offset in every row column, each as a delta.
        columns.runs.writeVarint(UInt64(runTraces.count))
        var previousTrace = 0
        var previousOffsets = [Int](repeating: 0, count: Column.rowColumns.count + attributeColumns.dedicated.count)
        for run in runTraces.indices {
            columns.runs.writeVarint(UInt64(runTraces[run] - previousTrace))
            previousTrace = runTraces[run]
            let offsets = runOffsets[run] + attributeColumns.runOffsets[run]
            for (column, offset) in offsets.enumerated() {
                columns.runs.writeVarint(UInt64(offset - previousOffsets[column]))
            }
            previousOffsets = offsets
        }
        let info = BlockInfo(
            firstTraceID: batch.traceIDs[order[rows.lowerBound]], lastTraceID: batch.traceIDs[order[rows.upperBound - 1]],
            spanCount: rows.count, traceCount: traces.count, minStartTime: blockStart,
            maxEndTime: blockEnd, timeUnit: timeUnit)
        return (info, columns.chunks() + attributeColumns.dedicated)
    }

    /// One block's column writers.
    private struct BlockColumns {
        var traceID = ByteWriter(), traceSpans = ByteWriter(), traceStart = ByteWriter(), runs = ByteWriter()
        var spanID = ByteWriter(), parent = ByteWriter(), parentExternal = ByteWriter()
        var start = ByteWriter(), duration = ByteWriter(), name = ByteWriter(), kindStatus = ByteWriter()
        var statusMessage = ByteWriter(), traceState = ByteWriter(), flags = ByteWriter()
        var resource = ByteWriter(), scope = ByteWriter(), extras = ByteWriter()
        var layout = ByteWriter(), fallback = ByteWriter(), generic = ByteWriter()

        /// The columns in file order (`Column.allCases`).
        func chunks() -> [(name: String, bytes: [UInt8])] {
            Column.allCases.map { ($0.rawValue, self[$0].bytes) }
        }

        /// Bytes written so far to each of `Column.rowColumns` but the attribute ones,
        /// which `AttributeDictionary.encode` writes.
        func rowColumnSizes() -> [Int] {
            Column.rowColumns.filter { !$0.rawValue.hasPrefix("attr.") }.map { self[$0].count }
        }

        subscript(column: Column) -> ByteWriter {
            let writer: ByteWriter
            switch column {
            case .traceID: writer = traceID
            case .traceSpans: writer = traceSpans
            case .traceStart: writer = traceStart
            case .runs: writer = runs
            case .spanID: writer = spanID
            case .parent: writer = parent
            case .parentExternal: writer = parentExternal
            case .start: writer = start
            case .duration: writer = duration
            case .name: writer = name
            case .kindStatus: writer = kindStatus
            case .statusMessage: writer = statusMessage
            case .traceState: writer = traceState
            case .flags: writer = flags
            case .resource: writer = resource
            case .scope: writer = scope
            case .extras: writer = extras
            case .layout: writer = layout
            case .fallback: writer = fallback
            case .generic: writer = generic
            }
            return writer
        }
    }

    /// The rows of the trace being written: where each span id first appears, and the
    /// end of each row's latest child so far.
    private struct TraceRows {
        /// Traces up to this many spans are searched linearly.
        static let linearLimit = 64
        private var spanIDs: [SpanID] = []
        private var firstIndex: [SpanID: Int] = [:]
        var lastChildEnd: [UInt64?] = []
        /// The earliest start in the trace.
        private(set) var start: UInt64 = 0

        mutating func reset(batch: SpanBatch, order: [Int], range: Range<Int>) {
            spanIDs.removeAll(keepingCapacity: true)
            firstIndex.removeAll(keepingCapacity: true)
            lastChildEnd = [UInt64?](repeating: nil, count: range.count)
            start = .max
            for (local, position) in range.enumerated() {
                let row = order[position]
                start = min(start, batch.startTimes[row])
                spanIDs.append(batch.spanIDs[row])
                if range.count > Self.linearLimit && firstIndex[batch.spanIDs[row]] == nil { firstIndex[batch.spanIDs[row]] = local }
            }
        }

        /// The first row in the trace with span id `id`.
        func local(of id: SpanID) -> Int? {
            spanIDs.count > Self.linearLimit ? firstIndex[id] : spanIDs.firstIndex(of: id)
        }
    }

    static func zigzag(_ value: Int64) -> UInt64 {
        UInt64(bitPattern: (value << 1) ^ (value >> 63))
    }

    static func writeBigEndian(_ value: UInt64, to writer: inout ByteWriter) {
        withUnsafeBytes(of: value.bigEndian) { writer.write(raw: $0) }
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
    /// Where the trace state's bytes are, when it is set and not empty.
    var traceState: Range<Int>?
    var flags: UInt32 = 0
    var rest: [UInt8] = []

    init(_ bytes: UnsafeBufferPointer<UInt8>) {
        guard !bytes.isEmpty else { return }
        var reader = WireReader(bytes, 0..<bytes.count)
        var seenTraceState = false
        var seenFlags = false
        while !reader.isAtEnd {
            let fieldStart = reader.position
            guard let (field, wireType) = reader.tag() else { self = ExtrasSplit(keeping: bytes); return }
            var keep = true
            switch (field, wireType) {
            case (3, 2) where !seenTraceState:
                guard let value = reader.lengthDelimited() else { self = ExtrasSplit(keeping: bytes); return }
                seenTraceState = true
                if !value.isEmpty {
                    traceState = value
                    keep = false
                }
            case (16, 5) where !seenFlags:
                guard let value = reader.fixed32() else { self = ExtrasSplit(keeping: bytes); return }
                seenFlags = true
                if value != 0 {
                    flags = value
                    keep = false
                }
            default:
                guard reader.skip(wireType: wireType) else { self = ExtrasSplit(keeping: bytes); return }
            }
            if keep { rest += bytes[fieldStart..<reader.position] }
        }
    }

    /// Keeps malformed or unusual bytes whole.
    private init(keeping bytes: UnsafeBufferPointer<UInt8>) {
        rest = Array(bytes)
    }
}

/// The segment-wide half of attribute storage — keys, which (key, type) pairs get a
/// column of their own, and layouts (which keys a span has, in order) — and the
/// per-block value columns.
struct AttributeDictionary {
    private struct Pair: Hashable {
        var key: Int
        var type: AttributeType

        /// The pair as one number: key index × 8 + type.
        var code: Int { key << 3 | Int(type.rawValue) }
    }

    private var keys = SequenceInterner<UInt8>()
    private var chosen: [Pair] = []
    /// The dedicated column of each pair by `Pair.code`; -1 for the generic column.
    private var columnOf: [Int16] = []
    private var layouts = SequenceInterner<UInt64>()
    /// Scratch space reused for every row.
    private var scanned: [RawAttribute] = []
    private var shape: [UInt64] = []
    /// The layout of the last row written of each resource and kind
    /// (`resource << 3 | kind`), -1 for none: the spans one proxy reports of one kind
    /// list the same keys in the same order, so a row is first checked against it,
    /// which compares its keys rather than hashing them and then its layout.
    private var lastLayouts: [Int] = []

    /// Rows sampled to choose the dedicated columns.
    static let sampleRows = 8192
    /// How many rows ahead of the one being encoded its attributes are asked for.
    static let prefetchDistance = 8

    /// Chooses the dedicated columns: the most frequent (key, type) pairs among a
    /// sample of rows spread over the batch.
    init(batch: SpanBatch, order: [Int]) {
        var frequency: [Pair: Int] = [:]
        let step = max(1, order.count / Self.sampleRows)
        let sample = stride(from: 0, to: order.count, by: step).map { order[$0] }
        for (position, row) in sample.enumerated() {
            // The sample is spread over the batch: its rows are asked for ahead, as in `encode`.
            Self.prefetchAttributes(of: sample, ahead: position, in: batch)
            batch.attributes.withUnsafeBytes(ofRow: row) { bytes in
                guard AttributeCoding.scan(bytes, into: &scanned) else { return }
                for attribute in scanned where attribute.type != .absent {
                    let key = keys.index(of: UnsafeBufferPointer(rebasing: bytes[attribute.key]))
                    frequency[Pair(key: key, type: attribute.type), default: 0] += 1
                }
            }
        }
        chosen = frequency.sorted { ($0.value, -$0.key.key) > ($1.value, -$1.key.key) }
            .prefix(SegmentFormatV2.maxDedicatedAttributes).map(\.key)
        for (index, pair) in chosen.enumerated() {
            if columnOf.count <= pair.code { columnOf += [Int16](repeating: -1, count: pair.code + 1 - columnOf.count) }
            columnOf[pair.code] = Int16(index)
        }
    }

    /// Encodes the attributes of `rows` (batch row indices, in block order). At each
    /// of `runStarts` (positions in `rows`, ascending) every value list starts empty;
    /// `runOffsets` holds, per run start, the offset there in the layout, fallback,
    /// generic and each dedicated column.
    mutating func encode(rows: [Int], runStarts: [Int], of batch: SpanBatch) -> (
        layout: ByteWriter, fallback: ByteWriter, generic: ByteWriter, dedicated: [(name: String, bytes: [UInt8])],
        runOffsets: [[Int]]
    ) {
        var layout = ByteWriter(capacity: rows.count)
        var fallback = ByteWriter()
        var generic = ByteWriter()
        // Every column's value lists, in memory freed when the block is encoded.
        let lists = ListArena()
        defer { withExtendedLifetime(lists) {} }
        var columns = chosen.map { DedicatedColumn(type: $0.type, in: lists) }
        var runOffsets: [[Int]] = []
        // A run's values wait here, by column, until its rows are scanned; then each
        // column codes its values in one go, its lists in cache throughout, rather
        // than every row visiting every column's lists in turn.
        var pending = [[PendingValue]](repeating: [], count: chosen.count)
        // The column's whole buffer is borrowed once: a closure per row would copy the
        // batch into its context, and each dedicated column is reached through one pointer.
        batch.attributes.bytes.withUnsafeBufferPointer { stored in
            columns.withUnsafeMutableBufferPointer { columns in
                pending.withUnsafeMutableBufferPointer { pending in
                    func codePending() {
                        for column in columns.indices {
                            columns[column].write(pending[column], from: stored)
                            pending[column].removeAll(keepingCapacity: true)
                        }
                    }
                    for (position, row) in rows.enumerated() {
                        // Rows are visited in trace order, not in the order they arrived.
                        Self.prefetchAttributes(of: rows, ahead: position, in: batch)
                        if runOffsets.count < runStarts.count && runStarts[runOffsets.count] == position {
                            codePending()
                            runOffsets.append([layout.count, fallback.count, generic.count] + columns.map(\.values.count))
                            for column in columns.indices { columns[column].restart() }
                        }
                        let range = batch.attributes.range(of: row)
                        let bytes = UnsafeBufferPointer(rebasing: stored[range])
                        if bytes.isEmpty {
                            layout.writeVarint(0)
                            continue
                        }
                        guard AttributeCoding.scan(bytes, into: &scanned) else {
                            layout.writeVarint(1)
                            fallback.write(lengthPrefixed: bytes)
                            continue
                        }
                        let index = layoutIndex(of: bytes, memo: Int(batch.resourceIndices[row]) << 3 | Int(batch.kinds[row].rawValue))
                        layouts.withElements(of: index) { codes in
                            for (position, attribute) in scanned.enumerated() {
                                let code = Int(codes[position])
                                let column = code < columnOf.count ? Int(columnOf[code]) : -1
                                guard column >= 0 else {
                                    Self.writePlain(attribute, bytes, to: &generic)
                                    continue
                                }
                                let value = range.lowerBound + attribute.value.lowerBound..<range.lowerBound + attribute.value.upperBound
                                pending[column].append(PendingValue(value: value, scalar: attribute.scalar))
                            }
                        }
                        layout.writeVarint(UInt64(index + 2))
                    }
                    codePending()
                }
            }
        }
        let dedicated = chosen.enumerated().map { index, pair in
            (SegmentFormatV2.attributeColumnName(key: Array(keys[pair.key]), type: pair.type), columns[index].values.bytes)
        }
        return (layout, fallback, generic, dedicated, runOffsets)
    }

    /// Asks for where the attributes of the row `2 × prefetchDistance` visits past
    /// `position` in `rows` lie, and for the bytes of the row `prefetchDistance` past
    /// it (where they lie was asked for earlier), so both are in cache when visited.
    private static func prefetchAttributes(of rows: [Int], ahead position: Int, in batch: SpanBatch) {
        if position + 2 * prefetchDistance < rows.count { batch.attributes.prefetchEnd(of: rows[position + 2 * prefetchDistance]) }
        if position + prefetchDistance < rows.count { batch.attributes.prefetch(row: rows[position + prefetchDistance]) }
    }

    /// The layout of the attributes just scanned from `bytes`, interned if new. The
    /// last row of the same resource and kind (`memo`) is tried first.
    private mutating func layoutIndex(of bytes: UnsafeBufferPointer<UInt8>, memo: Int) -> Int {
        if memo >= lastLayouts.count { lastLayouts += repeatElement(-1, count: memo + 1 - lastLayouts.count) }
        let last = lastLayouts[memo]
        if last >= 0 && scannedKeys(match: last, bytes) { return last }
        shape.removeAll(keepingCapacity: true)
        for attribute in scanned {
            let key = keys.index(of: UnsafeBufferPointer(rebasing: bytes[attribute.key]))
            shape.append(UInt64(key << 3 | Int(attribute.type.rawValue)))
        }
        let index = shape.withUnsafeBufferPointer { layouts.index(of: $0) }
        lastLayouts[memo] = index
        return index
    }

    /// A value of a dedicated column waiting to be coded: where it is in the batch's
    /// attribute bytes, or the number it is.
    private struct PendingValue {
        var value: Range<Int>
        var scalar: UInt64
    }

    /// One dedicated column's values and, for a string or an integer column, the
    /// lists its values are coded against.
    private struct DedicatedColumn {
        let type: AttributeType
        var values = ByteWriter()
        var strings: StringValueWriter?
        var integers: IntegerValueWriter?

        init(type: AttributeType, in lists: ListArena) {
            self.type = type
            strings = type == .string ? StringValueWriter(in: lists) : nil
            integers = type == .int ? IntegerValueWriter(in: lists) : nil
        }

        mutating func restart() {
            strings?.restart()
            integers?.restart()
        }

        /// Codes `pending`, in order; `stored` is the batch's attribute bytes.
        mutating func write(_ pending: [PendingValue], from stored: UnsafeBufferPointer<UInt8>) {
            switch type {
            case .string:
                for value in pending { strings!.write(UnsafeBufferPointer(rebasing: stored[value.value]), to: &values) }
            case .int:
                for value in pending { integers!.write(value.scalar, to: &values) }
            default:
                for value in pending {
                    AttributeDictionary.writePlain(RawAttribute(key: 0..<0, type: type, value: value.value, scalar: value.scalar), stored, to: &values)
                }
            }
        }
    }

    /// Whether the attributes just scanned from `bytes` have exactly the keys and
    /// types of layout `index`, in its order.
    private func scannedKeys(match index: Int, _ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        layouts.withElements(of: index) { codes in
            guard codes.count == scanned.count else { return false }
            for (position, attribute) in scanned.enumerated() {
                let code = codes[position]
                guard code & 7 == UInt64(attribute.type.rawValue),
                      keys.holds(Int(code >> 3), exactly: UnsafeBufferPointer(rebasing: bytes[attribute.key]))
                else { return false }
            }
            return true
        }
    }

    /// Keys, dedicated pairs and layouts, as the `dict.attributes` chunk.
    func serialized() -> [UInt8] {
        var writer = ByteWriter()
        writer.writeVarint(UInt64(keys.count))
        for key in 0..<keys.count { writer.write(lengthPrefixed: keys[key]) }
        writer.writeVarint(UInt64(chosen.count))
        for pair in chosen {
            writer.writeVarint(UInt64(pair.key))
            writer.write(pair.type.rawValue)
        }
        writer.writeVarint(UInt64(layouts.count))
        for index in 0..<layouts.count {
            let shape = layouts[index]
            writer.writeVarint(UInt64(shape.count))
            for entry in shape { writer.writeVarint(entry) }
        }
        return writer.bytes
    }

    /// Writes one value plainly: strings as byte strings, integers as zig-zag
    /// varints, doubles as 8 bytes, booleans as a byte, other values as protobuf
    /// `AnyValue` bytes.
    fileprivate static func writePlain(_ attribute: RawAttribute, _ bytes: UnsafeBufferPointer<UInt8>, to writer: inout ByteWriter) {
        switch attribute.type {
        case .absent:
            break
        case .string, .other:
            writer.write(lengthPrefixed: UnsafeBufferPointer(rebasing: bytes[attribute.value]))
        case .bool:
            writer.write(UInt8(attribute.scalar))
        case .int:
            writer.writeVarint(SegmentFormatV2.zigzag(Int64(bitPattern: attribute.scalar)))
        case .double:
            writer.write(attribute.scalar)
        }
    }
}
