import MeshCore

/// The segment-wide dictionaries of a v2 segment, read once per segment.
struct DictionariesV2: Sendable {
    var names: [String] = []
    var resources: [ResourceEntry] = []
    var scopes: [[UInt8]] = []
    var keys: [[UInt8]] = []
    /// (key, type) pairs with a column of their own, by column position.
    var dedicated: [(key: Int, type: AttributeType)] = []
    var shapes: [[(key: Int, type: AttributeType)]] = []
    /// A batch with no rows whose resource and scope tables are the segment's, for
    /// decoded blocks to start from without interning the tables again.
    var emptyBatch = SpanBatch()

    init(segment: SegmentReader) throws(StoreError) {
        typealias Dictionary = SegmentFormatV2.Dictionary
        var current = Dictionary.names
        do {
            var reader = ByteReader(try segment.columnBytes(named: Dictionary.names.rawValue))
            for _ in 0..<(try reader.readCount(limit: reader.remaining)) { names.append(try reader.readString()) }

            current = .resources
            reader = ByteReader(try segment.columnBytes(named: Dictionary.resources.rawValue))
            for _ in 0..<(try reader.readCount(limit: reader.remaining)) {
                let service = try reader.readString()
                resources.append(ResourceEntry(serviceName: service, encoded: Array(try reader.readLengthPrefixed())))
            }

            current = .scopes
            reader = ByteReader(try segment.columnBytes(named: Dictionary.scopes.rawValue))
            for _ in 0..<(try reader.readCount(limit: reader.remaining)) { scopes.append(Array(try reader.readLengthPrefixed())) }

            current = .attributes
            reader = ByteReader(try segment.columnBytes(named: Dictionary.attributes.rawValue))
            for _ in 0..<(try reader.readCount(limit: reader.remaining)) { keys.append(Array(try reader.readLengthPrefixed())) }
            for _ in 0..<(try reader.readCount(limit: reader.remaining)) {
                let key = try reader.readIndex(below: keys.count)
                guard let type = AttributeType(rawValue: try reader.readUInt8()) else {
                    throw ByteReaderError.invalidLength(offset: reader.offset, length: 0)
                }
                dedicated.append((key, type))
            }
            for _ in 0..<(try reader.readCount(limit: reader.remaining)) {
                var shape: [(key: Int, type: AttributeType)] = []
                for _ in 0..<(try reader.readCount(limit: reader.remaining)) {
                    let entry = try reader.readVarint()
                    guard let type = AttributeType(rawValue: UInt8(entry & 7)), entry >> 3 < UInt64(keys.count) else {
                        throw ByteReaderError.invalidLength(offset: reader.offset, length: entry)
                    }
                    shape.append((Int(entry >> 3), type))
                }
                shapes.append(shape)
            }
            for resource in resources { _ = emptyBatch.intern(resource: resource) }
            for scope in scopes { _ = emptyBatch.intern(scope: scope) }
        } catch let error as StoreError {
            throw error
        } catch {
            throw .corruptColumn(file: segment.path, column: current.rawValue, reason: "\(error)")
        }
    }
}

/// Reads blocks of a v2 segment back into `SpanBatch`es.
struct SegmentDecoderV2 {
    let segment: SegmentReader
    let dictionaries: DictionariesV2

    private typealias Column = SegmentFormatV2.Column

