import Compression
import MeshCore

/// Version 1 of the span segment file. storage/FORMAT.md is the specification;
/// this file and `SegmentReader` implement it.
///
/// ```
/// "MTSEG\0\0\1"                      8-byte header magic
/// column chunk × N                   each one zstd frame
/// footer                             see `SegmentFooter.encode`
/// footer length u32 | CRC32C(footer) u32 | "MTSEGEND"
/// ```
public enum SegmentFormatV1 {
    static let headerMagic: [UInt8] = Array("MTSEG".utf8) + [0, 0, 1]
    static let trailerMagic: [UInt8] = Array("MTSEGEND".utf8)
    static let trailerSize = 16
    static let version: UInt16 = 1
    /// File name suffix of sealed segments.
    public static let fileExtension = ".mts"

    /// The columns of a v1 segment, in file order.
    public enum Column: String, CaseIterable, Sendable {
        /// 16 bytes per row, big-endian; rows are sorted by this column.
        case traceID = "trace_id"
        /// 8 bytes per row, big-endian.
        case spanID = "span_id"
        /// 8 bytes per row, big-endian; zero for a root span.
        case parentSpanID = "parent_span_id"
        /// Varint count, that many strings, then one varint index per row.
        case name = "name"
        /// One byte per row: OTLP SpanKind.
        case kind = "kind"
        /// Zig-zag varint per row: start time minus the previous row's, in nanoseconds.
        case startTime = "start_time"
        /// Zig-zag varint per row: end time minus start time, in nanoseconds.
        case duration = "duration"
        /// One byte per row: OTLP StatusCode.
        case statusCode = "status_code"
        /// Length-prefixed UTF-8 per row.
        case statusMessage = "status_message"
        /// Varint per row: `http.response.status_code`, 0 when absent.
        case httpStatusCode = "http_status_code"
        /// Varint count, then per resource a service name and a protobuf `ResourceSpans`
        /// (both length-prefixed); then one varint resource index per row.
        case resource = "resource"
        /// Varint count, then per scope a protobuf `ScopeSpans` (length-prefixed);
        /// then one varint scope index per row.
        case scope = "scope"
        /// Length-prefixed protobuf `KeyValueList` per row.
        case attributes = "attributes"
        /// Length-prefixed protobuf `Span` per row holding trace state, flags, events,
        /// links and dropped counts.
        case extras = "extras"
    }

