import Compression
import MeshCore

/// A series file: the golden signals counted between two checkpoints, and the
/// pairing halves still waiting at the second. Laid out in `storage/FORMAT.md`
/// ("Series files").
struct RollupFile {
    static let magic: [UInt8] = Array("MTSERIE".utf8) + [1]
    static let fileExtension = ".mtr"
    static let headerSize = 8 + 8 + 8 + 4 + 4
    /// The most a series file may inflate to.
    static let maxBodySize = 1 << 30

    /// The last WAL file whose records are counted here (or in earlier files).
    var walSequence: UInt64
    /// Bucket width of the rows, nanoseconds.
    var resolution: UInt64
    /// Files whose rows this one holds at a coarser resolution; deleted once it is written.
    var replaces: [String] = []
    var rows: [BucketedSeries: Signals]
    var pending: [PendingHalf]
    /// The last point of each cumulative metric stream.
    var streams: [String: ProxyMetricsFolder.StreamPoint]

    enum ReadError: Error, CustomStringConvertible {
        case malformed(String)

        var description: String {
            switch self {
            case .malformed(let reason): return reason
            }
        }
    }

    /// `series-<16 hex digits of the WAL sequence>[-<bucket seconds>s-<tag>].mtr`.
    static func fileName(sequence: UInt64, rollup: (seconds: UInt64, tag: String)? = nil) -> String {
        let hex = String(sequence, radix: 16)
        return "series-" + String(repeating: "0", count: max(0, 16 - hex.count)) + hex
            + (rollup.map { "-\($0.seconds)s-\($0.tag)" } ?? "") + fileExtension
    }

    /// The start of the latest bucket held, or nil when the file holds no rows.
    var newestBucket: UInt64? { rows.keys.map(\.bucket).max() }

