import ArgumentParser
import Compression
import Foundation
import MeshCore
import MeshSim
import OTLPWire
import QueryEngine
import SegmentStore

/// Segment size, encode speed, trace lookup and column scan on MeshSim traffic.
struct StorageBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage",
        abstract: "Bytes per span against a Tempo-like Parquet table, encode throughput, trace-by-id lookup, column scan.")

    @Option(help: "Spans in the size and throughput corpus.")
    var spans = 1_000_000

    @Option(help: "Spans per segment, as the collector seals them.")
    var segmentSpans = 200_000

    @Option(help: "Spans stored for the lookup benchmark (0 skips it).")
    var lookupSpans = 10_000_000

    @Option(help: "Trace lookups to time.")
    var lookups = 2_000

    @Option(help: "Working directory (emptied first).")
    var directory = "/tmp/meshtrace-bench"

    @Option(help: "Python with pyarrow and opentelemetry-proto, for the Parquet baseline (empty skips it).")
    var python = ".venv/bin/python"

    @Option(help: "Spans per segment block (a lookup reads and decompresses one block).")
    var blockSpans = SegmentWriter.defaultBlockSpans

    @Option(help: "Spans per run within a block (a lookup decodes up to one run).")
    var runSpans = SegmentWriter.defaultRunSpans

    @Option(help: "zstd level of the column chunks.")
    var level: Int32 = Zstd.defaultLevel

    @Option(help: "Times each segment is encoded; the fastest counts (the segment is copied afresh before each).")
    var encodePasses = 1

    @Option(help: "MeshSim seed.")
    var seed: UInt64 = 42

    @Flag(help: "Only time lookups, over the lookup store an earlier run left in --directory.")
    var lookupOnly = false

    func run() throws {
        if lookupOnly {
            var simulator = MeshSim(configuration: MeshSim.Configuration(seed: seed, errorRate: 0.01))
            return try lookupBench(simulator: &simulator, start: 0)
        }
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(cpuModel())")

        // 1. The corpus, as OTLP export requests (one per pod and batch) and as a columnar batch.
        let (requests, generator, time) = simulatedCorpus(spans: spans, seed: seed)
        var simulator = generator
        let emitted = simulator.truth.spans
        var corpus = SpanBatch()
        corpus.reserveCapacity(emitted)
        var otlpBytes = 0
        var corpusFile = ByteWriter(capacity: emitted * 500)
        for request in requests {
            let bytes: [UInt8] = try request.serializedBytes()
            // Decoded as the collector's receivers decode them, so that the batch holds
            // what a sealed head block holds (the decoder's strings and encodings).
            corpus.append(contentsOf: try DecodedTraceExport(protobuf: bytes).spans)
            otlpBytes += bytes.count
            corpusFile.write(UInt32(bytes.count))
            corpusFile.write(raw: bytes)
        }
        let corpusPath = directory + "/corpus.otlp"
        try Data(corpusFile.bytes).write(to: URL(fileURLWithPath: corpusPath))
        let floorBytesPerSpan = simulator.truth.randomBits / 8 / Double(corpus.count)
        print("corpus: \(corpus.count) spans, \(simulator.truth.requests) requests, \(String(format: "%.1f", simulator.truth.hopsPerRequest)) hops/request, OTLP protobuf \(String(format: "%.1f", Double(otlpBytes) / Double(corpus.count))) B/span")

        // 2. Segments as the collector seals them, and their encode throughput.
        var segmentBytes = 0
        var encodeSeconds = 0.0
        var encodeCPU = 0.0
        var offset = 0
        var index = 0
        while offset < corpus.count {
            let rows = Array(offset..<min(offset + segmentSpans, corpus.count))
            offset += rows.count
            var bytes: [UInt8] = []
            var fastest = Measurement(seconds: .infinity, cpuSeconds: .infinity)
            for _ in 0..<max(1, encodePasses) {
                var part = SpanBatch()
                part.append(contentsOf: corpus, rows: rows)
                let measured: Measurement
                (bytes, measured) = try Measurement.run { try SegmentWriter.encode(part, walSequence: UInt64(index), level: level, blockSpans: blockSpans, runSpans: runSpans) }
                fastest = Measurement(seconds: min(fastest.seconds, measured.seconds), cpuSeconds: min(fastest.cpuSeconds, measured.cpuSeconds))
            }
            encodeSeconds += fastest.seconds
            encodeCPU += fastest.cpuSeconds
            segmentBytes += bytes.count
            try Data(bytes).write(to: URL(fileURLWithPath: directory + "/size-\(index).mts"))
            index += 1
        }
        let meshtraceBytesPerSpan = Double(segmentBytes) / Double(corpus.count)
        print(String(format: "meshtrace segments: %d bytes in %d segments = %.2f B/span", segmentBytes, index, meshtraceBytesPerSpan))
        // What the simulator drew at random can be read back from the spans, so no lossless format stores less.
        print(String(format: "entropy floor: MeshSim drew %.2f random bytes per span; meshtrace stores %.2f× that",
                     floorBytesPerSpan, meshtraceBytesPerSpan / floorBytesPerSpan))
        print(String(format: "encode + compress: %.0f spans/s wall, %.0f spans/s per CPU-second (one thread",
                     Double(corpus.count) / encodeSeconds, Double(corpus.count) / encodeCPU)
              + (encodePasses > 1 ? ", fastest of \(encodePasses) per segment)" : ")"))
        print("per-column sizes: meshtrace segments inspect \(directory)/size-*.mts")

        // 3. The Parquet baseline.
        if !python.isEmpty {
            let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent("Benchmarks/parquet_baseline.py").path
            let process = Process()
            process.executableURL = URL(fileURLWithPath: python)
            process.arguments = [script, corpusPath, directory + "/corpus.parquet"]
            let output = Pipe()
            process.standardOutput = output
            try process.run()
            let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            print(text, terminator: "")
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("parquet bytes:") }),
               let parquetBytes = Double(line.split(separator: " ")[2]) {
                let parquetPerSpan = parquetBytes / Double(corpus.count)
                print(String(format: "ratio meshtrace / parquet: %.3f (%.2f vs %.2f B/span); the entropy floor is %.3f of parquet",
                             meshtraceBytesPerSpan / parquetPerSpan, meshtraceBytesPerSpan, parquetPerSpan, floorBytesPerSpan / parquetPerSpan))
            }
        }

        // 4. One-column scan speed.
        let (scanned, scan) = try Measurement.run { () throws -> Int in
            var total = 0
            for segment in 0..<index {
                let reader = try SegmentReader(path: directory + "/size-\(segment).mts")
                for chunk in reader.footer.columns where chunk.column.hasSuffix("/span.duration") {
                    total += try reader.columnBytes(named: chunk.column).count
                }
            }
            return total
        }
        print(String(format: "column scan (span.duration, read + checksum + decompress): %.0f MB/s decompressed, %.0f M spans/s",
                     Double(scanned) / scan.seconds / 1e6, Double(corpus.count) / scan.seconds / 1e6))

        if lookupSpans > 0 { try lookupBench(simulator: &simulator, start: time) }
    }

    /// Trace by id over many segments: the median and p99 over random stored traces.
    private func lookupBench(simulator: inout MeshSim, start: UInt64) throws {
        let storeDirectory = directory + "/lookup"
        var configuration = SpanStore.Configuration(dataDirectory: storeDirectory)
        configuration.maxHeadSpans = lookupSpans / 100
        var time = start
        var written = 0
        var sample: [TraceID] = []
        var random = SeededGenerator(seed: seed ^ 0xBEEF)
        var segmentIndex = 0
        if lookupOnly {
            // Sample trace ids from the stored segments themselves.
            for segment in try SpanStore(configuration: configuration).snapshot().segments.prefix(20) {
                let traceIDs = try segment.readBatch().traceIDs
                for _ in 0..<100 { sample.append(traceIDs[Int(random.next() % UInt64(traceIDs.count))]) }
            }
            written = lookupSpans
        } else {
            try? FileManager.default.removeItem(atPath: storeDirectory)
            try FileManager.default.createDirectory(atPath: storeDirectory + "/segments", withIntermediateDirectories: true)
        }
        while written < lookupSpans {
            var batch = SpanBatch()
            var pending: [MeshSim.EmittedSpan] = []
            while pending.count < configuration.maxHeadSpans {
                let next = simulator.request(at: time)
                time += 1_000_000
                if random.chance(0.01) { sample.append(TraceID(bytes: next[0].span.traceID)!) }
                pending += next
            }
            for request in simulator.exportRequests(pending) { batch.append(request) }
            try SegmentWriter.write(batch, walSequence: UInt64(segmentIndex + 1),
                                    to: storeDirectory + "/segments/" + String(format: "seg-%016llx.mts", segmentIndex + 1),
                                    level: level, blockSpans: blockSpans, runSpans: runSpans)
            written += batch.count
            segmentIndex += 1
        }
        let store = try SpanStore(configuration: configuration)
        let snapshot = store.snapshot()
        print("lookup store: \(written) spans in \(snapshot.segments.count) segments")
        let traceIDs = (0..<lookups).map { _ in sample[Int(random.next() % UInt64(sample.count))] }
        // Cold: the page cache is dropped before every lookup, so its block comes from disk.
        let dropped = dropPageCache()
        var cold: [Double] = []
        var found = 0
        for traceID in traceIDs {
            if dropped { _ = dropPageCache() }
            let (result, measured) = try Measurement.run { try QueryEngine(snapshot: snapshot).trace(traceID) }
            if result != nil { found += 1 }
            cold.append(measured.seconds * 1000)
        }
        printTimings(dropped ? "trace by id, page cache dropped before each" : "trace by id, page cache NOT dropped (needs root)", cold, found: found)
        // Warm: the same lookups again, their blocks now in the page cache: the decoding cost alone.
        var warm: [Double] = []
        for traceID in traceIDs {
            let (_, measured) = try Measurement.run { try QueryEngine(snapshot: snapshot).trace(traceID) }
            warm.append(measured.seconds * 1000)
        }
        printTimings("trace by id, warm page cache", warm, found: found)
    }

    private func printTimings(_ label: String, _ milliseconds: [Double], found: Int) {
        let sorted = milliseconds.sorted()
        print(String(format: "%@: median %.3f ms, p90 %.3f ms, p99 %.3f ms, max %.3f ms over %d lookups (%d found)",
                     label, sorted[sorted.count / 2], sorted[sorted.count * 9 / 10], sorted[sorted.count * 99 / 100],
                     sorted.last!, sorted.count, found))
    }

    /// Drops the page cache so reads come from disk; false when that is not allowed (it needs root).
    private func dropPageCache() -> Bool {
        sync()
        guard let handle = FileHandle(forWritingAtPath: "/proc/sys/vm/drop_caches") else { return false }
        handle.write(Data("3\n".utf8))
        try? handle.close()
        return true
    }
}