    /// Encodes the raw (uncompressed) bytes of every column of `batch`, whose rows
    /// must already be sorted by trace id.
    static func encodeColumns(_ batch: SpanBatch) -> [Column: [UInt8]] {
        let rows = batch.count
        var columns: [Column: [UInt8]] = [:]

        var traceIDs = ByteWriter(capacity: rows * 16)
        var spanIDs = ByteWriter(capacity: rows * 8)
        var parents = ByteWriter(capacity: rows * 8)
        for row in 0..<rows {
            traceIDs.write(raw: batch.traceIDs[row].bytes)
            writeBigEndian(batch.spanIDs[row].value, to: &spanIDs)
            writeBigEndian(batch.parentSpanIDs[row].value, to: &parents)
        }
        columns[.traceID] = traceIDs.bytes
        columns[.spanID] = spanIDs.bytes
        columns[.parentSpanID] = parents.bytes

        var dictionary: [String: Int] = [:]
        var names: [String] = []
        var nameIndices = ByteWriter(capacity: rows)
        for name in batch.names {
            let index: Int
            if let known = dictionary[name] {
                index = known
            } else {
                index = names.count
                dictionary[name] = index
                names.append(name)
            }
            nameIndices.writeVarint(UInt64(index))
        }
        var nameColumn = ByteWriter()
        nameColumn.writeVarint(UInt64(names.count))
        for name in names { nameColumn.write(string: name) }
        nameColumn.write(raw: nameIndices.bytes)
        columns[.name] = nameColumn.bytes

        columns[.kind] = batch.kinds.map(\.rawValue)
        columns[.statusCode] = batch.statusCodes.map(\.rawValue)

        var starts = ByteWriter(capacity: rows * 4)
        var durations = ByteWriter(capacity: rows * 3)
        var messages = ByteWriter(capacity: rows)
        var httpCodes = ByteWriter(capacity: rows * 2)
        var previousStart: UInt64 = 0
        for row in 0..<rows {
            let start = batch.startTimes[row]
            starts.writeSignedVarint(Int64(bitPattern: start &- previousStart))
            previousStart = start
            durations.writeSignedVarint(Int64(bitPattern: batch.endTimes[row] &- start))
            messages.write(string: batch.statusMessages[row])
            httpCodes.writeVarint(UInt64(batch.httpStatusCodes[row]))
        }
        columns[.startTime] = starts.bytes
        columns[.duration] = durations.bytes
        columns[.statusMessage] = messages.bytes
        columns[.httpStatusCode] = httpCodes.bytes

        var resources = ByteWriter()
        resources.writeVarint(UInt64(batch.resources.count))
        for resource in batch.resources {
            resources.write(string: resource.serviceName)
            resources.write(lengthPrefixed: resource.encoded)
        }
        for index in batch.resourceIndices { resources.writeVarint(UInt64(index)) }
        columns[.resource] = resources.bytes

        var scopes = ByteWriter()
        scopes.writeVarint(UInt64(batch.scopes.count))
        for scope in batch.scopes { scopes.write(lengthPrefixed: scope) }
        for index in batch.scopeIndices { scopes.writeVarint(UInt64(index)) }
        columns[.scope] = scopes.bytes

        var attributes = ByteWriter(capacity: rows * 64)
        var extras = ByteWriter(capacity: rows)
        for row in 0..<rows {
            attributes.write(lengthPrefixed: batch.attributes[row])
            extras.write(lengthPrefixed: batch.extras[row])
        }
        columns[.attributes] = attributes.bytes
        columns[.extras] = extras.bytes
        return columns
    }

    private static func writeBigEndian(_ value: UInt64, to writer: inout ByteWriter) {
        for shift in stride(from: 56, through: 0, by: -8) {
            writer.write(UInt8(truncatingIfNeeded: value >> UInt64(shift)))
        }
    }
}

/// Where one column chunk lives in a segment file, and how to check it.
public struct ColumnChunkInfo: Sendable, Equatable {
    public var column: String
    /// Byte offset of the chunk from the start of the file.
    public var offset: Int
    /// Size of the zstd frame, in bytes.
    public var compressedSize: Int
    /// Size after decompression, in bytes.
    public var rawSize: Int
    /// CRC32C of the compressed bytes.
    public var checksum: UInt32
}

/// The footer of a segment: what it holds and where its columns are.
public struct SegmentFooter: Sendable, Equatable {
    public var version: UInt16
    public var spanCount: Int
    public var traceCount: Int
    /// Earliest span start, in nanoseconds since the Unix epoch.
    public var minStartTime: UInt64
    /// Latest span end, in nanoseconds since the Unix epoch.
    public var maxEndTime: UInt64
    public var minTraceID: TraceID
    public var maxTraceID: TraceID
    /// The highest WAL file sequence whose records this segment holds.
    public var walSequence: UInt64
    /// Distinct `service.name` values, sorted.
    public var services: [String]
    public var columns: [ColumnChunkInfo]

    func encode() -> [UInt8] {
        var writer = ByteWriter(capacity: 256 + columns.count * 32)
        writer.write(version)
        writer.writeVarint(UInt64(spanCount))
        writer.writeVarint(UInt64(traceCount))
        writer.write(minStartTime)
        writer.write(maxEndTime)
        writer.write(raw: minTraceID.bytes)
        writer.write(raw: maxTraceID.bytes)
        writer.writeVarint(walSequence)
        writer.writeVarint(UInt64(services.count))
        for service in services { writer.write(string: service) }
        writer.writeVarint(UInt64(columns.count))
        for column in columns {
            writer.write(string: column.column)
            writer.writeVarint(UInt64(column.offset))
            writer.writeVarint(UInt64(column.compressedSize))
            writer.writeVarint(UInt64(column.rawSize))
            writer.write(column.checksum)
        }
        return writer.bytes
    }

