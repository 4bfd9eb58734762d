import ArgumentParser
import Foundation
import GoldenSignals
import MeshCore
import MeshSim
import OTLPWire
import QueryEngine
import SegmentStore

/// Four questions over a day of MeshSim traffic, answered by meshtrace and, in the
/// same run, by DuckDB over a Parquet table of the same spans.
struct QueryBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "query",
        abstract: "Trace by id, search, 24-h topology and 1-h p99 per edge: meshtrace against DuckDB over Parquet.")

    @Option(help: "Spans stored: a day of traffic, ending at the last whole hour.")
    var spans = 10_000_000

    @Option(help: "Spans per segment (the collector compacts segments to 400,000).")
    var segmentSpans = 400_000

    @Option(help: "Working directory (emptied first unless --reuse).")
    var directory = "/tmp/meshtrace-query-bench"

    @Flag(help: "Ask the questions of the store an earlier run left in --directory.")
    var reuse = false

    @Option(help: "Timed runs per question (the median is reported).")
    var runs = 11

    @Option(help: "Trace lookups to time.")
    var lookups = 200

    @Option(help: "Python with duckdb and pyarrow (empty: meshtrace alone).")
    var python = ".venv/bin/python"

    @Option(help: "MeshSim seed.")
    var seed: UInt64 = 42

    private static let hour: UInt64 = 3_600_000_000_000

    func run() throws {
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(cpuModel())")
        let end: UInt64
        var golden: GoldenSignals?
        if reuse {
            guard let text = try? String(contentsOfFile: directory + "/end", encoding: .utf8), let stored = UInt64(text) else {
                throw ValidationError("no store from an earlier run in \(directory)")
            }
            end = stored
        } else {
            end = GoldenSignals.wallClock() / Self.hour * Self.hour
            golden = try build(end: end)
        }
        try ask(end: end, golden: golden)
    }

    // MARK: The store

    /// A day of traffic ending at `end`: segments, series, and the columns DuckDB reads.
    /// Returns the golden signals as the collector that took the traffic holds them.
    private func build(end: UInt64) throws -> GoldenSignals {
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory + "/segments", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: directory + "/columns", withIntermediateDirectories: true)
        let golden = try GoldenSignals(configuration: GoldenSignals.Configuration(directory: directory + "/series"))
        let columns = try ColumnFiles(directory: directory + "/columns")
        var simulator = MeshSim(configuration: MeshSim.Configuration(seed: seed, errorRate: 0.02))
        // Requests spread evenly over the day, at the spacing that makes the day hold
        // the spans asked for (MeshSim's spans per request measured on a sample first).
        var probe = MeshSim(configuration: MeshSim.Configuration(seed: seed ^ 0x5EED, errorRate: 0.02))
        let sampleSpans = (0..<2_000).reduce(0) { total, _ in total + probe.request(at: 0).count }
        // 1 % closer together than that, so the day holds at least that many.
        let spacing = max(UInt64(1), UInt64(86_400e9 * Double(sampleSpans) / 2_000 / Double(spans) * 0.99))
        var time = end - 86_400_000_000_000
        var written = 0
        var segment = 0
        let (_, measured) = try Measurement.run {
            while written < spans && time < end {
                var pending: [MeshSim.EmittedSpan] = []
                while pending.count < min(segmentSpans, spans - written) && time < end {
                    pending += simulator.request(at: time)
                    time += spacing
                }
                var batch = SpanBatch()
                for request in simulator.exportRequests(pending, maxSpansPerRequest: 1024) { batch.append(request) }
                golden.follow(spans: batch, facts: batch.requestFacts())
                segment += 1
                try golden.checkpoint(upTo: UInt64(segment))()
                try SegmentWriter.write(batch, walSequence: UInt64(segment),
                                        to: directory + "/segments/" + String(format: "seg-%016llx.mts", segment))
                try columns.append(batch)
                written += batch.count
            }
            try golden.rollUp(now: end)
        }
        try columns.finish()
        try String(end).write(toFile: directory + "/end", atomically: true, encoding: .utf8)
        print(String(format: "store: %d spans in %d segments, traffic from %@ to %@, built in %.0f s",
                     written, segment, rfc3339(end - 86_400_000_000_000), rfc3339(time), measured.seconds))
        return golden
    }

    // MARK: The questions

    /// Asks the questions of the store and of `running` (the golden signals that took
    /// the traffic), or of the series files when there is none.
    private func ask(end: UInt64, golden running: GoldenSignals?) throws {
        var configuration = SpanStore.Configuration(dataDirectory: directory)
        configuration.readOnly = true
        var goldenConfiguration = GoldenSignals.Configuration(directory: directory + "/series")
        goldenConfiguration.readOnly = true
        let reopened = try GoldenSignals(configuration: goldenConfiguration)
        let store = try SpanStore(configuration: configuration, follower: reopened)
        let golden = running ?? reopened
        if running != nil {
            let dayWindow = (end - 86_400_000_000_000)...(end - 1)
            func requests(_ golden: GoldenSignals) -> UInt64 {
                golden.signals(in: dayWindow).reduce(0) { total, entry in
                    if case .operation(_, .server, _) = entry.key { return total + entry.value.requests } else { return total }
                }
            }
            print("series: the running collector's; its day counts \(requests(running!)) SERVER requests, the series files reopened \(requests(reopened))")
        }
        let snapshot = store.snapshot()
        let engine = QueryEngine(snapshot: snapshot)
        let signals = SignalQueries(golden: golden)
        let stored = snapshot.segments.reduce(0) { $0 + $1.footer.spanCount }
        print("meshtrace: \(stored) spans in \(snapshot.segments.count) segments; series at 10 s, 1 min, 1 h")

        let day = (end - 86_400_000_000_000)...(end - 1)
        let hour = (end - Self.hour)...(end - 1)
        // Trace ids to look up: spread over the store.
        var random = SeededGenerator(seed: seed ^ 0xF00D)
        var ids: [TraceID] = []
        for segment in snapshot.segments.shuffled(using: &random).prefix(10) {
            let traceIDs = try segment.readBatch().traceIDs
            for _ in 0..<(lookups / 10) { ids.append(traceIDs[Int(random.next() % UInt64(traceIDs.count))]) }
        }
        let search = (service: "payments", minDuration: UInt64(50_000_000), limit: 20)

        // meshtrace.
        var lookupTimes: [Double] = []
        var found = 0
        for id in ids {
            _ = try engine.trace(id)
            let (trace, measured) = try Measurement.run { try engine.trace(id) }
            lookupTimes.append(measured.seconds * 1e3)
            if trace != nil { found += 1 }
        }
        let query = TraceQL.spanset(.and(.and(
            .compare(.serviceName, .equal, .string(search.service)),
            .compare(.status, .equal, .status(.error))),
            .compare(.duration, .greater, .duration(search.minDuration))))
        let (searchTime, searchAnswer) = try median("search") { try engine.search(TraceSearch(query: query, window: day, limit: search.limit)) }
        let (topologyTime, topology) = try median("topology") { TopologyJSON(golden.serviceGraph(in: day)) }
        let (p99Time, p99s) = try median("p99 per edge") { signals.latency(.init(window: hour), by: .edge) }

        // DuckDB.
        var duck: [String: Any] = [:]
        if !python.isEmpty {
            let questions: [String: Any] = [
                "runs": runs, "day": [day.lowerBound, day.upperBound], "hour": [hour.lowerBound, hour.upperBound],
                "trace_ids": ids.map(\.hex),
                "search": ["service": search.service, "min_duration_ns": search.minDuration, "limit": search.limit],
            ]
            try JSONSerialization.data(withJSONObject: questions).write(to: URL(fileURLWithPath: directory + "/columns/questions.json"))
            let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent("Benchmarks/query_duckdb.py").path
            let process = Process()
            process.executableURL = URL(fileURLWithPath: python)
            process.arguments = [script, directory + "/columns"]
            let output = Pipe()
            process.standardOutput = output
            try process.run()
            let data = output.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            guard process.terminationStatus == 0, let parsed = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw ValidationError("query_duckdb.py failed (status \(process.terminationStatus))")
            }
            duck = parsed
            print("duckdb \(parsed["duckdb"] ?? "?") (\(parsed["threads"] ?? "?") threads): \(parsed["rows"] ?? 0) rows, "
                  + "parquet \(parsed["parquet_bytes"] ?? 0) bytes, written in \(parsed["parquet_seconds"] ?? 0) s")
        }

        func duckMedian(_ key: String) -> Double? { (duck[key] as? [String: Any])?["median_ms"] as? Double }
        print("")
        print("question                                   meshtrace     duckdb        ratio")
        func line(_ name: String, _ ours: Double, _ theirs: Double?) {
            let ratio = theirs.map { String(format: "%.0f×", $0 / ours) } ?? "-"
            print(name.padding(toLength: 43, withPad: " ", startingAt: 0)
                  + String(format: "%9.2f ms  ", ours) + (theirs.map { String(format: "%9.2f ms", $0) } ?? "        -   ") + "  " + ratio)
        }
        line("trace by id (median of \(ids.count))", percentile(lookupTimes, 0.5), duckMedian("trace_by_id"))
        line("search: \(search.service), error, > 50 ms, 24 h, top 20", searchTime, duckMedian("search"))
        line("topology, 24 h", topologyTime, duckMedian("topology_24h"))
        line("p99 per edge, 1 h", p99Time, duckMedian("p99_per_edge_1h"))
        print(String(format: "  meshtrace trace by id: p50 %.2f ms, p99 %.2f ms, found %d of %d",
                     percentile(lookupTimes, 0.5), percentile(lookupTimes, 0.99), found, ids.count))

        // The answers agree.
        if let theirs = (duck["search"] as? [String: Any])?["traces"] as? [String] {
            let ours = searchAnswer.map(\.traceID.hex).sorted()
            print("  search: meshtrace \(ours.count) traces, duckdb \(theirs.count); \(ours == theirs ? "the same traces" : "DIFFERENT traces")")
        }
        if let theirs = (duck["topology_24h"] as? [String: Any])?["edges"] as? [String: [String: Any]] {
            var same = 0
            var differing: [String] = []
            for edge in topology.edges where edge.connection_type?.isEmpty ?? true && edge.source != "user" {
                let key = "\(edge.source)->\(edge.target)"
                if (theirs[key]?["requests"] as? Int) == edge.requests { same += 1 } else { differing.append(key) }
            }
            print("  topology: \(same) mesh edges with the same request count in both, \(differing.count) differing \(differing.prefix(5))")
        }
        if let theirs = (duck["p99_per_edge_1h"] as? [String: Any])?["edges"] as? [String: [String: Any]] {
            var worst = 0.0
            for group in p99s {
                guard let key = group.source.map({ "\($0)->\(group.target ?? "")" }), let exact = theirs[key]?["p99_ms"] as? Double,
                      let ours = group.figures.latency_ms_p99, exact > 0 else { continue }
                worst = max(worst, abs(ours - exact) / exact)
            }
            // DuckDB interpolates between the two samples around the rank; meshtrace answers
            // from merged exponential histograms (at most 160 buckets).
            print(String(format: "  p99 per edge: largest difference from DuckDB's interpolated percentile %.2f%%", worst * 100))
        }
    }

    /// The median time of `runs` runs after one warm-up, in milliseconds, and the answer;
    /// the warm-up's time is printed (for search, the run that reads every block and leaves
    /// the block summaries later runs skip by).
    private func median<T>(_ label: String, _ work: () throws -> T) throws -> (Double, T) {
        let (first, firstTime) = try Measurement.run(work)
        print(String(format: "  %@: first run %.2f ms", label, firstTime.seconds * 1e3))
        var answer = first
        var times: [Double] = []
        for _ in 0..<runs {
            let (result, measured) = try Measurement.run(work)
            answer = result
            times.append(measured.seconds * 1e3)
        }
        return (percentile(times, 0.5), answer)
    }

    private func percentile(_ values: [Double], _ q: Double) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return 0 }
        return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * q + 0.5))]
    }
}

