import MeshCore

/// What a search filter reads of each span of one block — its trace, kind, status,
/// times, name and resource — decoded from those columns alone: ids, attributes,
/// events and the rest stay compressed.
public struct SpanFacts: Sendable {
    /// The block's trace ids, in order.
    public var traceIDs: [TraceID] = []
    /// Per row, its trace: an index into `traceIDs`.
    public var traces: [Int32] = []
    public var kinds: [SpanKind] = []
    public var statusCodes: [StatusCode] = []
    /// Nanoseconds since the epoch.
    public var startTimes: [UInt64] = []
    public var endTimes: [UInt64] = []
    /// Per row, an index into the segment's span names (`SegmentReader.factDictionaries`).
    public var names: [Int32] = []
    /// Per row, an index into the segment's resources.
    public var resources: [Int32] = []

    public var count: Int { kinds.count }
}

/// What a block holds, per resource and status code: enough to tell that no span of
/// it can match a filter on service, status, kind or duration (the footer's block
/// index gives its time range: traces are spread over blocks by id, so each block
/// spans about its segment's whole time range and a narrower one would say little). Version 4
/// segments store every block's summary (`block.summaries`); for earlier versions a
/// reader builds one from each block's facts as it reads them.
public struct BlockSummary: Sendable, Equatable {
    public struct Group: Sendable, Equatable {
        /// Index into the segment's resources.
        public var resource: Int32
        public var status: StatusCode
        /// Bit `kind.rawValue` set for each kind present.
        public var kinds: UInt8 = 0
        /// Nanoseconds: the shortest and longest span (end minus start).
        public var minDuration = UInt64.max
        public var maxDuration: UInt64 = 0
    }

    /// In order of each group's first span.
    public var groups: [Group] = []
    private var index: [Int32: Int] = [:]

    public init() {}

    public init(_ facts: SpanFacts) {
        for row in 0..<facts.count {
            add(resource: facts.resources[row], status: facts.statusCodes[row], kind: facts.kinds[row],
                duration: facts.endTimes[row] &- facts.startTimes[row])
        }
    }

    /// Counts one span in.
    public mutating func add(resource: Int32, status: StatusCode, kind: SpanKind, duration: UInt64) {
        let key = resource << 2 | Int32(status.rawValue)
        let position: Int
        if let known = index[key] {
            position = known
        } else {
            position = groups.count
            index[key] = position
            groups.append(Group(resource: resource, status: status))
        }
        groups[position].kinds |= 1 << kind.rawValue
        groups[position].minDuration = min(groups[position].minDuration, duration)
        groups[position].maxDuration = max(groups[position].maxDuration, duration)
    }

    public static func == (lhs: BlockSummary, rhs: BlockSummary) -> Bool { lhs.groups == rhs.groups }

    /// Appends the summary as `block.summaries` codes it (storage/FORMAT.md): durations
    /// in the block's time unit.
    func write(to writer: inout ByteWriter, block: BlockInfo) {
        let unit = block.timeUnit
        writer.writeVarint(UInt64(groups.count))
        for group in groups {
            writer.writeVarint(UInt64(group.resource))
            writer.write(group.status.rawValue)
            writer.write(group.kinds)
            writer.writeVarint(group.minDuration / unit)
            writer.writeVarint((group.maxDuration &- group.minDuration) / unit)
        }
    }

    /// Reads one block's summary; `resources` is how many the segment has.
    init(from reader: inout ByteReader, block: BlockInfo, resources: Int) throws(ByteReaderError) {
        let unit = block.timeUnit
        let count = try reader.readCount(limit: reader.remaining)
        for _ in 0..<count {
            let resourceOffset = reader.offset
            let resource = try reader.readVarint()
            guard resource < UInt64(resources) else { throw .invalidLength(offset: resourceOffset, length: resource) }
            let statusOffset = reader.offset
            let statusCode = try reader.readUInt8()
            guard let status = StatusCode(rawValue: statusCode) else { throw .invalidLength(offset: statusOffset, length: UInt64(statusCode)) }
            var group = Group(resource: Int32(resource), status: status)
            group.kinds = try reader.readUInt8()
            group.minDuration = (try reader.readVarint()) &* unit
            group.maxDuration = group.minDuration &+ (try reader.readVarint()) &* unit
            let key = group.resource << 2 | Int32(status.rawValue)
            guard index[key] == nil else { throw .invalidLength(offset: resourceOffset, length: resource) }
            index[key] = groups.count
            groups.append(group)
        }
    }
}