    func encoded(level: Int32) throws -> [UInt8] {
        var workloads: [Workload] = []
        var workloadIndex: [Workload: Int] = [:]
        func index(_ workload: Workload) -> Int {
            if let found = workloadIndex[workload] { return found }
            workloadIndex[workload] = workloads.count
            workloads.append(workload)
            return workloads.count - 1
        }
        var seriesList: [SeriesKey] = []
        var seriesIndex: [SeriesKey: Int] = [:]
        // By bucket only: the bucket column is delta-coded, and comparing series keys
        // (strings) would cost more than the rest of the file.
        let sortedRows = rows.sorted { $0.key.bucket < $1.key.bucket }
        for (key, _) in sortedRows where seriesIndex[key.series] == nil {
            seriesIndex[key.series] = seriesList.count
            seriesList.append(key.series)
        }

        var seriesSection = ByteWriter()
        seriesSection.writeVarint(UInt64(seriesList.count))
        for series in seriesList {
            switch series {
            case let .operation(workload, kind, name):
                seriesSection.write(UInt8(0))
                seriesSection.writeVarint(UInt64(index(workload)))
                seriesSection.write(kind.rawValue)
                seriesSection.write(string: name)
            case let .edge(client, server, connection):
                seriesSection.write(UInt8(1))
                seriesSection.writeVarint(UInt64(index(client)))
                seriesSection.writeVarint(UInt64(index(server)))
                seriesSection.write(connection.rawValue)
            case let .reported(client, server, reporter):
                seriesSection.write(UInt8(2))
                seriesSection.writeVarint(UInt64(index(client)))
                seriesSection.writeVarint(UInt64(index(server)))
                seriesSection.write(string: reporter)
            }
        }

        // Rows, column by column.
        var columns = [ByteWriter](repeating: ByteWriter(), count: 11)
        var previousBucket: UInt64 = 0
        for (key, signals) in sortedRows {
            columns[0].writeVarint(key.bucket - previousBucket)
            previousBucket = key.bucket
            columns[1].writeVarint(UInt64(seriesIndex[key.series]!))
            columns[2].writeVarint(signals.requests)
            columns[3].writeVarint(signals.errors)
            columns[4].writeVarint(signals.clientErrors)
            columns[5].writeVarint(signals.requestBytes)
            columns[6].writeVarint(signals.responseBytes)
            columns[7].writeVarint(signals.mutualTLS)
            columns[8].writeVarint(signals.plaintext)
            Self.write(signals.latency, to: &columns[9])
            Self.write(signals.serverLatency, to: &columns[10])
        }

        var pendingSection = ByteWriter()
        pendingSection.writeVarint(UInt64(pending.count))
        for saved in pending {
            let half = saved.half
            pendingSection.write(saved.key.trace.high)
            pendingSection.write(saved.key.trace.low)
            pendingSection.write(saved.key.span.value)
            var flags: UInt8 = 0
            if half.isClient { flags |= 1 }
            if half.isRoot { flags |= 2 }
            if half.request.failed { flags |= 4 }
            if half.request.clientError { flags |= 8 }
            pendingSection.write(flags)
            pendingSection.writeVarint(UInt64(index(saved.workload)))
            pendingSection.write(string: saved.peer)
            pendingSection.write(half.connection.rawValue)
            pendingSection.write(half.request.security.rawValue)
            pendingSection.writeVarint(half.request.requestBytes)
            pendingSection.writeVarint(half.request.responseBytes)
            pendingSection.writeVarint(half.request.duration?.nanoseconds ?? 0)
            pendingSection.writeVarint(half.end)
            pendingSection.writeVarint(saved.age)
            pendingSection.writeVarint(saved.remaining)
        }

        var workloadSection = ByteWriter()
        workloadSection.writeVarint(UInt64(workloads.count))
        for workload in workloads {
            workloadSection.write(string: workload.service)
            workloadSection.write(string: workload.namespace)
            workloadSection.write(string: workload.version)
        }

        var body = ByteWriter()
        body.write(lengthPrefixed: workloadSection.bytes)
        body.write(lengthPrefixed: seriesSection.bytes)
        body.writeVarint(UInt64(sortedRows.count))
        for column in columns { body.write(lengthPrefixed: column.bytes) }
        body.write(lengthPrefixed: pendingSection.bytes)
        var streamSection = ByteWriter()
        streamSection.writeVarint(UInt64(streams.count))
        for (identity, point) in streams.sorted(by: { $0.key < $1.key }) {
            streamSection.write(string: identity)
            streamSection.writeVarint(point.start)
            streamSection.writeSignedVarint(Int64(point.scale))
            streamSection.writeSignedVarint(Int64(point.offset))
            streamSection.writeVarint(UInt64(point.values.count))
            for value in point.values { streamSection.write(value.bitPattern) }
        }
        body.write(lengthPrefixed: streamSection.bytes)
        var replacedSection = ByteWriter()
        replacedSection.writeVarint(UInt64(replaces.count))
        for name in replaces { replacedSection.write(string: name) }
        body.write(lengthPrefixed: replacedSection.bytes)

        let compressed = try Zstd.compress(body.bytes, level: level)
        var file = ByteWriter(capacity: Self.headerSize + compressed.count)
        file.write(raw: Self.magic)
        file.write(walSequence)
        file.write(resolution)
        file.write(UInt32(body.count))
        file.write(CRC32C.checksum(compressed))
        file.write(raw: compressed)
        return file.bytes
    }

    init(
        walSequence: UInt64, resolution: UInt64, rows: [BucketedSeries: Signals], pending: [PendingHalf],
        streams: [String: ProxyMetricsFolder.StreamPoint], replaces: [String] = []
    ) {
        self.walSequence = walSequence
        self.resolution = resolution
        self.replaces = replaces
        self.rows = rows
        self.pending = pending
        self.streams = streams
    }

