#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CCacheHints

/// The kind of a span, with OTLP's numbering.
public enum SpanKind: UInt8, Sendable, CaseIterable {
    case unspecified = 0
    case `internal` = 1
    case server = 2
    case client = 3
    case producer = 4
    case consumer = 5

    /// The lower-case name Jaeger and the CLI print (`server`, `client`, …).
    public var name: String {
        switch self {
        case .unspecified: return "unspecified"
        case .internal: return "internal"
        case .server: return "server"
        case .client: return "client"
        case .producer: return "producer"
        case .consumer: return "consumer"
        }
    }
}

/// The status of a span, with OTLP's numbering.
public enum StatusCode: UInt8, Sendable {
    case unset = 0
    case ok = 1
    case error = 2

    public var name: String {
        switch self {
        case .unset: return "UNSET"
        case .ok: return "OK"
        case .error: return "ERROR"
        }
    }
}

/// A resource (the pod or process that emitted spans) as the store keeps it.
public struct ResourceEntry: Hashable, Sendable {
    /// The resource's `service.name`, or `unknown_service` when it has none.
    public var serviceName: String { didSet { fingerprint = Self.fingerprint(serviceName, encoded) } }
    /// The OTLP `ResourceSpans` message with its resource and schema URL but no spans, protobuf-encoded.
    public var encoded: [UInt8] { didSet { fingerprint = Self.fingerprint(serviceName, encoded) } }
    /// A hash of both, made once: a batch that interns a resource per span it takes
    /// from another (a sampler's kept spans, say) hashes a word, not the resource's bytes.
    private var fingerprint: UInt64

    public init(serviceName: String, encoded: [UInt8]) {
        self.serviceName = serviceName
        self.encoded = encoded
        fingerprint = Self.fingerprint(serviceName, encoded)
    }

    private static func fingerprint(_ serviceName: String, _ encoded: [UInt8]) -> UInt64 {
        var name = serviceName
        let nameHash = name.withUTF8 { byteHash(UnsafeRawBufferPointer($0)) }
        return encoded.withUnsafeBytes { byteHash($0, seed: nameHash) }
    }

    public static func == (lhs: ResourceEntry, rhs: ResourceEntry) -> Bool {
        lhs.fingerprint == rhs.fingerprint && sameBytes(lhs.encoded, rhs.encoded) && lhs.serviceName == rhs.serviceName
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(fingerprint)
    }
}

/// Whether two byte arrays are equal, compared with `memcmp`: the same resource or
/// scope decoded from two requests is two arrays, which `==` would compare byte by byte.
func sameBytes(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
    guard lhs.count == rhs.count else { return false }
    return lhs.withUnsafeBytes { left in
        rhs.withUnsafeBytes { right in
            left.count == 0 || left.baseAddress == right.baseAddress || memcmp(left.baseAddress!, right.baseAddress!, left.count) == 0
        }
    }
}

/// A scope's bytes as a table key: hashed once, in words (an array of bytes as a
/// key is hashed byte by byte, at each lookup).
private struct ScopeKey: Hashable {
    let bytes: [UInt8]
    let hash: UInt64

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
        hash = bytes.withUnsafeBytes { byteHash($0) }
    }

    static func == (lhs: ScopeKey, rhs: ScopeKey) -> Bool { lhs.hash == rhs.hash && sameBytes(lhs.bytes, rhs.bytes) }

    func hash(into hasher: inout Hasher) { hasher.combine(hash) }
}

/// Spans held column by column: the unit that flows from the receivers into the
/// head block, and from segments out to queries.
///
/// Every column has one element per span. Resources and instrumentation scopes are
/// interned in tables that rows point into.
public struct SpanBatch: Sendable {
    public var traceIDs: [TraceID] = []
    public var spanIDs: [SpanID] = []
    /// `.zero` for a root span.
    public var parentSpanIDs: [SpanID] = []
    public var names: [String] = []
    public var kinds: [SpanKind] = []
    /// Nanoseconds since the Unix epoch.
    public var startTimes: [UInt64] = []
    /// Nanoseconds since the Unix epoch.
    public var endTimes: [UInt64] = []
    public var statusCodes: [StatusCode] = []
    public var statusMessages: [String] = []
    /// `http.response.status_code` of the span, 0 when it has none.
    public var httpStatusCodes: [UInt16] = []
    /// Index into `resources`.
    public var resourceIndices: [UInt32] = []
    /// Index into `scopes`.
    public var scopeIndices: [UInt32] = []
    /// The span's attributes as an OTLP `KeyValueList`, protobuf-encoded.
    public var attributes = ByteColumn()
    /// The rest of the OTLP span — trace state, flags, events, links, dropped counts —
    /// as a protobuf-encoded OTLP `Span` holding only those fields; empty when all are unset.
    public var extras = ByteColumn()

