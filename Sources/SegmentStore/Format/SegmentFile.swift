import Compression
import MeshCore

/// The container every segment version shares:
///
/// ```
/// "MTSEG\0\0" + version byte          8-byte header magic
/// column chunks × N                   each one zstd frame
/// footer                             see `SegmentFooter.encode`
/// footer length u32 | CRC32C(footer) u32 | "MTSEGEND"
/// ```
public enum SegmentFile {
    static let headerMagicPrefix: [UInt8] = Array("MTSEG".utf8) + [0, 0]
    static let trailerMagic: [UInt8] = Array("MTSEGEND".utf8)
    static let trailerSize = 16
    /// File name suffix of sealed segments.
    public static let fileExtension = ".mts"
    /// Format versions this build reads.
    static let readableVersions: ClosedRange<UInt16> = 1...4
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
    /// Version 2 and later: the trace-aligned blocks, in trace-id order.
    public var blocks: [BlockInfo] = []
    /// Version 2 and later: which trace ids the segment may hold.
    public var bloom: TraceBloomFilter?
    /// Version 2 and later: file names of the segments this one was compacted from;
    /// any of them still present when the store opens is deleted.
    public var replaces: [String] = []

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
        if version >= 2 {
            writer.writeVarint(UInt64(blocks.count))
            for block in blocks {
                writer.write(raw: block.firstTraceID.bytes)
                writer.write(raw: block.lastTraceID.bytes)
                writer.writeVarint(UInt64(block.spanCount))
                writer.writeVarint(UInt64(block.traceCount))
                writer.write(block.minStartTime)
                writer.write(block.maxEndTime)
                writer.writeVarint(block.timeUnit)
            }
            let words = bloom?.words ?? []
            writer.writeVarint(UInt64(words.count))
            for word in words { writer.write(word) }
            writer.writeVarint(UInt64(replaces.count))
            for name in replaces { writer.write(string: name) }
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
        var footer = SegmentFooter(
            version: version, spanCount: spanCount, traceCount: traceCount, minStartTime: minStart,
            maxEndTime: maxEnd, minTraceID: minTrace, maxTraceID: maxTrace, walSequence: walSequence,
            services: services, columns: columns)
        if version >= 2 {
            var spans = 0
            var traces = 0
            for _ in 0..<(try reader.readCount(limit: reader.remaining)) {
                let first = TraceID(bytes: try reader.readRaw(count: 16))!
                let last = TraceID(bytes: try reader.readRaw(count: 16))!
                let blockSpans = try reader.readCount(limit: spanCount - spans)
                let blockTraces = try reader.readCount(limit: traceCount - traces)
                spans += blockSpans
                traces += blockTraces
                footer.blocks.append(BlockInfo(
                    firstTraceID: first, lastTraceID: last, spanCount: blockSpans, traceCount: blockTraces,
                    minStartTime: try reader.readUInt64(), maxEndTime: try reader.readUInt64(),
                    timeUnit: max(1, try reader.readVarint())))
            }
            guard spans == spanCount, traces == traceCount else {
                throw ByteReaderError.invalidLength(offset: reader.offset, length: UInt64(spans))
            }
            var words: [UInt64] = []
            for _ in 0..<(try reader.readCount(limit: reader.remaining / 8)) { words.append(try reader.readUInt64()) }
            footer.bloom = words.isEmpty ? nil : TraceBloomFilter(words: words)
            for _ in 0..<(try reader.readCount(limit: reader.remaining)) { footer.replaces.append(try reader.readString()) }
        }
        return footer
    }
}

/// Writes sealed segments in the newest format version.
public enum SegmentWriter {
    /// The format version new segments are written in.
    public static let formatVersion = Int(SegmentFormatV2.version)

    /// Spans per block unless told otherwise: a lookup decodes up to one block.
    public static let defaultBlockSpans = SegmentFormatV2.defaultBlockSpans

    /// Spans per run unless told otherwise: a lookup decodes up to one run of a block.
    public static let defaultRunSpans = SegmentFormatV2.defaultRunSpans

    /// Encodes `batch` as a segment file's bytes.
    /// - Parameters:
    ///   - replaces: file names of the segments a compaction merged into this one.
    ///   - blockSpans: a block closes at the first trace boundary after this many
    ///     spans; it is read from disk and decompressed as a whole.
    ///   - runSpans: within a block, a run closes at the first trace boundary after
    ///     this many spans; shorter runs make lookups cheaper and segments larger.
    public static func encode(
        _ batch: SpanBatch, walSequence: UInt64, replaces: [String] = [], level: Int32 = Zstd.defaultLevel,
        blockSpans: Int = defaultBlockSpans, runSpans: Int = defaultRunSpans
    ) throws -> [UInt8] {
        let encoded = SegmentFormatV2.encode(batch, blockSpans: max(1, blockSpans), runSpans: max(1, runSpans))
        var file = ByteWriter(capacity: batch.count * 32)
        file.write(raw: SegmentFile.headerMagicPrefix + [UInt8(SegmentFormatV2.version)])
        var chunks: [ColumnChunkInfo] = []
        let compressor = try Zstd.Compressor(level: level)
        func append(_ name: String, _ bytes: [UInt8]) throws {
            let compressed = try compressor.compress(bytes)
            chunks.append(ColumnChunkInfo(
                column: name, offset: file.count, compressedSize: compressed.count,
                rawSize: bytes.count, checksum: CRC32C.checksum(compressed)))
            file.write(raw: compressed)
        }
        for (index, block) in encoded.blocks.enumerated() {
            for (name, bytes) in block.columns { try append(SegmentFormatV2.chunkName(block: index, column: name), bytes) }
        }
        for (name, bytes) in encoded.dictionaries { try append(name, bytes) }
        try append(SegmentFormatV2.summariesChunk, encoded.summaries)
        let traceCount = encoded.blocks.reduce(0) { $0 + $1.info.traceCount }
        var footer = SegmentFooter(
            version: SegmentFormatV2.version, spanCount: batch.count, traceCount: traceCount,
            minStartTime: batch.startTimes.min() ?? 0, maxEndTime: batch.endTimes.max() ?? 0,
            minTraceID: batch.traceIDs.min() ?? .zero, maxTraceID: batch.traceIDs.max() ?? .zero,
            walSequence: walSequence,
            services: Array(Set(batch.resources.map(\.serviceName))).sorted(),
            columns: chunks)
        footer.blocks = encoded.blocks.map(\.info)
        footer.bloom = encoded.bloom
        footer.replaces = replaces
        let footerBytes = footer.encode()
        file.write(raw: footerBytes)
        file.write(UInt32(footerBytes.count))
        file.write(CRC32C.checksum(footerBytes))
        file.write(raw: SegmentFile.trailerMagic)
        return file.bytes
    }

    /// Writes `batch` as a segment at `path`, atomically and durably.
    public static func write(
        _ batch: SpanBatch, walSequence: UInt64, replaces: [String] = [], to path: String, level: Int32 = Zstd.defaultLevel,
        blockSpans: Int = defaultBlockSpans, runSpans: Int = defaultRunSpans
    ) throws {
        try FileIO.writeAtomically(
            try encode(batch, walSequence: walSequence, replaces: replaces, level: level, blockSpans: blockSpans,
                       runSpans: runSpans),
            to: path)
    }
}