    init(bytes: [UInt8]) throws {
        guard bytes.count >= Self.headerSize, Array(bytes[0..<8]) == Self.magic else {
            throw ReadError.malformed("not a meshtrace series file (v1)")
        }
        var header = ByteReader(bytes, range: 8..<Self.headerSize)
        walSequence = try header.readUInt64()
        resolution = try header.readUInt64()
        guard resolution > 0 else { throw ReadError.malformed("bucket width of zero") }
        let bodySize = Int(try header.readUInt32())
        let checksum = try header.readUInt32()
        let compressed = bytes[Self.headerSize...]
        guard CRC32C.checksum(compressed) == checksum else { throw ReadError.malformed("checksum mismatch") }
        guard bodySize <= Self.maxBodySize else { throw ReadError.malformed("body of \(bodySize) bytes is too large") }
        let body = try Zstd.decompress(compressed, maxSize: bodySize)
        guard body.count == bodySize else { throw ReadError.malformed("body inflates to \(body.count) bytes, header says \(bodySize)") }
        var reader = ByteReader(body)

        var workloadReader = ByteReader(body, range: try reader.readLengthPrefixedRange())
        let workloadCount = try workloadReader.readCount(limit: body.count)
        var workloads: [Workload] = []
        workloads.reserveCapacity(workloadCount)
        for _ in 0..<workloadCount {
            workloads.append(Workload(
                service: try workloadReader.readString(), namespace: try workloadReader.readString(),
                version: try workloadReader.readString()))
        }
        func workload(_ index: UInt64) throws -> Workload {
            guard index < UInt64(workloads.count) else { throw ReadError.malformed("workload \(index) out of range") }
            return workloads[Int(index)]
        }

        var seriesReader = ByteReader(body, range: try reader.readLengthPrefixedRange())
        let seriesCount = try seriesReader.readCount(limit: body.count)
        var seriesList: [SeriesKey] = []
        seriesList.reserveCapacity(seriesCount)
        for _ in 0..<seriesCount {
            switch try seriesReader.readUInt8() {
            case 0:
                let owner = try workload(try seriesReader.readVarint())
                guard let kind = SpanKind(rawValue: try seriesReader.readUInt8()) else { throw ReadError.malformed("bad span kind") }
                seriesList.append(.operation(owner, kind: kind, name: try seriesReader.readString()))
            case 1:
                let client = try workload(try seriesReader.readVarint())
                let server = try workload(try seriesReader.readVarint())
                guard let connection = ConnectionType(rawValue: try seriesReader.readUInt8()) else {
                    throw ReadError.malformed("bad connection type")
                }
                seriesList.append(.edge(client: client, server: server, connection: connection))
            case 2:
                let client = try workload(try seriesReader.readVarint())
                let server = try workload(try seriesReader.readVarint())
                seriesList.append(.reported(client: client, server: server, reporter: try seriesReader.readString()))
            case let tag:
                throw ReadError.malformed("unknown series tag \(tag)")
            }
        }

        let rowCount = try reader.readCount(limit: body.count)
        var columns: [ByteReader] = []
        for _ in 0..<11 { columns.append(ByteReader(body, range: try reader.readLengthPrefixedRange())) }
        var rows: [BucketedSeries: Signals] = [:]
        rows.reserveCapacity(rowCount)
        var bucket: UInt64 = 0
        for _ in 0..<rowCount {
            let (sum, overflow) = bucket.addingReportingOverflow(try columns[0].readVarint())
            guard !overflow else { throw ReadError.malformed("bucket overflows") }
            bucket = sum
            let index = try columns[1].readVarint()
            guard index < UInt64(seriesList.count) else { throw ReadError.malformed("series \(index) out of range") }
            var signals = Signals()
            signals.requests = try columns[2].readVarint()
            signals.errors = try columns[3].readVarint()
            signals.clientErrors = try columns[4].readVarint()
            signals.requestBytes = try columns[5].readVarint()
            signals.responseBytes = try columns[6].readVarint()
            signals.mutualTLS = try columns[7].readVarint()
            signals.plaintext = try columns[8].readVarint()
            signals.latency = try Self.readHistogram(&columns[9])
            signals.serverLatency = try Self.readHistogram(&columns[10])
            rows[BucketedSeries(bucket: bucket, series: seriesList[Int(index)]), default: Signals()].merge(signals)
        }
        self.rows = rows

        var pendingReader = ByteReader(body, range: try reader.readLengthPrefixedRange())
        let pendingCount = try pendingReader.readCount(limit: body.count)
        var pending: [PendingHalf] = []
        pending.reserveCapacity(pendingCount)
        for _ in 0..<pendingCount {
            let trace = TraceID(high: try pendingReader.readUInt64(), low: try pendingReader.readUInt64())
            let span = SpanID(try pendingReader.readUInt64())
            let flags = try pendingReader.readUInt8()
            let owner = try workload(try pendingReader.readVarint())
            let peer = try pendingReader.readString()
            guard let connection = ConnectionType(rawValue: try pendingReader.readUInt8()),
                  let security = Security(rawValue: try pendingReader.readUInt8())
            else { throw ReadError.malformed("bad pending half") }
            let request = Signals.Request(
                failed: flags & 4 != 0, clientError: flags & 8 != 0, requestBytes: try pendingReader.readVarint(),
                responseBytes: try pendingReader.readVarint(), security: security,
                duration: Signals.Latency(nanoseconds: try pendingReader.readVarint()), serverDuration: nil)
            let half = EdgePairer.Half(
                isClient: flags & 1 != 0, isRoot: flags & 2 != 0, workload: 0, peer: -1, connection: connection,
                request: request, end: try pendingReader.readVarint())
            pending.append(PendingHalf(
                key: EdgePairer.Key(trace: trace, span: span), workload: owner, peer: peer, half: half,
                age: try pendingReader.readVarint(), remaining: try pendingReader.readVarint()))
        }
        self.pending = pending

        var streamReader = ByteReader(body, range: try reader.readLengthPrefixedRange())
        let streamCount = try streamReader.readCount(limit: body.count)
        var streams: [String: ProxyMetricsFolder.StreamPoint] = [:]
        for _ in 0..<streamCount {
            let identity = try streamReader.readString()
            let start = try streamReader.readVarint()
            let scale = try streamReader.readSignedVarint()
            let offset = try streamReader.readSignedVarint()
            guard let scale32 = Int32(exactly: scale), let offset32 = Int32(exactly: offset) else {
                throw ReadError.malformed("bad metric stream")
            }
            let valueCount = try streamReader.readCount(limit: body.count / 8)
            var values: [Double] = []
            values.reserveCapacity(valueCount)
            for _ in 0..<valueCount { values.append(Double(bitPattern: try streamReader.readUInt64())) }
            streams[identity] = ProxyMetricsFolder.StreamPoint(start: start, values: values, scale: scale32, offset: offset32)
        }
        self.streams = streams

        var replacedReader = ByteReader(body, range: try reader.readLengthPrefixedRange())
        let replacedCount = try replacedReader.readCount(limit: body.count)
        replaces = try (0..<replacedCount).map { _ in try replacedReader.readString() }
    }