    /// Distinct resources, referenced by `resourceIndices`.
    public private(set) var resources: [ResourceEntry] = []
    /// Distinct scopes as protobuf-encoded OTLP `ScopeSpans` messages without spans.
    public private(set) var scopes: [[UInt8]] = []
    private var resourceLookup: [ResourceEntry: UInt32] = [:]
    private var scopeLookup: [ScopeKey: UInt32] = [:]

    public init() {}

    /// Number of spans.
    public var count: Int { traceIDs.count }

    public var isEmpty: Bool { traceIDs.isEmpty }

    /// Returns the index of `resource` in the resource table, adding it if new.
    public mutating func intern(resource: ResourceEntry) -> UInt32 {
        if let index = resourceLookup[resource] { return index }
        let index = UInt32(resources.count)
        resources.append(resource)
        resourceLookup[resource] = index
        return index
    }

    /// Returns the index of `scope` in the scope table, adding it if new.
    public mutating func intern(scope: [UInt8]) -> UInt32 {
        let key = ScopeKey(scope)
        if let index = scopeLookup[key] { return index }
        let index = UInt32(scopes.count)
        scopes.append(scope)
        scopeLookup[key] = index
        return index
    }

    /// The batch with each resource replaced by `replacements[i]` (same order as
    /// `resources`), and the rows of resources replaced by nil left out.
    ///
    /// - Returns: the new batch and how many rows were left out.
    public func replacingResources(_ replacements: [ResourceEntry?]) -> (batch: SpanBatch, dropped: Int) {
        precondition(replacements.count == resources.count, "one replacement per resource")
        let kept = replacements.compactMap { $0 }
        if kept.count == resources.count {
            // Every row stays: the table changes and the rows keep their indices.
            var batch = self
            batch.resources = kept
            batch.resourceLookup = [:]
            for (index, entry) in kept.enumerated() where batch.resourceLookup[entry] == nil {
                batch.resourceLookup[entry] = UInt32(index)
            }
            return (batch, 0)
        }
        var batch = SpanBatch()
        batch.reserveCapacity(count)
        let resourceMap = replacements.map { $0.map { batch.intern(resource: $0) } }
        let scopeMap = scopes.map { batch.intern(scope: $0) }
        var dropped = 0
        for row in 0..<count {
            guard let resource = resourceMap[Int(resourceIndices[row])] else {
                dropped += 1
                continue
            }
            batch.append(row: row, of: self, resourceIndex: resource, scopeIndex: scopeMap[Int(scopeIndices[row])])
        }
        return (batch, dropped)
    }

    /// The service that emitted the span at `row`.
    public func serviceName(at row: Int) -> String {
        resources[Int(resourceIndices[row])].serviceName
    }

    /// Duration of the span at `row`, in nanoseconds (0 if it ends before it starts).
    public func duration(at row: Int) -> UInt64 {
        endTimes[row] >= startTimes[row] ? endTimes[row] - startTimes[row] : 0
    }

    /// Asks the CPU to start loading every fixed-width column's entry for `row`, and
    /// where its attributes and extras end, without waiting. A reader that visits rows
    /// out of arrival order (a segment writer in trace order, say) asks for a row a
    /// few visits ahead: a batch held for seconds is no longer in cache, and one
    /// visit's work is too long for the CPU to run ahead to the next row's loads.
    public func prefetchColumns(row: Int) {
        func prefetch<Element>(_ column: [Element]) {
            column.withUnsafeBufferPointer { if row < $0.count { meshtrace_prefetch_for_read($0.baseAddress! + row) } }
        }
        prefetch(traceIDs)
        prefetch(spanIDs)
        prefetch(parentSpanIDs)
        prefetch(names)
        prefetch(kinds)
        prefetch(startTimes)
        prefetch(endTimes)
        prefetch(statusCodes)
        prefetch(statusMessages)
        prefetch(httpStatusCodes)
        prefetch(resourceIndices)
        prefetch(scopeIndices)
        attributes.prefetchEnd(of: row)
        extras.prefetchEnd(of: row)
    }