    /// Decodes block `block`; only rows in `keep` (block-local row numbers) are
    /// materialized: rows before them are read past, rows after them are not read.
    /// `preloaded` are the block's columns when the caller has read them already.
    /// Without `attributes`, rows carry no attribute bytes (their HTTP status code is still read).
    func decode(block: Int, keep: Range<Int>? = nil, preloaded: [String: [UInt8]]? = nil, attributes wanted: Bool = true) throws(StoreError) -> SpanBatch {
        let info = segment.footer.blocks[block]
        let rows = info.spanCount
        let keep = keep ?? 0..<rows
        let chunks: [String: [UInt8]]
        if let preloaded { chunks = preloaded } else { chunks = try segment.blockColumns(block) }
        var current = Column.traceID.rawValue
        func column(_ column: Column) throws -> ByteReader {
            current = column.rawValue
            guard let bytes = chunks[column.rawValue] else {
                throw StoreError.corruptColumn(file: segment.path, column: SegmentFormatV2.chunkName(block: block, column: column.rawValue), reason: "missing")
            }
            return ByteReader(bytes)
        }
        do {
            let traceIDBytes = try column(.traceID)
            guard traceIDBytes.remaining == info.traceCount * 16 else { throw ByteReaderError.invalidLength(offset: 0, length: UInt64(traceIDBytes.remaining)) }
            var traceIDReader = traceIDBytes
            var spanCounts = try column(.traceSpans)
            var traceStarts = try column(.traceStart)
            var readers = try RowReaders { try column($0) }
            guard readers.spanID.remaining == rows * 8 else { throw ByteReaderError.invalidLength(offset: 0, length: UInt64(readers.spanID.remaining)) }
            guard readers.kindStatus.remaining == rows else { throw ByteReaderError.invalidLength(offset: 0, length: UInt64(readers.kindStatus.remaining)) }
            var attributes = try AttributeRowsDecoder(chunks: chunks, dictionaries: dictionaries, segment: segment, block: block)
            current = Column.runs.rawValue
            let runs = try RunTable(
                chunk: segment.footer.version >= SegmentFormatV2.runsVersion ? try column(.runs) : nil,
                traceCount: info.traceCount, columns: readers.offsets.count + attributes.offsets.count)
            // A lookup starts at the last run that begins at or before its first row: the
            // traces before that run are read in their trace columns only.
            let entry = keep.lowerBound == 0 ? 0 : try runs.run(containing: keep.lowerBound, spanCounts: spanCounts)
            var nextRun = entry == 0 ? 1 : entry

            var batch = dictionaries.emptyBatch
            batch.reserveCapacity(keep.count)
            let unit = info.timeUnit
            // Per trace: span ids, kinds, start and end times of its rows so far.
            var traceSpanIDs: [SpanID] = []
            var traceKinds: [SpanKind] = []
            var traceStartTimes: [UInt64] = []
            var traceEndTimes: [UInt64] = []
            var traceNames: [Int] = []
            var traceResources: [Int] = []
            var lastChildEnd: [UInt64?] = []

            var row = 0
            // Rows after the last kept one are never read: a lookup decodes only up to its trace.
            for traceIndex in 0..<info.traceCount where row < keep.upperBound {
                current = Column.traceSpans.rawValue
                let count = try spanCounts.readCount(limit: rows - row)
                current = Column.traceStart.rawValue
                let traceStart = info.minStartTime &+ (try traceStarts.readVarint()) &* unit
                let traceID = TraceID(high: try traceIDReader.readUInt64().byteSwapped, low: try traceIDReader.readUInt64().byteSwapped)
                if traceIndex < runs.firstTraces[entry] {
                    row += count
                    continue
                }
                if nextRun < runs.count && traceIndex == runs.firstTraces[nextRun] {
                    // A run starts: its values are coded afresh, from the offsets it records.
                    current = Column.runs.rawValue
                    let offsets = runs.offsets[nextRun]
                    guard nextRun == entry || readers.offsets + attributes.offsets == offsets else {
                        throw ByteReaderError.invalidLength(offset: nextRun, length: 0)
                    }
                    try readers.restart(at: offsets.prefix(readers.offsets.count))
                    try attributes.restart(at: offsets.dropFirst(readers.offsets.count))
                    nextRun += 1
                }
                if row + count <= keep.lowerBound {
                    // A trace before the kept rows: only the values later rows may refer back to are decoded.
                    current = Column.spanID.rawValue
                    _ = try readers.spanID.readRange(count: count * 8)
                    current = Column.parent.rawValue
                    for _ in 0..<count where try readers.parent.readVarint() == 1 {
                        current = Column.parentExternal.rawValue
                        _ = try readers.parentExternal.readRange(count: 8)
                    }
                    for _ in 0..<count {
                        current = Column.kindStatus.rawValue
                        let code = try readers.kindStatus.readUInt8()
                        current = Column.statusMessage.rawValue
                        if code & SegmentFormatV2.hasStatusMessage != 0 { _ = try readers.statusMessage.readLengthPrefixedRange() }
                        current = Column.extras.rawValue
                        if code & SegmentFormatV2.hasExtras != 0 { _ = try readers.extras.readLengthPrefixedRange() }
                        current = Column.traceState.rawValue
                        if code & SegmentFormatV2.hasTraceState != 0 { _ = try readers.traceStates.read(from: &readers.traceState) }
                        current = Column.layout.rawValue
                        _ = try attributes.next(materialize: false)
                    }
                    func readPast(_ column: Column, _ reader: inout ByteReader) throws {
                        current = column.rawValue
                        try reader.skipVarints(count)
                    }
                    try readPast(.start, &readers.start)
                    try readPast(.duration, &readers.duration)
                    try readPast(.name, &readers.name)
                    try readPast(.resource, &readers.resource)
                    try readPast(.scope, &readers.scope)
                    try readPast(.flags, &readers.flags)
                    row += count
                    continue
                }
                traceSpanIDs.removeAll(keepingCapacity: true)
                traceKinds.removeAll(keepingCapacity: true)
                traceStartTimes.removeAll(keepingCapacity: true)
                traceEndTimes.removeAll(keepingCapacity: true)
                traceNames.removeAll(keepingCapacity: true)
                traceResources.removeAll(keepingCapacity: true)
                lastChildEnd.removeAll(keepingCapacity: true)
                lastChildEnd.append(contentsOf: repeatElement(nil, count: count))
                var parentLocals: [Int?] = []
                var pendingRows: [SpanBatch.Row] = []
                let traceKept = keep.overlaps(row..<row + count)

                for local in 0..<count {
                    let spanID = SpanID(try readers.spanID.readUInt64().byteSwapped)
                    current = Column.parent.rawValue
                    let parentCode = try readers.parent.readVarint()
                    var parentID = SpanID.zero
                    var timingParent: Int?
                    var parentLocal: Int?
                    switch parentCode {
                    case 0:
                        break
                    case 1:
                        current = Column.parentExternal.rawValue
                        parentID = SpanID(try readers.parentExternal.readUInt64().byteSwapped)
                    default:
                        let target = Int64(local) &- SegmentDecoderV2.unzigzag(parentCode - 2)
                        guard target >= 0, target < Int64(count), target != Int64(local) else {
                            throw ByteReaderError.invalidLength(offset: readers.parent.offset, length: parentCode)
                        }
                        parentLocal = Int(target)
                        if target < Int64(local) { timingParent = Int(target) }
                    }
                    let code = try readers.kindStatus.readUInt8()
                    let kind = SpanKind(rawValue: code & 7) ?? .unspecified

                    current = Column.start.rawValue
                    let base = timingParent.map { lastChildEnd[$0] ?? traceStartTimes[$0] } ?? traceStart
                    let start = base &+ UInt64(bitPattern: SegmentDecoderV2.unzigzag(try readers.start.readVarint()) &* Int64(unit))
                    current = Column.duration.rawValue
                    var duration = SegmentDecoderV2.unzigzag(try readers.duration.readVarint()) &* Int64(unit)
                    if let timingParent, kind == .server, traceKinds[timingParent] == .client {
                        duration = duration &+ Int64(bitPattern: traceEndTimes[timingParent] &- traceStartTimes[timingParent])
                    }
                    let end = start &+ UInt64(bitPattern: duration)
                    if let timingParent { lastChildEnd[timingParent] = end }
                    traceSpanIDs.append(spanID)
                    traceKinds.append(kind)
                    traceStartTimes.append(start)
                    traceEndTimes.append(end)
                    parentLocals.append(parentLocal)

                    // 0 repeats the parent's name or resource; otherwise the dictionary index + 1.
                    current = Column.name.rawValue
                    let nameCode = try readers.name.readCount(limit: dictionaries.names.count)
                    guard nameCode > 0 || timingParent != nil else { throw ByteReaderError.invalidLength(offset: readers.name.offset, length: 0) }
                    let name = nameCode == 0 ? traceNames[timingParent!] : nameCode - 1
                    traceNames.append(name)
                    current = Column.resource.rawValue
                    let resourceCode = try readers.resource.readCount(limit: dictionaries.resources.count)
                    guard resourceCode > 0 || timingParent != nil else { throw ByteReaderError.invalidLength(offset: readers.resource.offset, length: 0) }
                    let resource = resourceCode == 0 ? traceResources[timingParent!] : resourceCode - 1
                    traceResources.append(resource)
                    current = Column.scope.rawValue
                    let scope = try readers.scope.readIndex(below: dictionaries.scopes.count)
                    current = Column.statusMessage.rawValue
                    let message = code & SegmentFormatV2.hasStatusMessage != 0 ? try readers.statusMessage.readLengthPrefixed() : []
                    current = Column.flags.rawValue
                    let flags = UInt32(truncatingIfNeeded: try readers.flags.readVarint())
                    current = Column.extras.rawValue
                    let storedExtras = code & SegmentFormatV2.hasExtras != 0 ? try readers.extras.readLengthPrefixed() : []
                    current = Column.traceState.rawValue
                    let traceState = code & SegmentFormatV2.hasTraceState != 0
                        ? try readers.traceStates.read(from: &readers.traceState).bytes(in: readers.traceState.buffer) : nil
                    current = Column.layout.rawValue
                    let materialize = keep.contains(row)
                    let (attributeBytes, httpCode) = try attributes.next(materialize: materialize && wanted)

                    if materialize {
                        var extras = Array(storedExtras)
                        if let traceState {
                            extras.append(0x1A)
                            AttributeCoding.appendVarint(UInt64(traceState.count), to: &extras)
                            extras += traceState
                        }
                        if flags != 0 {
                            extras += [0x85, 0x01]
                            for shift in stride(from: 0, to: 32, by: 8) { extras.append(UInt8(truncatingIfNeeded: flags >> UInt32(shift))) }
                        }
                        pendingRows.append(SpanBatch.Row(
                            traceID: traceID, spanID: spanID, parentSpanID: parentID,
                            name: dictionaries.names[name], kind: kind, startTime: start, endTime: end,
                            statusCode: StatusCode(rawValue: (code >> 3) & 3) ?? .unset,
                            statusMessage: String(decoding: message, as: UTF8.self), httpStatusCode: httpCode,
                            resourceIndex: UInt32(resource), scopeIndex: UInt32(scope),
                            attributes: attributeBytes, extras: extras))
                    } else if traceKept {
                        pendingRows.append(SpanBatch.Row.placeholder)
                    }
                    row += 1
                }
                for local in 0..<count where traceKept && keep.contains(row - count + local) {
                    var span = pendingRows[local]
                    if let parentLocal = parentLocals[local] { span.parentSpanID = traceSpanIDs[parentLocal] }
                    batch.append(span)
                }
            }
            guard row == rows || keep.upperBound < rows else { throw ByteReaderError.invalidLength(offset: 0, length: UInt64(row)) }
            return batch
        } catch let error as StoreError {
            throw error
        } catch {
            throw .corruptColumn(file: segment.path, column: SegmentFormatV2.chunkName(block: block, column: current), reason: "\(error)")
        }
    }