    private static func write(_ histogram: ExponentialHistogram, to writer: inout ByteWriter) {
        guard !histogram.isEmpty else {
            writer.write(UInt8(0))
            return
        }
        writer.write(UInt8(1))
        writer.writeSignedVarint(Int64(histogram.scale))
        writer.writeVarint(histogram.zeroCount)
        writer.write(histogram.sum.bitPattern)
        writer.write(histogram.min.bitPattern)
        writer.write(histogram.max.bitPattern)
        writer.writeSignedVarint(Int64(histogram.offset))
        writer.writeVarint(UInt64(histogram.counts.count))
        for count in histogram.counts { writer.writeVarint(count) }
    }

    private static func readHistogram(_ reader: inout ByteReader) throws -> ExponentialHistogram {
        guard try reader.readUInt8() == 1 else { return ExponentialHistogram() }
        let scale = try reader.readSignedVarint()
        let zeroCount = try reader.readVarint()
        let sum = Double(bitPattern: try reader.readUInt64())
        let min = Double(bitPattern: try reader.readUInt64())
        let max = Double(bitPattern: try reader.readUInt64())
        let offset = try reader.readSignedVarint()
        let bucketCount = try reader.readCount(limit: ExponentialHistogram.defaultMaxBuckets)
        var counts: [UInt64] = []
        counts.reserveCapacity(bucketCount)
        for _ in 0..<bucketCount { counts.append(try reader.readVarint()) }
        guard scale >= -10, scale <= Int64(ExponentialHistogram.maxScale), abs(offset) < 1 << 40,
              let histogram = ExponentialHistogram(
                scale: Int8(scale), zeroCount: zeroCount, sum: sum, min: min, max: max, offset: Int(offset), counts: counts)
        else { throw ReadError.malformed("bad histogram") }
        return histogram
    }
}