    /// One span's fields, for appending a row.
    public struct Row: Sendable {
        public var traceID: TraceID
        public var spanID: SpanID
        public var parentSpanID: SpanID
        public var name: String
        public var kind: SpanKind
        public var startTime: UInt64
        public var endTime: UInt64
        public var statusCode: StatusCode
        public var statusMessage: String
        public var httpStatusCode: UInt16
        public var resourceIndex: UInt32
        public var scopeIndex: UInt32
        public var attributes: [UInt8]
        public var extras: [UInt8]

        public init(
            traceID: TraceID, spanID: SpanID, parentSpanID: SpanID, name: String, kind: SpanKind,
            startTime: UInt64, endTime: UInt64, statusCode: StatusCode, statusMessage: String,
            httpStatusCode: UInt16, resourceIndex: UInt32, scopeIndex: UInt32,
            attributes: [UInt8], extras: [UInt8]
        ) {
            self.traceID = traceID
            self.spanID = spanID
            self.parentSpanID = parentSpanID
            self.name = name
            self.kind = kind
            self.startTime = startTime
            self.endTime = endTime
            self.statusCode = statusCode
            self.statusMessage = statusMessage
            self.httpStatusCode = httpStatusCode
            self.resourceIndex = resourceIndex
            self.scopeIndex = scopeIndex
            self.attributes = attributes
            self.extras = extras
        }
    }

    /// Appends one span; its resource and scope indices must point into this batch's tables.
    public mutating func append(_ row: Row) {
        attributes.appendToOpenRow(row.attributes)
        extras.appendToOpenRow(row.extras)
        appendClosingOpenRows(
            traceID: row.traceID, spanID: row.spanID, parentSpanID: row.parentSpanID, name: row.name, kind: row.kind,
            startTime: row.startTime, endTime: row.endTime, statusCode: row.statusCode, statusMessage: row.statusMessage,
            httpStatusCode: row.httpStatusCode, resourceIndex: row.resourceIndex, scopeIndex: row.scopeIndex)
    }

    /// Appends one span whose attributes and extras are the rows open in those
    /// columns (see `ByteColumn.appendToOpenRow(_:)`), closing both. With `scopeIndex` nil
    /// the span belongs to no scope until `setScope(_:of:)` names one, which must
    /// happen before the batch is read.
    public mutating func appendClosingOpenRows(
        traceID: TraceID, spanID: SpanID, parentSpanID: SpanID, name: String, kind: SpanKind,
        startTime: UInt64, endTime: UInt64, statusCode: StatusCode, statusMessage: String,
        httpStatusCode: UInt16, resourceIndex: UInt32, scopeIndex: UInt32?
    ) {
        precondition(Int(resourceIndex) < resources.count && scopeIndex.map { Int($0) < scopes.count } != false,
                     "row refers to a resource or scope outside this batch")
        traceIDs.append(traceID)
        spanIDs.append(spanID)
        parentSpanIDs.append(parentSpanID)
        names.append(name)
        kinds.append(kind)
        startTimes.append(startTime)
        endTimes.append(endTime)
        statusCodes.append(statusCode)
        statusMessages.append(statusMessage)
        httpStatusCodes.append(httpStatusCode)
        resourceIndices.append(resourceIndex)
        scopeIndices.append(scopeIndex ?? .max)
        attributes.closeRow()
        extras.closeRow()
    }