    /// Block-local row range of `traceID` within `block` of `segment`, if the block holds it.
    /// - Parameter chunks: the block's columns (`trace.id` and `trace.spans` at least).
    static func rows(of traceID: TraceID, block: Int, in segment: SegmentReader, chunks: [String: [UInt8]]) throws(StoreError) -> Range<Int>? {
        let info = segment.footer.blocks[block]
        guard let ids = chunks[Column.traceID.rawValue], ids.count == info.traceCount * 16,
              let countBytes = chunks[Column.traceSpans.rawValue] else {
            throw .corruptColumn(file: segment.path, column: SegmentFormatV2.chunkName(block: block, column: Column.traceID.rawValue), reason: "missing or wrong size")
        }
        var low = 0
        var high = info.traceCount
        while low < high {
            let middle = (low + high) / 2
            if TraceID(bytes: ids[middle * 16..<middle * 16 + 16])! < traceID { low = middle + 1 } else { high = middle }
        }
        guard low < info.traceCount, TraceID(bytes: ids[low * 16..<low * 16 + 16])! == traceID else { return nil }
        var counts = ByteReader(countBytes)
        do {
            var first = 0
            for _ in 0..<low { first += try counts.readCount(limit: info.spanCount) }
            return first..<first + (try counts.readCount(limit: info.spanCount - first))
        } catch {
            throw .corruptColumn(file: segment.path, column: SegmentFormatV2.chunkName(block: block, column: Column.traceSpans.rawValue), reason: "\(error)")
        }
    }

