#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Compression
import MeshCore

/// The write-ahead log: numbered files of checksummed, LZ4-compressed records.
///
/// A file starts with the 8-byte magic `MTWAL\0\0\u{1}`. Each record is
/// `magic u32 | payload length u32 | CRC32C(payload) u32 | payload`, all
/// little-endian, where the payload is one LZ4 frame holding `type u8 | body`.
/// `write` appends a record without syncing and returns its number; a record is
/// durable once a sync that covers its number has finished (`GroupCommit` shares
/// one sync among the records written meanwhile). See storage/FORMAT.md.
///
/// The file is grown ahead of its records in steps of zero bytes, so a record
/// lands in blocks the file already has and a sync (`fdatasync`) writes the
/// record's pages alone, not the file's size and block map with them. Replay ends
/// cleanly where only zero bytes remain.
final class WriteAheadLog {
    static let fileMagic: [UInt8] = Array("MTWAL".utf8) + [0, 0, 1]
    static let recordMagic: UInt32 = 0x4C52_544D  // "MTRL" little-endian
    static let recordHeaderSize = 12
    /// The largest record payload accepted on replay, in bytes.
    static let maxPayload = 256 << 20

    /// What a record holds.
    enum RecordType: UInt8 {
        /// A protobuf-encoded OTLP `ExportTraceServiceRequest`.
        case traceExport = 1
        /// A protobuf-encoded OTLP `ExportMetricsServiceRequest`.
        case metricsExport = 2
        /// Spans a sampler held undecided when the file before was closed, carried
        /// forward (an `ExportTraceServiceRequest`); golden signals counted them already.
        case heldSpans = 3
    }

    let directory: String
    /// Sequence number of the file being appended to.
    private(set) var sequence: UInt64
    private var fd: Int32
    private var path: String
    /// Bytes of records (and the file magic) in the current file.
    private(set) var fileSize: Int
    /// Bytes the current file holds: its records and the zero bytes written ahead of them.
    private var allocatedSize: Int
    /// How far the file grows at a time, in zero bytes. The sync after a growth writes
    /// the new zero bytes too: a larger step saves more syncs their metadata, and makes
    /// that one sync slower (at 1 MiB, the slowest percent of requests waited about
    /// 2 ms more; see BENCHMARKS.md).
    static let growthStep = 64 << 10
    /// Records written since the log was opened, across files: the number of the last one.
    private(set) var recordsWritten: UInt64 = 0
    /// Bytes appended since the log was opened, across files.
    private(set) var bytesWritten: UInt64 = 0

    /// Opens a new log file numbered `sequence` in `directory`.
    init(directory: String, sequence: UInt64) throws(StoreError) {
        self.directory = directory
        self.sequence = sequence
        (fd, path) = try Self.create(directory: directory, sequence: sequence)
        fileSize = Self.fileMagic.count
        allocatedSize = fileSize
    }

    deinit { close(fd) }

    static func fileName(sequence: UInt64) -> String {
        let hex = String(sequence, radix: 16)
        return "wal-" + String(repeating: "0", count: max(0, 16 - hex.count)) + hex + ".log"
    }

    /// The sequence number in a log file name, or nil if it is not one.
    static func sequence(fromFileName name: String) -> UInt64? {
        guard name.hasPrefix("wal-"), name.hasSuffix(".log") else { return nil }
        return UInt64(name.dropFirst(4).dropLast(4), radix: 16)
    }