extension SegmentReader {
    /// Every block's summary, in block order: those the segment stores (version 4 and
    /// later), else those left by `facts(block:)` reads (nil for blocks not read yet).
    public func summaries() throws(StoreError) -> [BlockSummary?] {
        if footer.version >= SegmentFormatV2.summariesVersion {
            if let stored = summaryCache.stored.withLock({ $0 }) { return stored }
            let name = SegmentFormatV2.summariesChunk
            let bytes = try columnBytes(named: name)
            let resources = try v2Dictionaries().resources.count
            var reader = ByteReader(bytes)
            var stored: [BlockSummary?] = []
            stored.reserveCapacity(footer.blocks.count)
            do {
                for block in footer.blocks {
                    stored.append(try BlockSummary(from: &reader, block: block, resources: resources))
                }
                guard reader.remaining == 0 else { throw ByteReaderError.invalidLength(offset: reader.offset, length: UInt64(reader.remaining)) }
            } catch {
                throw .corruptColumn(file: path, column: name, reason: "\(error)")
            }
            summaryCache.stored.withLock { $0 = stored }
            return stored
        }
        let read = summaryCache.value.withLock { $0 }
        return footer.blocks.indices.map { read[$0] }
    }

    /// Whether `facts(block:)` can read this segment (version 2 and later).
    public var hasSpanFacts: Bool { footer.version != SegmentFormatV1.version }

    /// The span names and resources `SpanFacts` rows point into.
    public func factDictionaries() throws(StoreError) -> (names: [String], resources: [ResourceEntry]) {
        let dictionaries = try v2Dictionaries()
        return (dictionaries.names, dictionaries.resources)
    }