    static func unzigzag(_ value: UInt64) -> Int64 {
        Int64(bitPattern: value >> 1) ^ -Int64(bitPattern: value & 1)
    }
}

/// Where each run of a block starts: its first trace and its offset in every row
/// column (`Column.rowColumns`, then the dedicated attribute columns). Run 0 starts
/// at the block's first trace and at offset 0 everywhere; a version 2 block is one run.
private struct RunTable {
    private(set) var firstTraces = [0]
    private(set) var offsets: [[Int]]

    var count: Int { firstTraces.count }

    init(chunk: ByteReader?, traceCount: Int, columns: Int) throws(ByteReaderError) {
        offsets = [[Int](repeating: 0, count: columns)]
        guard var reader = chunk else { return }
        let runs = try reader.readCount(limit: max(0, traceCount - 1))
        for _ in 0..<runs {
            let step = try reader.readCount(limit: traceCount - 1 - firstTraces.last!)
            guard step > 0 else { throw .invalidLength(offset: reader.offset, length: 0) }
            firstTraces.append(firstTraces.last! + step)
            var run = offsets.last!
            for column in 0..<columns {
                let delta = try reader.readCount(limit: Int(Int32.max))
                run[column] += delta
            }
            offsets.append(run)
        }
        guard reader.isAtEnd else { throw .invalidLength(offset: reader.offset, length: UInt64(reader.remaining)) }
    }