    private static func create(directory: String, sequence: UInt64) throws(StoreError) -> (Int32, String) {
        let path = directory + "/" + fileName(sequence: sequence)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .io(path: path, operation: "create", errno: errno) }
        do {
            try FileIO.writeAll(fd: fd, path: path, fileMagic)
            try FileIO.sync(fd: fd, path: path)
            try FileIO.syncDirectory(directory)
        } catch {
            close(fd)
            throw error
        }
        return (fd, path)
    }

    /// Appends one record, not yet synced; returns its number (see `recordsWritten`).
    /// A write that fails is zeroed again, so no torn record sits before later ones.
    func write(type: RecordType, body: [UInt8]) throws(StoreError) -> UInt64 {
        var plain = [UInt8]()
        plain.reserveCapacity(body.count + 1)
        plain.append(type.rawValue)
        plain.append(contentsOf: body)
        let payload: [UInt8]
        do {
            // LZ4's fast mode: a tenth more bytes than its default, a fifth less of the
            // append's CPU; the record's CRC32C covers the frame, so it carries no
            // checksum of its own.
            payload = try LZ4Frame.compress(plain, acceleration: 4, contentChecksum: false)
        } catch {
            throw .io(path: path, operation: "compress record (\(error))", errno: 0)
        }
        var record = ByteWriter(capacity: payload.count + Self.recordHeaderSize)
        record.write(Self.recordMagic)
        record.write(UInt32(payload.count))
        record.write(CRC32C.checksum(payload))
        record.write(raw: payload)
        if fileSize + record.count > allocatedSize { try grow(toHold: fileSize + record.count) }
        do {
            try FileIO.writeAll(fd: fd, path: path, record.bytes, at: fileSize)
        } catch {
            try? FileIO.writeZeros(fd: fd, path: path, range: fileSize..<(fileSize + record.count))
            throw error
        }
        fileSize += record.count
        bytesWritten += UInt64(record.count)
        recordsWritten += 1
        return recordsWritten
    }

    /// Writes zero bytes past the end of the file, in whole steps, until it holds
    /// `size` bytes. The sync after it writes the new blocks and the file's new size
    /// once; the records written into them later change neither.
    private func grow(toHold size: Int) throws(StoreError) {
        let target = (size + Self.growthStep - 1) / Self.growthStep * Self.growthStep
        try FileIO.writeZeros(fd: fd, path: path, range: allocatedSize..<target)
        allocatedSize = target
    }

    /// What a sync needs: a duplicate of the current file's descriptor (so the file
    /// stays open for the sync even if the log rotates meanwhile; the caller closes
    /// it), its path, and the number of the last record written to it.
    func syncTarget() throws(StoreError) -> (fd: Int32, path: String, upTo: UInt64) {
        let copy = dup(fd)
        guard copy >= 0 else { throw .io(path: path, operation: "dup", errno: errno) }
        return (copy, path, recordsWritten)
    }

    /// Syncs and closes the current file and starts the next one; every record
    /// written so far is then durable.
    func rotate() throws(StoreError) {
        try FileIO.sync(fd: fd, path: path)
        let next = sequence + 1
        let (newFD, newPath) = try Self.create(directory: directory, sequence: next)
        close(fd)
        fd = newFD
        path = newPath
        sequence = next
        fileSize = Self.fileMagic.count
        allocatedSize = fileSize
    }

    /// One record read back.
    struct Record {
        var type: RecordType
        var body: ArraySlice<UInt8>
    }

    /// What replaying one file found.
    struct Replay {
        var records: [Record] = []
        /// Bytes at the end of the file that do not form a whole, valid record, up to
        /// its last non-zero byte (zero bytes after it are the file's growth).
        var damagedTailBytes = 0
        /// Why the tail was cut, when it was.
        var damage: String?
        /// Length of the valid prefix of the file, in bytes.
        var validLength = 0
    }

    /// Reads every valid record of a log file, stopping at the first damaged one or
    /// where only zero bytes remain.
    static func replay(path: String) throws(StoreError) -> Replay {
        let bytes = try FileIO.readAll(path)
        var result = Replay()
        guard bytes.count >= fileMagic.count, Array(bytes[0..<fileMagic.count]) == fileMagic else {
            result.damagedTailBytes = bytes.count
            result.damage = "file does not start with the WAL magic"
            return result
        }
        var reader = ByteReader(bytes, range: fileMagic.count..<bytes.count)
        result.validLength = fileMagic.count
        while !reader.isAtEnd {
            do {
                let magic = try reader.readUInt32()
                guard magic == recordMagic else {
                    result.damage = "bad record magic at byte \(result.validLength)"
                    break
                }
                let length = Int(try reader.readUInt32())
                let checksum = try reader.readUInt32()
                guard length <= maxPayload else {
                    result.damage = "record at byte \(result.validLength) claims \(length) bytes"
                    break
                }
                let payload = try reader.readRaw(count: length)
                guard CRC32C.checksum(Array(payload)) == checksum else {
                    result.damage = "checksum mismatch in record at byte \(result.validLength)"
                    break
                }
                let plain = try LZ4Frame.decompress(Array(payload), maxSize: maxPayload)
                guard let first = plain.first, let type = RecordType(rawValue: first) else {
                    result.damage = "unknown record type at byte \(result.validLength)"
                    break
                }
                result.records.append(Record(type: type, body: plain[1...]))
                result.validLength = reader.offset
            } catch {
                result.damage = "record at byte \(result.validLength) is damaged: \(error)"
                break
            }
        }
        // Past the last record, a file grown ahead of its records holds zero bytes:
        // a clean end, not damage.
        let contentEnd = (bytes.lastIndex { $0 != 0 } ?? -1) + 1
        if contentEnd <= result.validLength {
            result.damage = nil
        }
        result.damagedTailBytes = max(0, contentEnd - result.validLength)
        return result
    }
}