    static func decode(_ bytes: [UInt8], fileSize: Int) throws(ByteReaderError) -> SegmentFooter {
        var reader = ByteReader(bytes)
        let version = try reader.readUInt16()
        let spanCount = try reader.readCount(limit: Int(UInt32.max))
        let traceCount = try reader.readCount(limit: spanCount)
        let minStart = try reader.readUInt64()
        let maxEnd = try reader.readUInt64()
        let minTrace = TraceID(bytes: try reader.readRaw(count: 16))!
        let maxTrace = TraceID(bytes: try reader.readRaw(count: 16))!
        let walSequence = try reader.readVarint()
        let serviceCount = try reader.readCount(limit: reader.remaining)
        var services: [String] = []
        for _ in 0..<serviceCount { services.append(try reader.readString()) }
        let columnCount = try reader.readCount(limit: reader.remaining)
        var columns: [ColumnChunkInfo] = []
        for _ in 0..<columnCount {
            let name = try reader.readString()
            let offset = try reader.readCount(limit: fileSize)
            let compressed = try reader.readCount(limit: fileSize)
            let raw = try reader.readCount(limit: 1 << 32)
            let checksum = try reader.readUInt32()
            columns.append(ColumnChunkInfo(column: name, offset: offset, compressedSize: compressed, rawSize: raw, checksum: checksum))
        }
        return SegmentFooter(
            version: version, spanCount: spanCount, traceCount: traceCount, minStartTime: minStart,
            maxEndTime: maxEnd, minTraceID: minTrace, maxTraceID: maxTrace, walSequence: walSequence,
            services: services, columns: columns)
    }
}

/// Writes sealed segments.
public enum SegmentWriter {
    /// Encodes `batch` (sorted here by trace id) as a v1 segment file's bytes.
    public static func encode(_ batch: SpanBatch, walSequence: UInt64, level: Int32 = Zstd.defaultLevel) throws -> [UInt8] {
        let sorted = batch.sortedByTrace()
        let raw = SegmentFormatV1.encodeColumns(sorted)
        var file = ByteWriter(capacity: sorted.count * 64)
        file.write(raw: SegmentFormatV1.headerMagic)
        var chunks: [ColumnChunkInfo] = []
        for column in SegmentFormatV1.Column.allCases {
            let bytes = raw[column]!
            let compressed = try Zstd.compress(bytes, level: level)
            chunks.append(ColumnChunkInfo(
                column: column.rawValue, offset: file.count, compressedSize: compressed.count,
                rawSize: bytes.count, checksum: CRC32C.checksum(compressed)))
            file.write(raw: compressed)
        }
        var traceCount = 0
        for row in 0..<sorted.count where row == 0 || sorted.traceIDs[row] != sorted.traceIDs[row - 1] {
            traceCount += 1
        }
        let footer = SegmentFooter(
            version: SegmentFormatV1.version, spanCount: sorted.count, traceCount: traceCount,
            minStartTime: sorted.startTimes.min() ?? 0, maxEndTime: sorted.endTimes.max() ?? 0,
            minTraceID: sorted.traceIDs.first ?? .zero, maxTraceID: sorted.traceIDs.last ?? .zero,
            walSequence: walSequence,
            services: Array(Set(sorted.resources.map(\.serviceName))).sorted(),
            columns: chunks)
        let footerBytes = footer.encode()
        file.write(raw: footerBytes)
        file.write(UInt32(footerBytes.count))
        file.write(CRC32C.checksum(footerBytes))
        file.write(raw: SegmentFormatV1.trailerMagic)
        return file.bytes
    }

    /// Writes `batch` as a segment at `path`, atomically and durably.
    public static func write(_ batch: SpanBatch, walSequence: UInt64, to path: String, level: Int32 = Zstd.defaultLevel) throws {
        try FileIO.writeAtomically(try encode(batch, walSequence: walSequence, level: level), to: path)
    }
}