    /// The last run whose first row is at or before `row`; `spanCounts` is the
    /// block's `trace.spans` column.
    func run(containing row: Int, spanCounts: ByteReader) throws(ByteReaderError) -> Int {
        guard count > 1 else { return 0 }
        var counts = spanCounts
        var first = 0
        var run = 0
        for trace in 0..<firstTraces.last! {
            if run + 1 < count && firstTraces[run + 1] == trace {
                guard first <= row else { return run }
                run += 1
            }
            first += try counts.readCount(limit: Int(Int32.max))
        }
        return first <= row ? run + 1 : run
    }
}

/// The readers of a block's row columns but the attribute ones, which
/// `AttributeRowsDecoder` reads.
private struct RowReaders {
    var spanID, parent, parentExternal, start, duration, name, kindStatus: ByteReader
    var statusMessage, traceState, flags, resource, scope, extras: ByteReader
    /// The move-to-front lists of `span.trace_state`.
    var traceStates = StringValueReader()

    typealias Column = SegmentFormatV2.Column
    private static let columns = Column.rowColumns.filter { !$0.rawValue.hasPrefix("attr.") }

    init(_ column: (Column) throws -> ByteReader) rethrows {
        spanID = try column(.spanID)
        parent = try column(.parent)
        parentExternal = try column(.parentExternal)
        start = try column(.start)
        duration = try column(.duration)
        name = try column(.name)
        kindStatus = try column(.kindStatus)
        statusMessage = try column(.statusMessage)
        traceState = try column(.traceState)
        flags = try column(.flags)
        resource = try column(.resource)
        scope = try column(.scope)
        extras = try column(.extras)
    }