/// The spans' columns as flat little-endian files, for `Benchmarks/query_duckdb.py`.
private final class ColumnFiles {
    private let directory: String
    private var handles: [String: FileHandle] = [:]
    private var services: [String: UInt16] = [:]
    private var names: [String: UInt32] = [:]

    init(directory: String) throws {
        self.directory = directory
        for column in ["trace_id", "span_id", "parent_span_id", "service", "name", "kind", "status", "http_status", "start_ns", "duration_ns"] {
            let path = directory + "/" + column
            _ = FileManager.default.createFile(atPath: path, contents: nil)
            handles[column] = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        }
    }

    func append(_ batch: SpanBatch) throws {
        var buffers: [String: [UInt8]] = [:]
        func put<T: FixedWidthInteger>(_ column: String, _ value: T) {
            withUnsafeBytes(of: value.littleEndian) { buffers[column, default: []].append(contentsOf: $0) }
        }
        for row in 0..<batch.count {
            buffers["trace_id", default: []].append(contentsOf: batch.traceIDs[row].bytes)
            put("span_id", batch.spanIDs[row].value.bigEndian)
            // All zero for a root span (whose `bytes` are empty).
            put("parent_span_id", batch.parentSpanIDs[row].value.bigEndian)
            let service = batch.serviceName(at: row)
            let serviceIndex = services[service] ?? UInt16(services.count)
            services[service] = serviceIndex
            put("service", serviceIndex)
            let nameIndex = names[batch.names[row]] ?? UInt32(names.count)
            names[batch.names[row]] = nameIndex
            put("name", nameIndex)
            put("kind", batch.kinds[row].rawValue)
            put("status", batch.statusCodes[row].rawValue)
            put("http_status", batch.httpStatusCodes[row])
            put("start_ns", batch.startTimes[row])
            put("duration_ns", batch.duration(at: row))
        }
        for (column, bytes) in buffers { try handles[column]!.write(contentsOf: bytes) }
    }

    func finish() throws {
        for handle in handles.values { try handle.close() }
        let dictionaries: [String: [String]] = [
            "services": services.sorted { $0.value < $1.value }.map(\.key),
            "names": names.sorted { $0.value < $1.value }.map(\.key),
        ]
        try JSONSerialization.data(withJSONObject: dictionaries).write(to: URL(fileURLWithPath: directory + "/dictionaries.json"))
    }
}