    /// Spans read but not yet in a batch, column by column in memory of their own,
    /// each with its attributes and extras already in the batch's columns (their open
    /// rows, up to the ends recorded here): a decoder adds them span by span, and
    /// `append(_:)` moves them into the batch a group at a time, so that each column
    /// is grown, and its storage checked for sharing, once per group rather than once
    /// per span.
    public struct PendingRows: ~Copyable {
        public static let capacity = 64
        private let traceIDs = UnsafeMutablePointer<TraceID>.allocate(capacity: capacity)
        private let spanIDs = UnsafeMutablePointer<SpanID>.allocate(capacity: capacity)
        private let parentSpanIDs = UnsafeMutablePointer<SpanID>.allocate(capacity: capacity)
        private let names = UnsafeMutablePointer<String>.allocate(capacity: capacity)
        private let kinds = UnsafeMutablePointer<SpanKind>.allocate(capacity: capacity)
        private let startTimes = UnsafeMutablePointer<UInt64>.allocate(capacity: capacity)
        private let endTimes = UnsafeMutablePointer<UInt64>.allocate(capacity: capacity)
        private let statusCodes = UnsafeMutablePointer<StatusCode>.allocate(capacity: capacity)
        private let statusMessages = UnsafeMutablePointer<String>.allocate(capacity: capacity)
        private let httpStatusCodes = UnsafeMutablePointer<UInt16>.allocate(capacity: capacity)
        private let resourceIndices = UnsafeMutablePointer<UInt32>.allocate(capacity: capacity)
        private let attributeEnds = UnsafeMutablePointer<Int>.allocate(capacity: capacity)
        private let extrasEnds = UnsafeMutablePointer<Int>.allocate(capacity: capacity)
        public private(set) var count = 0

        public init() {}

        public var isFull: Bool { count == Self.capacity }

        /// Adds a span whose attributes and extras end at `attributesEnd` and
        /// `extrasEnd` of those columns' bytes; only when not `isFull`.
        public mutating func append(
            traceID: TraceID, spanID: SpanID, parentSpanID: SpanID, name: String, kind: SpanKind,
            startTime: UInt64, endTime: UInt64, statusCode: StatusCode, statusMessage: String,
            httpStatusCode: UInt16, resourceIndex: UInt32, attributesEnd: Int, extrasEnd: Int
        ) {
            precondition(count < Self.capacity, "pending rows full")
            (traceIDs + count).initialize(to: traceID)
            (spanIDs + count).initialize(to: spanID)
            (parentSpanIDs + count).initialize(to: parentSpanID)
            (names + count).initialize(to: name)
            (kinds + count).initialize(to: kind)
            (startTimes + count).initialize(to: startTime)
            (endTimes + count).initialize(to: endTime)
            (statusCodes + count).initialize(to: statusCode)
            (statusMessages + count).initialize(to: statusMessage)
            (httpStatusCodes + count).initialize(to: httpStatusCode)
            (resourceIndices + count).initialize(to: resourceIndex)
            (attributeEnds + count).initialize(to: attributesEnd)
            (extrasEnds + count).initialize(to: extrasEnd)
            count += 1
        }

        /// Moves the rows to the end of `batch`, with no scope (see
        /// `appendClosingOpenRows`).
        fileprivate mutating func move(into batch: inout SpanBatch) {
            let rows = count
            func buffer<Element>(_ start: UnsafeMutablePointer<Element>) -> UnsafeBufferPointer<Element> {
                UnsafeBufferPointer(start: start, count: rows)
            }
            precondition(buffer(resourceIndices).allSatisfy { Int($0) < batch.resources.count },
                         "row refers to a resource outside this batch")
            batch.traceIDs.append(contentsOf: buffer(traceIDs))
            batch.spanIDs.append(contentsOf: buffer(spanIDs))
            batch.parentSpanIDs.append(contentsOf: buffer(parentSpanIDs))
            batch.names.append(contentsOf: buffer(names))
            batch.kinds.append(contentsOf: buffer(kinds))
            batch.startTimes.append(contentsOf: buffer(startTimes))
            batch.endTimes.append(contentsOf: buffer(endTimes))
            batch.statusCodes.append(contentsOf: buffer(statusCodes))
            batch.statusMessages.append(contentsOf: buffer(statusMessages))
            batch.httpStatusCodes.append(contentsOf: buffer(httpStatusCodes))
            batch.resourceIndices.append(contentsOf: buffer(resourceIndices))
            batch.scopeIndices.append(contentsOf: repeatElement(.max, count: rows))
            batch.attributes.closeRows(endingAt: buffer(attributeEnds))
            batch.extras.closeRows(endingAt: buffer(extrasEnds))
            names.deinitialize(count: rows)
            statusMessages.deinitialize(count: rows)
            count = 0
        }