    private static func path(_ column: Column) -> WritableKeyPath<RowReaders, ByteReader> {
        switch column {
        case .spanID: \.spanID
        case .parent: \.parent
        case .parentExternal: \.parentExternal
        case .start: \.start
        case .duration: \.duration
        case .name: \.name
        case .kindStatus: \.kindStatus
        case .statusMessage: \.statusMessage
        case .traceState: \.traceState
        case .flags: \.flags
        case .resource: \.resource
        case .scope: \.scope
        default: \.extras
        }
    }

    /// Where each reader is, in file order.
    var offsets: [Int] { Self.columns.map { self[keyPath: Self.path($0)].offset } }

    /// Starts a run at `offsets` (in file order).
    mutating func restart(at offsets: ArraySlice<Int>) throws(ByteReaderError) {
        for (column, offset) in zip(Self.columns, offsets) { try self[keyPath: Self.path(column)].move(to: offset) }
        traceStates.restart()
    }
}

extension SpanBatch.Row {
    /// A row that is read past and never stored.
    static let placeholder = SpanBatch.Row(
        traceID: .zero, spanID: .zero, parentSpanID: .zero, name: "", kind: .unspecified, startTime: 0, endTime: 0,
        statusCode: .unset, statusMessage: "", httpStatusCode: 0, resourceIndex: 0, scopeIndex: 0, attributes: [], extras: [])
}

/// Rebuilds each row's attributes (protobuf `KeyValueList` bytes) from a block's
/// layout codes and value columns, and derives the HTTP status code on the way.
struct AttributeRowsDecoder {
    private struct ValueColumn {
        var reader: ByteReader
        var strings = StringValueReader()
        var integers = IntegerValueReader()

        mutating func readString() throws(ByteReaderError) -> StoredString { try strings.read(from: &reader) }

        mutating func readInteger() throws(ByteReaderError) -> UInt64 { try integers.read(from: &reader) }
    }

    private let dictionaries: DictionariesV2
    private var layout: ByteReader
    private var fallback: ByteReader
    private var generic: ByteReader
    /// Dedicated value columns, in `dictionaries.dedicated` order.
    private var columns: [ValueColumn] = []
    /// Every layout's attributes, one after another: per attribute its key and type
    /// (`key << 3 | type`) and its column in `columns`, or -1 for the generic column.
    private var shapeEntries: [(code: Int, column: Int)] = []
    /// Where each layout's attributes start in `shapeEntries`; one more than there are layouts.
    private var shapeStarts: [Int] = [0]
    /// Per key index: whether it names the HTTP status code.
    private var statusKeys: [Bool] = []

    init(chunks: [String: [UInt8]], dictionaries: DictionariesV2, segment: SegmentReader, block: Int) throws(StoreError) {
        self.dictionaries = dictionaries
        func chunk(_ name: String) throws(StoreError) -> ByteReader {
            guard let bytes = chunks[name] else {
                throw .corruptColumn(file: segment.path, column: SegmentFormatV2.chunkName(block: block, column: name), reason: "missing")
            }
            return ByteReader(bytes)
        }
        layout = try chunk(SegmentFormatV2.Column.layout.rawValue)
        fallback = try chunk(SegmentFormatV2.Column.fallback.rawValue)
        generic = try chunk(SegmentFormatV2.Column.generic.rawValue)
        var position: [Int: Int] = [:]
        for (index, (key, type)) in dictionaries.dedicated.enumerated() {
            let name = SegmentFormatV2.attributeColumnName(key: dictionaries.keys[key], type: type)
            columns.append(ValueColumn(reader: try chunk(name)))
            position[key << 3 | Int(type.rawValue)] = index
        }
        for shape in dictionaries.shapes {
            for (key, type) in shape {
                let code = key << 3 | Int(type.rawValue)
                shapeEntries.append((code, position[code] ?? -1))
            }
            shapeStarts.append(shapeEntries.count)
        }
        statusKeys = dictionaries.keys.map { $0 == Array("http.response.status_code".utf8) || $0 == Array("http.status_code".utf8) }
    }

