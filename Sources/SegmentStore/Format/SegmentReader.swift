import Compression
import MeshCore
import Synchronization

/// Reads a sealed segment of any supported version: its footer on open, columns on demand.
/// A class, so the store's snapshots share one reader per segment.
public final class SegmentReader: Sendable {
    /// Path of the segment file.
    public let path: String
    public let footer: SegmentFooter
    /// Size of the file, in bytes.
    public let fileSize: Int
    private let chunkIndex: [String: ColumnChunkInfo]
    /// Per block (version 2 and later), its chunks in file order, named without the block prefix.
    private let blockChunks: [[(column: String, chunk: ColumnChunkInfo)]]
    private let dictionaryCache = DictionaryCache()
    /// Block summaries, kept once read or built (segments never change).
    let summaryCache = SummaryCache()
    private let file: ReadHandle

    /// Opens `path` and checks its header, trailer and footer checksum.
    public init(path: String) throws(StoreError) {
        self.path = path
        let file = try ReadHandle(path: path)
        self.file = file
        let size = try FileIO.size(path)
        fileSize = size
        let headerSize = SegmentFile.headerMagicPrefix.count + 1
        let minimum = headerSize + SegmentFile.trailerSize
        guard size >= minimum else {
            throw .corruptSegment(file: path, reason: "file is \(size) bytes, shorter than an empty segment")
        }
        let header = try file.read(offset: 0, count: headerSize)
        guard header.starts(with: SegmentFile.headerMagicPrefix) else {
            throw .corruptSegment(file: path, reason: "missing header magic")
        }
        let trailer = try file.read(offset: size - SegmentFile.trailerSize, count: SegmentFile.trailerSize)
        guard Array(trailer[8..<16]) == SegmentFile.trailerMagic else {
            throw .corruptSegment(file: path, reason: "missing trailer magic (file truncated?)")
        }
        var trailerReader = ByteReader(trailer)
        let footerLength: Int
        let footerChecksum: UInt32
        do {
            footerLength = Int(try trailerReader.readUInt32())
            footerChecksum = try trailerReader.readUInt32()
        } catch {
            throw .corruptSegment(file: path, reason: "unreadable trailer")
        }
        guard footerLength <= size - minimum else {
            throw .corruptSegment(file: path, reason: "footer length \(footerLength) exceeds the file")
        }
        let footerBytes = try file.read(offset: size - SegmentFile.trailerSize - footerLength, count: footerLength)
        guard CRC32C.checksum(footerBytes) == footerChecksum else {
            throw .corruptSegment(file: path, reason: "footer checksum mismatch")
        }
        let footer: SegmentFooter
        do {
            footer = try SegmentFooter.decode(footerBytes, fileSize: size)
        } catch {
            throw .corruptSegment(file: path, reason: "footer does not decode: \(error)")
        }
        guard SegmentFile.readableVersions.contains(footer.version), UInt16(header[headerSize - 1]) == footer.version else {
            throw .unsupportedVersion(file: path, version: footer.version)
        }
        for chunk in footer.columns where chunk.offset + chunk.compressedSize > size - SegmentFile.trailerSize - footerLength {
            throw .corruptColumn(file: path, column: chunk.column, reason: "chunk extends past the footer")
        }
        self.footer = footer
        chunkIndex = Dictionary(footer.columns.map { ($0.column, $0) }, uniquingKeysWith: { first, _ in first })
        var blockChunks = [[(column: String, chunk: ColumnChunkInfo)]](repeating: [], count: footer.blocks.count)
        for chunk in footer.columns {
            guard let slash = chunk.column.firstIndex(of: "/"), let block = Int(chunk.column[..<slash]),
                  blockChunks.indices.contains(block) else { continue }
            blockChunks[block].append((String(chunk.column[chunk.column.index(after: slash)...]), chunk))
        }
        self.blockChunks = blockChunks
    }

    /// The decompressed bytes of the column called `name`, after checking its checksum.
    public func columnBytes(named name: String) throws(StoreError) -> [UInt8] {
        guard let chunk = chunkIndex[name] else {
            throw .corruptColumn(file: path, column: name, reason: "column missing from footer")
        }
        let compressed = try file.read(offset: chunk.offset, count: chunk.compressedSize)
        return try decompress(chunk, compressed[...])
    }

    private func decompress(_ chunk: ColumnChunkInfo, _ compressed: ArraySlice<UInt8>) throws(StoreError) -> [UInt8] {
        let name = chunk.column
        guard compressed.count == chunk.compressedSize else {
            throw .corruptColumn(file: path, column: name, reason: "chunk is truncated")
        }
        guard CRC32C.checksum(compressed) == chunk.checksum else {
            throw .corruptColumn(file: path, column: name, reason: "checksum mismatch")
        }
        let raw: [UInt8]
        do {
            raw = try Zstd.decompress(compressed, maxSize: chunk.rawSize)
        } catch {
            throw .corruptColumn(file: path, column: name, reason: "\(error)")
        }
        guard raw.count == chunk.rawSize else {
            throw .corruptColumn(file: path, column: name, reason: "decompressed to \(raw.count) bytes, footer says \(chunk.rawSize)")
        }
        return raw
    }