        /// Frees the memory, with any rows not moved into a batch.
        deinit {
            names.deinitialize(count: count)
            statusMessages.deinitialize(count: count)
            for pointer in [UnsafeMutableRawPointer(traceIDs), UnsafeMutableRawPointer(spanIDs), UnsafeMutableRawPointer(parentSpanIDs),
                            UnsafeMutableRawPointer(names), UnsafeMutableRawPointer(kinds), UnsafeMutableRawPointer(startTimes),
                            UnsafeMutableRawPointer(endTimes), UnsafeMutableRawPointer(statusCodes),
                            UnsafeMutableRawPointer(statusMessages), UnsafeMutableRawPointer(httpStatusCodes),
                            UnsafeMutableRawPointer(resourceIndices), UnsafeMutableRawPointer(attributeEnds),
                            UnsafeMutableRawPointer(extrasEnds)] {
                pointer.deallocate()
            }
        }
    }

    /// Moves `pending`'s rows to the end of the batch, leaving it empty.
    public mutating func append(_ pending: inout PendingRows) {
        guard pending.count > 0 else { return }
        pending.move(into: &self)
    }

    /// Points `rows` at scope `scope` of the scope table.
    public mutating func setScope(_ scope: UInt32, of rows: Range<Int>) {
        precondition(Int(scope) < scopes.count, "scope outside this batch")
        scopeIndices.replaceSubrange(rows, with: repeatElement(scope, count: rows.count))
    }

    /// The span at `index`, with indices into this batch's tables.
    public func row(_ index: Int) -> Row {
        Row(
            traceID: traceIDs[index], spanID: spanIDs[index], parentSpanID: parentSpanIDs[index],
            name: names[index], kind: kinds[index], startTime: startTimes[index], endTime: endTimes[index],
            statusCode: statusCodes[index], statusMessage: statusMessages[index],
            httpStatusCode: httpStatusCodes[index], resourceIndex: resourceIndices[index],
            scopeIndex: scopeIndices[index], attributes: Array(attributes[index]), extras: Array(extras[index]))
    }

    /// Appends the rows of `other` at `indices` (all of them when nil), re-interning
    /// their resources and scopes into this batch's tables.
    public mutating func append(contentsOf other: SpanBatch, rows indices: [Int]? = nil) {
        let resourceMap = other.resources.map { intern(resource: $0) }
        let scopeMap = other.scopes.map { intern(scope: $0) }
        guard let indices else {
            // Whole columns at once: what the head block does with every request.
            traceIDs += other.traceIDs
            spanIDs += other.spanIDs
            parentSpanIDs += other.parentSpanIDs
            names += other.names
            kinds += other.kinds
            startTimes += other.startTimes
            endTimes += other.endTimes
            statusCodes += other.statusCodes
            statusMessages += other.statusMessages
            httpStatusCodes += other.httpStatusCodes
            resourceIndices += other.resourceIndices.lazy.map { resourceMap[Int($0)] }
            scopeIndices += other.scopeIndices.lazy.map { scopeMap[Int($0)] }
            attributes.append(contentsOf: other.attributes)
            extras.append(contentsOf: other.extras)
            return
        }
        for index in indices {
            append(row: index, of: other, resourceIndex: resourceMap[Int(other.resourceIndices[index])],
                   scopeIndex: scopeMap[Int(other.scopeIndices[index])])
        }
    }

