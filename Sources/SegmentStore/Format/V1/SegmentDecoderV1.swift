import MeshCore

/// Reads the columns of a v1 segment back into a `SpanBatch`.
struct SegmentDecoderV1 {
    let segment: SegmentReader

    private var path: String { segment.path }
    private var footer: SegmentFooter { segment.footer }

    private func columnBytes(_ column: SegmentFormatV1.Column) throws(StoreError) -> [UInt8] {
        try segment.columnBytes(named: column.rawValue)
    }

    /// The trace id of every row, in row order (sorted).
    func traceIDs() throws(StoreError) -> [TraceID] {
        let bytes = try columnBytes(.traceID)
        let rows = footer.spanCount
        guard bytes.count == rows * 16 else {
            throw .corruptColumn(file: path, column: SegmentFormatV1.Column.traceID.rawValue, reason: "expected \(rows * 16) bytes")
        }
        return (0..<rows).map { row in TraceID(bytes: bytes[row * 16..<row * 16 + 16])! }
    }

    /// Every row of the segment, decoded.
    func decode() throws(StoreError) -> SpanBatch {
        let rows = footer.spanCount
        func fail(_ column: SegmentFormatV1.Column, _ reason: String) -> StoreError {
            .corruptColumn(file: path, column: column.rawValue, reason: reason)
        }
        let traceIDs = try self.traceIDs()
        let spanIDs = try fixed64(.spanID, rows: rows)
        let parents = try fixed64(.parentSpanID, rows: rows)

        var names: [String] = []
        var kinds: [SpanKind] = []
        var statusCodes: [StatusCode] = []
        var startTimes: [UInt64] = []
        var endTimes: [UInt64] = []
        var messages: [String] = []
        var httpCodes: [UInt16] = []
        var resources: [ResourceEntry] = []
        var resourceIndices: [UInt32] = []
        var scopes: [[UInt8]] = []
        var scopeIndices: [UInt32] = []
        var attributes = ByteColumn()
        var extras = ByteColumn()
        var current = SegmentFormatV1.Column.name
        do {
            var reader = ByteReader(try columnBytes(.name))
            var dictionary: [String] = []
            for _ in 0..<(try reader.readCount(limit: reader.remaining)) { dictionary.append(try reader.readString()) }
            for _ in 0..<rows {
                let index = try reader.readIndex(below: dictionary.count)
                names.append(dictionary[index])
            }

            current = .kind
            let kindBytes = try columnBytes(.kind)
            current = .statusCode
            let statusBytes = try columnBytes(.statusCode)
            guard kindBytes.count == rows, statusBytes.count == rows else {
                throw ByteReaderError.invalidLength(offset: 0, length: UInt64(kindBytes.count))
            }
            kinds = kindBytes.map { SpanKind(rawValue: $0) ?? .unspecified }
            statusCodes = statusBytes.map { StatusCode(rawValue: $0) ?? .unset }

            current = .startTime
            reader = ByteReader(try columnBytes(.startTime))
            var previous: UInt64 = 0
            for _ in 0..<rows {
                previous = previous &+ UInt64(bitPattern: try reader.readSignedVarint())
                startTimes.append(previous)
            }
            current = .duration
            reader = ByteReader(try columnBytes(.duration))
            for row in 0..<rows {
                endTimes.append(startTimes[row] &+ UInt64(bitPattern: try reader.readSignedVarint()))
            }
            current = .statusMessage
            reader = ByteReader(try columnBytes(.statusMessage))
            for _ in 0..<rows { messages.append(try reader.readString()) }
            current = .httpStatusCode
            reader = ByteReader(try columnBytes(.httpStatusCode))
            for _ in 0..<rows { httpCodes.append(UInt16(try reader.readCount(limit: 999))) }

            current = .resource
            reader = ByteReader(try columnBytes(.resource))
            let resourceCount = try reader.readCount(limit: reader.remaining)
            for _ in 0..<resourceCount {
                let service = try reader.readString()
                resources.append(ResourceEntry(serviceName: service, encoded: Array(try reader.readLengthPrefixed())))
            }
            for _ in 0..<rows { resourceIndices.append(UInt32(try reader.readIndex(below: resourceCount))) }

            current = .scope
            reader = ByteReader(try columnBytes(.scope))
            let scopeCount = try reader.readCount(limit: reader.remaining)
            for _ in 0..<scopeCount { scopes.append(Array(try reader.readLengthPrefixed())) }
            for _ in 0..<rows { scopeIndices.append(UInt32(try reader.readIndex(below: scopeCount))) }

            current = .attributes
            reader = ByteReader(try columnBytes(.attributes))
            for _ in 0..<rows { attributes.append(try reader.readLengthPrefixed()) }
            current = .extras
            reader = ByteReader(try columnBytes(.extras))
            for _ in 0..<rows { extras.append(try reader.readLengthPrefixed()) }
        } catch let error as StoreError {
            throw error
        } catch {
            throw fail(current, "\(error)")
        }
        guard let batch = SpanBatch.assemble(
            traceIDs: traceIDs, spanIDs: spanIDs, parentSpanIDs: parents, names: names, kinds: kinds,
            startTimes: startTimes, endTimes: endTimes, statusCodes: statusCodes, statusMessages: messages,
            httpStatusCodes: httpCodes, resourceIndices: resourceIndices, scopeIndices: scopeIndices,
            attributes: attributes, extras: extras, resources: resources, scopes: scopes)
        else {
            throw .corruptSegment(file: path, reason: "columns disagree on the number of rows")
        }
        return batch
    }

    private func fixed64(_ column: SegmentFormatV1.Column, rows: Int) throws(StoreError) -> [SpanID] {
        let bytes = try columnBytes(column)
        guard bytes.count == rows * 8 else {
            throw .corruptColumn(file: path, column: column.rawValue, reason: "expected \(rows * 8) bytes, found \(bytes.count)")
        }
        return (0..<rows).map { row in
            SpanID(bytes[row * 8..<row * 8 + 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        }
    }
}