    /// The compressed chunks of block `block` of a v2 or later segment, read from
    /// disk in one request.
    func readBlock(_ block: Int) throws(StoreError) -> BlockChunks {
        let chunks = blockChunks[block]
        guard let start = chunks.map(\.chunk.offset).min(), let end = chunks.map({ $0.chunk.offset + $0.chunk.compressedSize }).max() else {
            throw .corruptSegment(file: path, reason: "block \(block) has no columns")
        }
        return BlockChunks(bytes: try file.read(offset: start, count: end - start), start: start, chunks: chunks)
    }

    /// The decompressed columns of `block` for which `include` holds, keyed by column name.
    func columns(of block: BlockChunks, where include: (String) -> Bool = { _ in true }) throws(StoreError) -> [String: [UInt8]] {
        var result: [String: [UInt8]] = [:]
        result.reserveCapacity(block.chunks.count)
        for (column, chunk) in block.chunks where include(column) {
            let from = chunk.offset - block.start
            guard from + chunk.compressedSize <= block.bytes.count else {
                throw .corruptColumn(file: path, column: chunk.column, reason: "chunk is truncated")
            }
            result[column] = try decompress(chunk, block.bytes[from..<from + chunk.compressedSize])
        }
        return result
    }

    /// The decompressed columns of block `block`, keyed by column name.
    func blockColumns(_ block: Int) throws(StoreError) -> [String: [UInt8]] {
        try columns(of: try readBlock(block))
    }

    /// Every span of `traceID` in this segment, or nil when it holds none.
    public func trace(_ traceID: TraceID) throws(StoreError) -> SpanBatch? {
        guard footer.spanCount > 0, traceID >= footer.minTraceID, traceID <= footer.maxTraceID else { return nil }
        switch footer.version {
        case SegmentFormatV1.version:
            let ids = try SegmentDecoderV1(segment: self).traceIDs()
            let low = Self.lowerBound(of: traceID, count: ids.count) { ids[$0] }
            var end = low
            while end < ids.count && ids[end] == traceID { end += 1 }
            guard end > low else { return nil }
            var result = SpanBatch()
            result.append(contentsOf: try readBatch(), rows: Array(low..<end))
            return result
        default:
            if let bloom = footer.bloom, !bloom.mightContain(traceID) { return nil }
            let blocks = footer.blocks
            let block = Self.lowerBound(of: traceID, count: blocks.count) { blocks[$0].lastTraceID }
            guard block < blocks.count, blocks[block].firstTraceID <= traceID else { return nil }
            // One read; the trace columns say whether the trace is there (the bloom filter
            // can be wrong) before the rest is decompressed or the dictionaries are read.
            let bytes = try readBlock(block)
            let isTraceColumn = { (column: String) in column.hasPrefix("trace.") }
            var chunks = try columns(of: bytes, where: isTraceColumn)
            guard let rows = try SegmentDecoderV2.rows(of: traceID, block: block, in: self, chunks: chunks) else { return nil }
            chunks.merge(try columns(of: bytes) { !isTraceColumn($0) }) { first, _ in first }
            return try SegmentDecoderV2(segment: self, dictionaries: try v2Dictionaries()).decode(block: block, keep: rows, preloaded: chunks)
        }
    }

    /// Every row of the segment, decoded. Without `attributes`, the rows' span
    /// attributes are left empty (their HTTP status codes are kept), which saves most of
    /// the decoding when a reader does not look at them.
    public func readBatch(attributes: Bool = true) throws(StoreError) -> SpanBatch {
        switch footer.version {
        case SegmentFormatV1.version:
            return try SegmentDecoderV1(segment: self).decode()
        default:
            let decoder = SegmentDecoderV2(segment: self, dictionaries: try v2Dictionaries())
            var batch = SpanBatch()
            batch.reserveCapacity(footer.spanCount)
            for block in footer.blocks.indices { batch.append(contentsOf: try decoder.decode(block: block, attributes: attributes)) }
            return batch
        }
    }

    /// The v2 dictionaries, read on first use and kept.
    func v2Dictionaries() throws(StoreError) -> DictionariesV2 {
        if let cached = dictionaryCache.value.withLock({ $0 }) { return cached }
        let loaded = try DictionariesV2(segment: self)
        dictionaryCache.value.withLock { $0 = loaded }
        return loaded
    }

    private static func lowerBound(of traceID: TraceID, count: Int, _ id: (Int) -> TraceID) -> Int {
        var low = 0
        var high = count
        while low < high {
            let middle = (low + high) / 2
            if id(middle) < traceID { low = middle + 1 } else { high = middle }
        }
        return low
    }
}

/// The compressed chunks of one block, as read from the file.
struct BlockChunks {
    let bytes: [UInt8]
    /// File offset of `bytes[0]`.
    let start: Int
    let chunks: [(column: String, chunk: ColumnChunkInfo)]
}

/// Holds a segment's decoded dictionaries across reads.
private final class DictionaryCache: Sendable {
    let value = Mutex<DictionariesV2?>(nil)
}

/// Holds a segment's block summaries across reads: those the segment stores, once
/// read, or those built from blocks read so far.
final class SummaryCache: Sendable {
    let stored = Mutex<[BlockSummary?]?>(nil)
    let value = Mutex<[Int: BlockSummary]>([:])
}