    /// Appends row `index` of `other` without building a `Row`; `resourceIndex` and
    /// `scopeIndex` point into this batch's tables. `extras`, when given, replaces the row's.
    public mutating func append(
        row index: Int, of other: SpanBatch, resourceIndex: UInt32, scopeIndex: UInt32, extras replacement: UnsafeBufferPointer<UInt8>? = nil
    ) {
        precondition(Int(resourceIndex) < resources.count && Int(scopeIndex) < scopes.count,
                     "row refers to a resource or scope outside this batch")
        traceIDs.append(other.traceIDs[index])
        spanIDs.append(other.spanIDs[index])
        parentSpanIDs.append(other.parentSpanIDs[index])
        names.append(other.names[index])
        kinds.append(other.kinds[index])
        startTimes.append(other.startTimes[index])
        endTimes.append(other.endTimes[index])
        statusCodes.append(other.statusCodes[index])
        statusMessages.append(other.statusMessages[index])
        httpStatusCodes.append(other.httpStatusCodes[index])
        resourceIndices.append(resourceIndex)
        scopeIndices.append(scopeIndex)
        // The byte rows copied where they lie: a slice of the other column would
        // retain its storage, which for a batch held a while is a miss of its own.
        other.attributes.withUnsafeBytes(ofRow: index) { attributes.append($0) }
        if let replacement {
            extras.append(replacement)
        } else {
            other.extras.withUnsafeBytes(ofRow: index) { extras.append($0) }
        }
    }

    /// The batch with its rows ordered by trace id, then start time, then span id
    /// (the batch itself when they already are, as a segment returns them).
    public func sortedByTrace() -> SpanBatch {
        let isSorted = (1..<max(1, count)).allSatisfy { row in
            if traceIDs[row - 1] != traceIDs[row] { return traceIDs[row - 1] < traceIDs[row] }
            if startTimes[row - 1] != startTimes[row] { return startTimes[row - 1] < startTimes[row] }
            return spanIDs[row - 1] <= spanIDs[row]
        }
        if isSorted { return self }
        let order = traceOrder()
        var sorted = SpanBatch()
        sorted.reserveCapacity(count)
        sorted.append(contentsOf: self, rows: order)
        return sorted
    }

    /// The row numbers in order of trace id, then start time, then span id, then row.
    ///
    /// Rows are first ordered by the high half of their trace id with a byte-wise
    /// radix sort — linear passes over the ids, where a comparison sort reads three
    /// columns at random for each of its n log n comparisons — and each run of rows
    /// whose high halves are equal (one trace's spans, mostly; every row when the ids
    /// are 64 bits wide) is then sorted by the whole comparison.
    public func traceOrder() -> [Int] {
        struct Entry {
            var key: UInt64
            var row: Int
        }
        let count = count
        guard count > 1 else { return Array(0..<count) }
        var entries = traceIDs.enumerated().map { Entry(key: $1.high, row: $0) }
        var scratch = entries
        var starts = [Int](repeating: 0, count: 8 * 256)
        entries.withUnsafeMutableBufferPointer { entries in
            scratch.withUnsafeMutableBufferPointer { scratch in
                starts.withUnsafeMutableBufferPointer { starts in
                    for entry in entries {
                        for digit in 0..<8 { starts[digit << 8 | Int(truncatingIfNeeded: entry.key >> (8 * digit)) & 255] += 1 }
                    }
                    var source = entries, target = scratch
                    for digit in 0..<8 {
                        let shift = UInt64(8 * digit)
                        let bucket = { (key: UInt64) in digit << 8 | Int(truncatingIfNeeded: key >> shift) & 255 }
                        // A byte every key shares orders nothing.
                        if starts[bucket(source[0].key)] == count { continue }
                        var offset = 0
                        for index in digit << 8..<(digit + 1) << 8 {
                            let size = starts[index]
                            starts[index] = offset
                            offset += size
                        }
                        for entry in source {
                            let index = bucket(entry.key)
                            target[starts[index]] = entry
                            starts[index] += 1
                        }
                        swap(&source, &target)
                    }
                    if source.baseAddress != entries.baseAddress { entries.baseAddress!.update(from: source.baseAddress!, count: count) }
                }
            }
        }
        var order = entries.map(\.row)
        traceIDs.withUnsafeBufferPointer { traceIDs in
            startTimes.withUnsafeBufferPointer { startTimes in
                spanIDs.withUnsafeBufferPointer { spanIDs in
                    // Whether row `a` goes before row `b`, whose high halves are equal.
                    let precedes = { (a: Int, b: Int) -> Bool in
                        if traceIDs[a].low != traceIDs[b].low { return traceIDs[a].low < traceIDs[b].low }
                        if startTimes[a] != startTimes[b] { return startTimes[a] < startTimes[b] }
                        if spanIDs[a] != spanIDs[b] { return spanIDs[a] < spanIDs[b] }
                        return a < b
                    }
                    order.withUnsafeMutableBufferPointer { order in
                        var first = 0
                        while first < count {
                            var end = first + 1
                            while end < count && entries[end].key == entries[first].key { end += 1 }
                            if end - first > 32 {
                                var run = UnsafeMutableBufferPointer(rebasing: order[first..<end])
                                run.sort(by: precedes)
                            } else {
                                // A trace's few spans, often in order already: insertion sort.
                                for index in first + 1..<end {
                                    let row = order[index]
                                    var slot = index
                                    while slot > first && precedes(row, order[slot - 1]) {
                                        order[slot] = order[slot - 1]
                                        slot -= 1
                                    }
                                    order[slot] = row
                                }
                            }
                            first = end
                        }
                    }
                }
            }
        }
        return order
    }