    /// The facts of every span of block `block`.
    public func facts(block: Int) throws(StoreError) -> SpanFacts {
        typealias Column = SegmentFormatV2.Column
        let needed: Set<String> = [Column.traceID, .traceSpans, .traceStart, .parent, .kindStatus, .start, .duration, .name, .resource]
            .reduce(into: []) { $0.insert($1.rawValue) }
        let chunks = try columns(of: try readBlock(block)) { needed.contains($0) }
        let dictionaries = try v2Dictionaries()
        let info = footer.blocks[block]
        let rows = info.spanCount
        var current = Column.traceID.rawValue
        func column(_ column: Column) throws(StoreError) -> ByteReader {
            current = column.rawValue
            guard let bytes = chunks[column.rawValue] else {
                throw .corruptColumn(file: path, column: SegmentFormatV2.chunkName(block: block, column: column.rawValue), reason: "missing")
            }
            return ByteReader(bytes)
        }
        var facts = SpanFacts()
        do {
            var traceIDs = try column(.traceID)
            guard traceIDs.remaining == info.traceCount * 16 else { throw ByteReaderError.invalidLength(offset: 0, length: UInt64(traceIDs.remaining)) }
            var spanCounts = try column(.traceSpans)
            var traceStarts = try column(.traceStart)
            var parent = try column(.parent)
            var kindStatus = try column(.kindStatus)
            var starts = try column(.start)
            var durations = try column(.duration)
            var names = try column(.name)
            var resources = try column(.resource)
            guard kindStatus.remaining == rows else { throw ByteReaderError.invalidLength(offset: 0, length: UInt64(kindStatus.remaining)) }
            facts.traceIDs.reserveCapacity(info.traceCount)
            facts.traces.reserveCapacity(rows)
            facts.kinds.reserveCapacity(rows)
            facts.statusCodes.reserveCapacity(rows)
            facts.startTimes.reserveCapacity(rows)
            facts.endTimes.reserveCapacity(rows)
            facts.names.reserveCapacity(rows)
            facts.resources.reserveCapacity(rows)
            let unit = info.timeUnit
            var lastChildEnd: [UInt64?] = []
            var row = 0
            for traceIndex in 0..<info.traceCount {
                current = Column.traceSpans.rawValue
                let count = try spanCounts.readCount(limit: rows - row)
                current = Column.traceStart.rawValue
                let traceStart = info.minStartTime &+ (try traceStarts.readVarint()) &* unit
                facts.traceIDs.append(TraceID(high: try traceIDs.readUInt64().byteSwapped, low: try traceIDs.readUInt64().byteSwapped))
                let first = facts.count
                lastChildEnd.removeAll(keepingCapacity: true)
                lastChildEnd.append(contentsOf: repeatElement(nil, count: count))
                for local in 0..<count {
                    current = Column.parent.rawValue
                    let parentCode = try parent.readVarint()
                    var timingParent: Int?
                    if parentCode >= 2 {
                        let target = Int64(local) &- SegmentDecoderV2.unzigzag(parentCode - 2)
                        guard target >= 0, target < Int64(count), target != Int64(local) else {
                            throw ByteReaderError.invalidLength(offset: parent.offset, length: parentCode)
                        }
                        if target < Int64(local) { timingParent = first + Int(target) }
                    }
                    current = Column.kindStatus.rawValue
                    let code = try kindStatus.readUInt8()
                    let kind = SpanKind(rawValue: code & 7) ?? .unspecified
                    current = Column.start.rawValue
                    let base = timingParent.map { lastChildEnd[$0 - first] ?? facts.startTimes[$0] } ?? traceStart
                    let start = base &+ UInt64(bitPattern: SegmentDecoderV2.unzigzag(try starts.readVarint()) &* Int64(unit))
                    current = Column.duration.rawValue
                    var duration = SegmentDecoderV2.unzigzag(try durations.readVarint()) &* Int64(unit)
                    if let timingParent, kind == .server, facts.kinds[timingParent] == .client {
                        duration = duration &+ Int64(bitPattern: facts.endTimes[timingParent] &- facts.startTimes[timingParent])
                    }
                    let end = start &+ UInt64(bitPattern: duration)
                    if let timingParent { lastChildEnd[timingParent - first] = end }
                    current = Column.name.rawValue
                    let nameCode = try names.readCount(limit: dictionaries.names.count)
                    guard nameCode > 0 || timingParent != nil else { throw ByteReaderError.invalidLength(offset: names.offset, length: 0) }
                    current = Column.resource.rawValue
                    let resourceCode = try resources.readCount(limit: dictionaries.resources.count)
                    guard resourceCode > 0 || timingParent != nil else { throw ByteReaderError.invalidLength(offset: resources.offset, length: 0) }
                    facts.traces.append(Int32(traceIndex))
                    facts.kinds.append(kind)
                    facts.statusCodes.append(StatusCode(rawValue: (code >> 3) & 3) ?? .unset)
                    facts.startTimes.append(start)
                    facts.endTimes.append(end)
                    facts.names.append(nameCode == 0 ? facts.names[timingParent!] : Int32(nameCode - 1))
                    facts.resources.append(resourceCode == 0 ? facts.resources[timingParent!] : Int32(resourceCode - 1))
                }
                row += count
            }
            guard row == rows else { throw ByteReaderError.invalidLength(offset: 0, length: UInt64(row)) }
            if footer.version < SegmentFormatV2.summariesVersion {
                let summary = BlockSummary(facts)
                summaryCache.value.withLock { $0[block] = summary }
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw .corruptColumn(file: path, column: SegmentFormatV2.chunkName(block: block, column: current), reason: "\(error)")
        }
        return facts
    }
}