    /// Where the layout, fallback, generic and each dedicated column's reader is.
    var offsets: [Int] { [layout.offset, fallback.offset, generic.offset] + columns.map(\.reader.offset) }

    /// Starts a run at `offsets` (as `offsets` orders them): every value list is empty again.
    mutating func restart(at offsets: ArraySlice<Int>) throws(ByteReaderError) {
        var offsets = offsets.makeIterator()
        try layout.move(to: offsets.next() ?? 0)
        try fallback.move(to: offsets.next() ?? 0)
        try generic.move(to: offsets.next() ?? 0)
        for index in columns.indices {
            try columns[index].reader.move(to: offsets.next() ?? 0)
            columns[index].strings.restart()
            columns[index].integers.restart()
        }
    }

    /// The next row's attributes and HTTP status code (0 when absent); the bytes are
    /// built only when `materialize` is set.
    mutating func next(materialize: Bool) throws -> ([UInt8], UInt16) {
        let code = try layout.readCount(limit: dictionaries.shapes.count + 1)
        switch code {
        case 0:
            return ([], 0)
        case 1:
            let bytes = Array(try fallback.readLengthPrefixed())
            var httpCode: UInt16 = 0
            for attribute in AttributeCoding.scan(bytes) ?? [] where attribute.type == .int && httpCode == 0 {
                if attribute.key.elementsEqual("http.response.status_code".utf8) || attribute.key.elementsEqual("http.status_code".utf8) {
                    httpCode = Self.statusCode(attribute.scalar)
                }
            }
            return (bytes, httpCode)
        default:
            var bytes: [UInt8] = []
            var httpCode: UInt16 = 0
            let entries = shapeStarts[code - 2]..<shapeStarts[code - 1]
            try columns.withUnsafeMutableBufferPointer { columns throws in
                for (code, column) in shapeEntries[entries] {
                    let type = AttributeType(rawValue: UInt8(code & 7))!
                    var payload: ArraySlice<UInt8> = []
                    var scalar: UInt64 = 0
                    if column >= 0 {
                        switch type {
                        case .string:
                            let value = try columns[column].readString()
                            if materialize { payload = value.bytes(in: columns[column].reader.buffer) }
                        case .int:
                            scalar = try columns[column].readInteger()
                        default:
                            try Self.readPlain(type: type, from: &columns[column].reader, payload: &payload, scalar: &scalar)
                        }
                    } else {
                        try Self.readPlain(type: type, from: &generic, payload: &payload, scalar: &scalar)
                    }
                    if type == .int && httpCode == 0 && statusKeys[code >> 3] { httpCode = Self.statusCode(scalar) }
                    if materialize {
                        AttributeCoding.appendEntry(key: dictionaries.keys[code >> 3], type: type, bytes: payload, scalar: scalar, to: &bytes)
                    }
                }
            }
            return (bytes, httpCode)
        }
    }

    private static func statusCode(_ scalar: UInt64) -> UInt16 {
        let value = Int64(bitPattern: scalar)
        return (0...999).contains(value) ? UInt16(value) : 0
    }

    private static func readPlain(
        type: AttributeType, from reader: inout ByteReader, payload: inout ArraySlice<UInt8>, scalar: inout UInt64
    ) throws(ByteReaderError) {
        switch type {
        case .absent:
            break
        case .string, .other:
            payload = try reader.readLengthPrefixed()
        case .bool:
            scalar = UInt64(try reader.readUInt8())
        case .int:
            scalar = UInt64(bitPattern: SegmentDecoderV2.unzigzag(try reader.readVarint()))
        case .double:
            scalar = try reader.readUInt64()
        }
    }
}