    /// Reserves room for `capacity` spans in every column, with `bytesPerSpan` bytes
    /// of attributes per span.
    public mutating func reserveCapacity(_ capacity: Int, bytesPerSpan: Int = 0) {
        traceIDs.reserveCapacity(capacity)
        spanIDs.reserveCapacity(capacity)
        parentSpanIDs.reserveCapacity(capacity)
        names.reserveCapacity(capacity)
        kinds.reserveCapacity(capacity)
        startTimes.reserveCapacity(capacity)
        endTimes.reserveCapacity(capacity)
        statusCodes.reserveCapacity(capacity)
        statusMessages.reserveCapacity(capacity)
        httpStatusCodes.reserveCapacity(capacity)
        resourceIndices.reserveCapacity(capacity)
        scopeIndices.reserveCapacity(capacity)
        attributes.reserveCapacity(rows: capacity, bytes: capacity * bytesPerSpan)
        extras.reserveCapacity(rows: capacity, bytes: 0)
    }

    /// Rows whose trace id is `traceID`.
    public func rows(of traceID: TraceID) -> [Int] {
        traceIDs.indices.filter { traceIDs[$0] == traceID }
    }

    /// Builds a batch directly from columns and tables, as a segment reader does.
    /// Returns nil if the columns differ in length or a row points outside a table.
    public static func assemble(
        traceIDs: [TraceID], spanIDs: [SpanID], parentSpanIDs: [SpanID], names: [String],
        kinds: [SpanKind], startTimes: [UInt64], endTimes: [UInt64], statusCodes: [StatusCode],
        statusMessages: [String], httpStatusCodes: [UInt16], resourceIndices: [UInt32],
        scopeIndices: [UInt32], attributes: ByteColumn, extras: ByteColumn,
        resources: [ResourceEntry], scopes: [[UInt8]]
    ) -> SpanBatch? {
        let count = traceIDs.count
        let lengths = [spanIDs.count, parentSpanIDs.count, names.count, kinds.count, startTimes.count,
                       endTimes.count, statusCodes.count, statusMessages.count, httpStatusCodes.count,
                       resourceIndices.count, scopeIndices.count, attributes.count, extras.count]
        guard lengths.allSatisfy({ $0 == count }),
              resourceIndices.allSatisfy({ Int($0) < resources.count }),
              scopeIndices.allSatisfy({ Int($0) < scopes.count })
        else { return nil }
        var batch = SpanBatch()
        batch.traceIDs = traceIDs
        batch.spanIDs = spanIDs
        batch.parentSpanIDs = parentSpanIDs
        batch.names = names
        batch.kinds = kinds
        batch.startTimes = startTimes
        batch.endTimes = endTimes
        batch.statusCodes = statusCodes
        batch.statusMessages = statusMessages
        batch.httpStatusCodes = httpStatusCodes
        batch.resourceIndices = resourceIndices
        batch.scopeIndices = scopeIndices
        batch.attributes = attributes
        batch.extras = extras
        for resource in resources { _ = batch.intern(resource: resource) }
        for scope in scopes { _ = batch.intern(scope: scope) }
        // Duplicate table entries would collapse on interning and shift indices.
        guard batch.resources.count == resources.count, batch.scopes.count == scopes.count else { return nil }
        return batch
    }
}
