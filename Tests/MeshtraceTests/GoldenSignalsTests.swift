import Compression
import Foundation
@testable import GoldenSignals
import MeshCore
import MeshSim
import OTLPWire
import Sampling
import SegmentStore
import Synchronization
import XCTest

final class GoldenSignalsTests: XCTestCase {
    // MARK: Exponential histogram

    func testHistogramQuantilesAreWithinTheStatedErrorOfTheExactOnes() {
        var generator = SeededGenerator(seed: 11)
        for round in 0..<20 {
            var histogram = ExponentialHistogram()
            var values: [Double] = []
            let median = 1e5 * Double(round + 1)
            for _ in 0..<5_000 {
                let value = (generator.logNormal(median: median, sigma: 0.3 + Double(round) * 0.1)).rounded()
                values.append(value)
                histogram.record(value)
            }
            values.sort()
            XCTAssertLessThanOrEqual(histogram.counts.count, ExponentialHistogram.defaultMaxBuckets)
            XCTAssertEqual(histogram.count, UInt64(values.count))
            for q in [0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999] {
                let rank = Int((q * Double(values.count)).rounded(.up))
                let exact = values[rank - 1]
                let estimate = histogram.quantile(q)!
                XCTAssertLessThanOrEqual(abs(estimate - exact) / exact, histogram.relativeError * 1.000_001, "round \(round) q \(q)")
            }
            XCTAssertEqual(histogram.quantile(1), values.last)
            XCTAssertEqual(histogram.quantile(0), values.first)
        }
    }

    func testHistogramScalesDownToFitAndMergesLikeOneHistogram() {
        var wide = ExponentialHistogram()
        var parts = [ExponentialHistogram(), ExponentialHistogram(), ExponentialHistogram()]
        var generator = SeededGenerator(seed: 3)
        for index in 0..<30_000 {
            // Nine decades: from a microsecond to 20 minutes, in nanoseconds.
            let value = Foundation.pow(10, 3 + 9 * generator.unit())
            wide.record(value)
            parts[index % 3].record(value)
        }
        XCTAssertLessThanOrEqual(wide.counts.count, 160)
        XCTAssertLessThan(wide.scale, ExponentialHistogram.maxScale)
        var merged = parts[0]
        merged.merge(parts[1])
        merged.merge(parts[2])
        XCTAssertEqual(merged.count, wide.count)
        XCTAssertEqual(merged.scale, wide.scale)
        XCTAssertEqual(merged.offset, wide.offset)
        XCTAssertEqual(merged.counts, wide.counts)
        XCTAssertEqual(merged.zeroCount, wide.zeroCount)
        XCTAssertEqual(merged.sum, wide.sum, accuracy: wide.sum * 1e-12)
    }

    func testAShapedHistogramTakesManyMergesExactlyAsAnEmptyOneDoes() {
        var generator = SeededGenerator(seed: 17)
        for round in 0..<50 {
            // Histograms of different spreads, so their scales and ranges differ.
            var parts: [ExponentialHistogram] = []
            for part in 0..<(1 + round % 7) {
                var histogram = ExponentialHistogram()
                let median = 1e4 * Double(1 + (round * 7 + part) % 13)
                for _ in 0..<Int(1 + generator.unit() * 400) {
                    histogram.record(generator.logNormal(median: median, sigma: 0.1 + generator.unit() * 1.5).rounded())
                }
                if part == 2 { histogram.record(0, times: 3) }
                parts.append(histogram)
            }
            parts.append(ExponentialHistogram())
            var sequential = ExponentialHistogram()
            var shape = ExponentialHistogram.MergeShape()
            for part in parts {
                sequential.merge(part)
                shape.include(part)
            }
            var shaped = ExponentialHistogram(shape: shape)
            let counts = shaped.counts.count
            for part in parts { shaped.merge(part) }
            XCTAssertEqual(shaped, sequential, "round \(round)")
            XCTAssertEqual(shaped.counts.count, counts, "round \(round): the shaped histogram grew")
        }
    }

    func testPackedCountsMergeAsTheirHistogramDoes() {
        var generator = SeededGenerator(seed: 23)
        for round in 0..<40 {
            var source = ExponentialHistogram()
            // Few values over a wide range (sparse), or many (dense); counts past one,
            // two and four bytes.
            let values = round % 2 == 0 ? 3 + round % 5 : 2_000
            for _ in 0..<values { source.record(generator.logNormal(median: 5e6, sigma: 1.2).rounded()) }
            source.record(5e6, times: [1, 300, 70_000, 5_000_000_000][round % 4])
            var target = ExponentialHistogram()
            for _ in 0..<50 { target.record(generator.logNormal(median: 2e6, sigma: 0.4).rounded()) }
            var expected = target
            expected.merge(source)
            for (width, sparse) in [(8, false), (8, true), (4, false), (4, true)] where width == 8 || source.counts.max()! <= UInt32.max {
                var bytes: [UInt8] = []
                for (position, value) in source.counts.enumerated() where !sparse || value != 0 {
                    if sparse { bytes.append(UInt8(position)) }
                    if width == 8 { withUnsafeBytes(of: value) { bytes.append(contentsOf: $0) } }
                    else { withUnsafeBytes(of: UInt32(value)) { bytes.append(contentsOf: $0) } }
                }
                var merged = target
                bytes.withUnsafeBytes { raw in
                    merged.merge(
                        scale: source.scale, offset: source.offset,
                        counts: ExponentialHistogram.PackedCounts(bytes: raw, width: width, length: source.counts.count, sparse: sparse),
                        count: source.count, zeroCount: source.zeroCount, sum: source.sum, min: source.min, max: source.max)
                }
                XCTAssertEqual(merged, expected, "round \(round), \(width) bytes, sparse \(sparse)")
            }
        }
    }

    func testHistogramBucketsFollowOTLPBoundaries() {
        // At scale 0 bucket i holds (2^i, 2^(i+1)]: a power of two is its bucket's upper end.
        XCTAssertEqual(ExponentialHistogram.index(of: 4, scale: 0), 1)
        XCTAssertEqual(ExponentialHistogram.index(of: 4.000_001, scale: 0), 2)
        XCTAssertEqual(ExponentialHistogram.index(of: 1, scale: 3), -1)
        XCTAssertEqual(ExponentialHistogram.index(of: 8, scale: -1), 1)
        XCTAssertEqual(ExponentialHistogram.index(of: 1.5, scale: 1), 1)
        XCTAssertEqual(ExponentialHistogram.index(of: 1.4, scale: 1), 0)
    }

    /// Scales up to `tableScale` index by table, not by logarithm: both sides of
    /// every boundary, and random values, land where the logarithm puts them, and a
    /// histogram recording through indices found once equals one recording values.
    func testTableIndicesMatchLogarithmsAndRecordAsValuesDo() {
        func byLogarithm(_ value: Double, _ scale: Int8) -> Int {
            Int((Foundation.log2(value) * Double(1 << Int(scale))).rounded(.up)) - 1
        }
        for scale in Int8(1)...ExponentialHistogram.tableScale {
            let steps = 1 << Int(scale)
            for exponent in [-3, 0, 10, 29, 40] {
                for step in 0..<steps {
                    let boundary = Foundation.exp2(Double(exponent) + Double(step) / Double(steps))
                    for value in [boundary * (1 - 1e-12), boundary * (1 + 1e-12)] {
                        XCTAssertEqual(ExponentialHistogram.index(of: value, scale: scale), byLogarithm(value, scale), "\(value) at \(scale)")
                    }
                }
            }
        }
        var generator = SeededGenerator(seed: 17)
        var plain = ExponentialHistogram()
        var indexed = ExponentialHistogram()
        for _ in 0..<50_000 {
            // Seven decades of nanoseconds: scales from 20 down past the table's.
            let value = Foundation.pow(10, 2 + 7 * generator.unit()).rounded()
            for scale in Int8(1)...ExponentialHistogram.tableScale {
                XCTAssertEqual(ExponentialHistogram.index(of: value, scale: scale), byLogarithm(value, scale), "\(value) at \(scale)")
            }
            plain.record(value)
            indexed.record(value, tableIndex: ExponentialHistogram.index(of: value, scale: ExponentialHistogram.tableScale))
        }
        XCTAssertLessThan(plain.scale, ExponentialHistogram.tableScale)
        XCTAssertEqual(indexed, plain)
    }

    /// Signals counted by bucket and series come back as a dictionary holds them,
    /// whether their bucket had a row, lost it to later ones, or never had one (a
    /// late span's): time moves on through many buckets while some spans arrive
    /// from older ones.
    func testBucketedSignalsCountAsADictionaryThroughRowsAndLateBuckets() {
        var random = SeededGenerator(seed: 23)
        var bucketed = BucketedSignals()
        var expected: [Aggregator.BucketSeriesID: Signals] = [:]
        var now: UInt64 = 1_000
        for step in 0..<20_000 {
            if step % 700 == 0 { now += 10 }
            let late = random.next() % 8 == 0
            let bucket = late ? now - 10 * (1 + random.next() % 12) : now
            let series = Int32(random.next() % (step < 10_000 ? 40 : 300))
            let request = Signals.Request(
                failed: random.next() % 10 == 0, clientError: false, requestBytes: random.next() % 1_000, responseBytes: 7,
                security: .mutualTLS, duration: Signals.Latency(nanoseconds: 1 + random.next() % 50_000_000), serverDuration: nil)
            bucketed.modify(bucket: bucket, series: series) { $0.count(request) }
            expected[Aggregator.BucketSeriesID(bucket: bucket, series: series), default: Signals()].count(request)
        }
        var seen: [Aggregator.BucketSeriesID: Signals] = [:]
        bucketed.forEach { key, signals in
            XCTAssertNil(seen[key], "\(key) came twice")
            seen[key] = signals
        }
        XCTAssertEqual(bucketed.count, expected.count)
        XCTAssertEqual(Set(seen.keys), Set(expected.keys))
        for (key, signals) in expected {
            XCTAssertEqual(seen[key]?.requests, signals.requests, "\(key)")
            XCTAssertEqual(seen[key]?.errors, signals.errors, "\(key)")
            XCTAssertEqual(seen[key]?.requestBytes, signals.requestBytes, "\(key)")
            XCTAssertEqual(seen[key]?.latency.counts, signals.latency.counts, "\(key)")
        }
    }

    // MARK: Golden signals from MeshSim traffic

    private func signals(_ test: XCTestCase, minimumWindow: Duration = .seconds(10)) throws -> GoldenSignals {
        var configuration = keepingEverything(directory: temporaryDirectory(test) + "/series")
        configuration.minimumPairingWindow = minimumWindow
        return try GoldenSignals(configuration: configuration)
    }

    /// A store in `directory` whose golden signals (in `series/`, keeping MeshSim's
    /// years) follow its WAL, in `shards` shards, with `admission` sampling.
    private func openStore(
        _ directory: String, shards: Int = 2, admission: TailSampler? = nil
    ) throws -> (SpanStore, GoldenSignals) {
        var configuration = keepingEverything(directory: directory + "/series")
        configuration.shards = shards
        let golden = try GoldenSignals(configuration: configuration)
        let store = try SpanStore(configuration: SpanStore.Configuration(dataDirectory: directory), follower: golden, admission: admission)
        return (store, golden)
    }

    /// MeshSim's traffic is from 2023: resolutions that keep it.
    private func keepingEverything(directory: String) -> GoldenSignals.Configuration {
        var configuration = GoldenSignals.Configuration(directory: directory)
        let decade = Duration.seconds(10 * 365 * 86400)
        configuration.resolutions = [
            .init(width: .seconds(10), retention: decade), .init(width: .seconds(60), retention: decade),
            .init(width: .seconds(3600), retention: decade),
        ]
        return configuration
    }

    private let everything: ClosedRange<UInt64> = 0...UInt64.max / 2

    /// Every edge of the ground truth, with exact counts and percentiles within the histogram's bound.
    private func assertMatchesTruth(_ graph: ServiceGraph, _ truth: GroundTruth, file: StaticString = #filePath, line: UInt = #line) {
        var edges: [GroundTruth.Edge: Signals] = [:]
        for edge in graph.edges where edge.connection == .unset {
            edges[GroundTruth.Edge(source: edge.client.service, target: edge.server.service), default: Signals()].merge(edge.signals)
        }
        XCTAssertEqual(Set(edges.keys), Set(truth.edges.keys), file: file, line: line)
        for (key, expected) in truth.edges {
            guard let got = edges[key] else { continue }
            XCTAssertEqual(got.requests, UInt64(expected.requests), "\(key)", file: file, line: line)
            XCTAssertEqual(got.errors, UInt64(expected.errors), "\(key)", file: file, line: line)
            XCTAssertEqual(got.serverLatency.count, UInt64(expected.requests), "\(key)", file: file, line: line)
            for q in [0.5, 0.95, 0.99] {
                let exact = Double(expected.percentile(q))
                let estimate = got.latency.quantile(q)!
                XCTAssertLessThanOrEqual(abs(estimate - exact) / exact, got.latency.relativeError * 1.000_001, "\(key) q\(q)", file: file, line: line)
            }
        }
        let user = graph.edges.filter { $0.client == .user }
        XCTAssertEqual(user.reduce(0) { $0 + $1.signals.requests }, UInt64(truth.requests), "every request entered through the user edge", file: file, line: line)
    }

    func testEdgesAreExactAgainstMeshSimGroundTruth() throws {
        let (requests, simulator) = simulatedRequests(count: 2_000, errorRate: 0.03)
        let golden = try signals(self)
        // What each operation (service, kind, span name) should count, from the spans themselves.
        struct Operation: Hashable { var service: String; var kind: SpanKind; var name: String }
        var expected: [Operation: UInt64] = [:]
        for request in requests {
            let decoded = try received(request)
            for row in 0..<decoded.spans.count {
                let batch = decoded.spans
                expected[Operation(service: batch.serviceName(at: row), kind: batch.kinds[row], name: batch.names[row]), default: 0] += 1
            }
            golden.follow(decoded)
        }
        let graph = golden.serviceGraph(in: everything)
        assertMatchesTruth(graph, simulator.truth)
        let statistics = golden.pairingStatistics
        XCTAssertEqual(statistics.pending, 0)
        XCTAssertEqual(statistics.unpairedClients + statistics.unpairedServers, 0)
        XCTAssertEqual(statistics.roots, UInt64(simulator.truth.requests))
        // Every span counted once per operation series.
        let operations = golden.signals(in: everything).filter { if case .operation = $0.key { return true } else { return false } }
        XCTAssertEqual(operations.values.reduce(0) { $0 + $1.requests }, UInt64(simulator.truth.spans))
        var counted: [Operation: UInt64] = [:]
        for (key, signals) in operations {
            guard case .operation(let workload, let kind, let name) = key else { continue }
            counted[Operation(service: workload.service, kind: kind, name: name), default: 0] += signals.requests
        }
        XCTAssertGreaterThan(expected.count, 10)
        XCTAssertEqual(counted, expected, "each span counted under its own operation")
        // The stated bound is the target's: MeshSim's edges fit a scale of at least 4 (2.17 %).
        XCTAssertTrue(graph.edges.allSatisfy { $0.signals.latency.relativeError <= 0.022 })
    }

    /// Seeded random mutations of a series file's body, with its size and checksum made
    /// to match: reading the file answers or reports it, and a collector that opens a
    /// directory holding a damaged file that still reads serves queries from it.
    func testMutatedSeriesFilesWithMatchingChecksumsNeverCrash() throws {
        let (requests, _) = simulatedRequests(count: 120, seed: 5)
        let directory = temporaryDirectory(self)
        do {
            let (store, _) = try openStore(directory)
            for request in requests { _ = try store.append(try received(request)) }
            try store.seal()
        }
        let series = directory + "/series"
        let name = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: series).first { $0.hasSuffix(".mtr") })
        let original = [UInt8](try Data(contentsOf: URL(fileURLWithPath: series + "/" + name)))
        let header = Array(original[0..<RollupFile.headerSize])
        let body = try Zstd.decompress(original[RollupFile.headerSize...])
        XCTAssertNoThrow(try RollupFile(bytes: original))
        var refused = 0
        var decoded = 0
        for (seed, mutated) in mutations(of: body, count: 2_000, seed: 77).enumerated() {
            let compressed = try Zstd.compress(mutated)
            var bytes = Array(header[0..<24])
            withUnsafeBytes(of: UInt32(mutated.count).littleEndian) { bytes += $0 }
            withUnsafeBytes(of: CRC32C.checksum(compressed).littleEndian) { bytes += $0 }
            bytes += compressed
            guard (try? RollupFile(bytes: bytes)) != nil else {
                refused += 1
                continue
            }
            decoded += 1
            guard decoded % 10 == 1 else { continue }
            // A directory of its own holding the damaged file, opened as the collector would.
            let copy = temporaryDirectory(self) + "/series-\(seed)"
            try FileManager.default.createDirectory(atPath: copy, withIntermediateDirectories: true)
            try Data(bytes).write(to: URL(fileURLWithPath: copy + "/" + name))
            let golden = try GoldenSignals(configuration: keepingEverything(directory: copy))
            _ = golden.signals(in: everything)
            _ = golden.serviceGraph(in: everything)
        }
        XCTAssertGreaterThan(refused, 0)
        XCTAssertGreaterThan(decoded, 0, "some mutations leave a file that still reads")
    }

    func testSignalsSurviveARestartWithoutCountingTwice() throws {
        let (requests, simulator) = simulatedRequests(count: 1_500, seed: 21)
        let directory = temporaryDirectory(self)
        func open() throws -> (SpanStore, GoldenSignals) { try openStore(directory) }
        do {
            let (store, _) = try open()
            for (index, request) in requests.enumerated() {
                _ = try store.append(try received(request))
                // Seal now and then: some signals land in series files, the rest stay in the WAL.
                if index == requests.count / 3 || index == requests.count * 2 / 3 { try store.seal() }
            }
            // No seal at the end: a crash.
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: directory + "/series").filter { $0.hasSuffix(".mtr") }
        XCTAssertEqual(files.count, 2)
        let (store, golden) = try open()
        assertMatchesTruth(golden.serviceGraph(in: everything), simulator.truth)
        // Sealing again and reopening once more changes nothing.
        try store.seal()
        let (_, reopened) = try open()
        assertMatchesTruth(reopened.serviceGraph(in: everything), simulator.truth)
        XCTAssertEqual(reopened.signals(in: everything), golden.signals(in: everything))
    }

    /// Golden signals count every span before sampling: with a sampler that stores 1 %
    /// of traces, and a crash and restart midway, every edge stays exact.
    func testSignalsStayExactWhenSamplingStoresOnePercent() throws {
        let (requests, simulator) = simulatedRequests(count: 1_500, seed: 33)
        let directory = temporaryDirectory(self)
        let policy = try PolicyFile.parse(
            yaml: "policies: [{name: one-percent, type: probabilistic, probabilistic: {sampling_percentage: 1}}]", file: "t.yaml")
        func open() throws -> (SpanStore, GoldenSignals) { try openStore(directory, admission: TailSampler(policy: policy)) }
        do {
            let (store, _) = try open()
            for (index, request) in requests.enumerated() {
                _ = try store.append(try received(request))
                if index == requests.count / 2 { try store.seal() }
            }
            // A crash: no seal.
        }
        let (store, golden) = try open()
        assertMatchesTruth(golden.serviceGraph(in: everything), simulator.truth)
        try store.seal(decidingHeld: true)
        let stored = try store.snapshot().segments.reduce(0) { $0 + (try $1.readBatch().count) }
        XCTAssertGreaterThan(stored, 0)
        XCTAssertLessThan(Double(stored) / Double(simulator.truth.spans), 0.03, "about 1 % of spans stored")
        assertMatchesTruth(golden.serviceGraph(in: everything), simulator.truth)
    }

    /// Requests logged from many threads at once, with seals among them, are counted
    /// in several shards side by side: the counts equal one shard's, a checkpoint
    /// misses no request that was halfway through, and a crash and restart count
    /// each span once.
    func testShardsCountConcurrentRequestsExactlyThroughSealsAndARestart() throws {
        let (requests, simulator) = simulatedRequests(count: 1_200, seed: 41)
        let exports = try requests.map(received)
        let directory = temporaryDirectory(self)
        let keepAll = try PolicyFile.parse(yaml: "policies: [{name: all, type: always_sample}]", file: "t.yaml")
        func open() throws -> (SpanStore, GoldenSignals) { try openStore(directory, shards: 4, admission: TailSampler(policy: keepAll, shards: 4)) }
        do {
            let (store, golden) = try open()
            let failures = Mutex(0)
            let done = DispatchGroup()
            let next = Mutex(0)
            // Four writers take requests in turn; a fifth thread seals while they write.
            for _ in 0..<4 {
                done.enter()
                Thread.detachNewThread {
                    defer { done.leave() }
                    while true {
                        let index = next.withLock { index in defer { index += 1 }; return index }
                        guard index < exports.count else { return }
                        do { _ = try store.append(exports[index]) } catch { failures.withLock { $0 += 1 } }
                    }
                }
            }
            done.enter()
            Thread.detachNewThread {
                defer { done.leave() }
                while next.withLock({ $0 }) < exports.count {
                    do { try store.seal() } catch { failures.withLock { $0 += 1 } }
                    Thread.sleep(forTimeInterval: 0.005)
                }
            }
            done.wait()
            XCTAssertEqual(failures.withLock { $0 }, 0)
            assertMatchesTruth(golden.serviceGraph(in: everything), simulator.truth)
            XCTAssertGreaterThan(try FileManager.default.contentsOfDirectory(atPath: directory + "/series").filter { $0.hasSuffix(".mtr") }.count, 1)

            var oneShard = keepingEverything(directory: temporaryDirectory(self) + "/one")
            oneShard.shards = 1
            let one = try GoldenSignals(configuration: oneShard)
            for export in exports { one.follow(export) }
            XCTAssertEqual(golden.signals(in: everything), one.signals(in: everything), "four shards count what one does")
            XCTAssertEqual(golden.pairingStatistics, one.pairingStatistics)
            // No seal at the end: a crash.
        }
        let (store, golden) = try open()
        assertMatchesTruth(golden.serviceGraph(in: everything), simulator.truth)
        try store.seal(decidingHeld: true)
        let stored = try store.snapshot().segments.flatMap { segment in
            let batch = try segment.readBatch()
            return (0..<batch.count).map { "\(batch.traceIDs[$0]) \(batch.spanIDs[$0]) \(batch.kinds[$0])" }
        }
        XCTAssertEqual(stored.count, simulator.truth.spans, "every span stored")
        XCTAssertEqual(Set(stored).count, stored.count, "none twice")
    }

    /// A seal that comes while a request's spans are logged but still being counted
    /// waits for them: its checkpoint holds their counts, or the WAL file it deletes
    /// would take them along, and a crash would lose them.
    func testASealWaitsForARequestHalfwayThroughItsCounting() throws {
        let (requests, simulator) = simulatedRequests(count: 1_000, seed: 43)
        let whole = try received(ExportTraceServiceRequest.with { $0.resourceSpans = requests.flatMap(\.resourceSpans) })
        let directory = temporaryDirectory(self)
        func open() throws -> (SpanStore, GoldenSignals) { try openStore(directory) }
        do {
            let (store, _) = try open()
            let appended = DispatchSemaphore(value: 0)
            Thread.detachNewThread {
                _ = try? store.append(whole)
                appended.signal()
            }
            // The record is in the log as soon as the WAL counts it; counting its
            // \(whole.spans.count) spans takes longer than that.
            while store.walStatistics.records == 0 { usleep(50) }
            try store.seal()
            appended.wait()
            // A crash: no seal after the request.
        }
        let (store, golden) = try open()
        assertMatchesTruth(golden.serviceGraph(in: everything), simulator.truth)
        try store.seal()
        XCTAssertEqual(try store.snapshot().segments.reduce(0) { $0 + (try $1.readBatch().count) }, simulator.truth.spans)
    }

    func testAFailedCheckpointKeepsItsWALFileForTheSeriesEvenWhenAToolOpensTheStore() throws {
        let (requests, simulator) = simulatedRequests(count: 600, seed: 13)
        let directory = temporaryDirectory(self)
        let series = directory + "/series"
        func open() throws -> (SpanStore, GoldenSignals) {
            let golden = try GoldenSignals(configuration: keepingEverything(directory: series))
            return (try SpanStore(configuration: SpanStore.Configuration(dataDirectory: directory), follower: golden), golden)
        }
        do {
            let (store, _) = try open()
            for request in requests.prefix(requests.count / 2) { _ = try store.append(try received(request)) }
            try store.seal()
            for request in requests.suffix(from: requests.count / 2) { _ = try store.append(try received(request)) }
            // The next series file cannot be written (a directory stands where its temporary
            // file would go): the segment is written, the checkpoint fails, the WAL file stays.
            let walFiles = try FileManager.default.contentsOfDirectory(atPath: directory + "/wal").sorted()
            let sequence = UInt64(walFiles.last!.dropFirst(4).dropLast(4), radix: 16)!
            let blocker = series + "/" + String(format: "series-%016llx.mtr.tmp", sequence)
            try FileManager.default.createDirectory(atPath: blocker, withIntermediateDirectories: false)
            XCTAssertThrowsError(try store.seal())
            try FileManager.default.removeItem(atPath: blocker)
        }
        // A tool (segments compact, retain) opens the store without the series: it must
        // not delete the WAL file the segments cover but the series do not.
        do {
            let tool = try SpanStore(configuration: SpanStore.Configuration(dataDirectory: directory))
            _ = try tool.compact()
        }
        let (_, golden) = try open()
        assertMatchesTruth(golden.serviceGraph(in: everything), simulator.truth)
    }

    func testHalvesWaitingAtACheckpointPairAfterARestart() throws {
        let (requests, simulator) = simulatedRequests(count: 400, seed: 5)
        let directory = temporaryDirectory(self)
        func open(shards: Int = 2) throws -> (SpanStore, GoldenSignals) { try openStore(directory, shards: shards) }
        // Requests are per pod: sealing halfway leaves CLIENT spans whose SERVER span comes later.
        // Reopened with another number of shards, each half goes to its trace's shard.
        do {
            let (store, golden) = try open(shards: 3)
            for request in requests.prefix(requests.count / 2) { _ = try store.append(try received(request)) }
            XCTAssertGreaterThan(golden.pairingStatistics.pending, 0)
            try store.seal()
        }
        let (store, golden) = try open()
        XCTAssertGreaterThan(golden.pairingStatistics.pending, 0, "the waiting halves came back from the series file")
        for request in requests.suffix(from: requests.count / 2) { _ = try store.append(try received(request)) }
        assertMatchesTruth(golden.serviceGraph(in: everything), simulator.truth)
        XCTAssertEqual(golden.pairingStatistics.pending, 0)
    }

    // MARK: Unpaired halves

    private func span(
        trace: TraceID, id: UInt64, parent: UInt64, kind: OTLPSpan.SpanKind, end: UInt64, attributes: [KeyValue] = [],
        status: Int64 = 200
    ) -> OTLPSpan {
        var span = OTLPSpan()
        span.traceID = Data(trace.bytes)
        span.spanID = Data(SpanID(id).bytes)
        if parent != 0 { span.parentSpanID = Data(SpanID(parent).bytes) }
        span.name = "GET /"
        span.kind = kind
        span.startTimeUnixNano = end - 5_000_000
        span.endTimeUnixNano = end
        span.attributes = attributes + [KeyValue("http.response.status_code", status)]
        return span
    }

    private func request(service: String, spans: [OTLPSpan]) -> ExportTraceServiceRequest {
        var resourceSpans = ResourceSpans()
        resourceSpans.resource.attributes = [KeyValue("service.name", service), KeyValue("k8s.namespace.name", "shop")]
        var scope = ScopeSpans()
        scope.spans = spans
        resourceSpans.scopeSpans = [scope]
        var request = ExportTraceServiceRequest()
        request.resourceSpans = [resourceSpans]
        return request
    }

    func testUnpairedHalvesBecomeNamedVirtualEdgesAfterTheirWindow() throws {
        let golden = try signals(self, minimumWindow: .milliseconds(1))
        let trace = TraceID(high: 1, low: 2)
        let end: UInt64 = 1_700_000_000_000_000_000
        // A CLIENT span to a database, one to a service without a sidecar, and a SERVER
        // span whose caller sent no CLIENT span.
        golden.follow(try received(request(service: "orders", spans: [
            span(trace: trace, id: 10, parent: 1, kind: .client, end: end,
                 attributes: [KeyValue("db.system", "postgresql"), KeyValue("db.namespace", "orders-db")]),
            span(trace: trace, id: 11, parent: 1, kind: .client, end: end,
                 attributes: [KeyValue("upstream_cluster", "outbound|80||legacy.shop.svc.cluster.local")], status: 502),
        ])))
        golden.follow(try received(request(service: "payments", spans: [
            span(trace: trace, id: 20, parent: 99, kind: .server, end: end, attributes: [KeyValue("connection_security_policy", "mutual_tls")]),
        ])))
        XCTAssertEqual(golden.pairingStatistics.pending, 3)
        Thread.sleep(forTimeInterval: 0.01)
        golden.expirePairs()
        let statistics = golden.pairingStatistics
        XCTAssertEqual(statistics.pending, 0)
        XCTAssertEqual(statistics.unpairedClients, 2)
        XCTAssertEqual(statistics.unpairedServers, 1)

        let graph = golden.serviceGraph(in: everything)
        let edges = Dictionary(uniqueKeysWithValues: graph.edges.map { ("\($0.client.service)->\($0.server.service)", $0) })
        XCTAssertEqual(edges["orders->orders-db"]?.connection, .database)
        XCTAssertEqual(edges["orders->legacy.shop.svc.cluster.local"]?.connection, .virtualNode)
        XCTAssertEqual(edges["orders->legacy.shop.svc.cluster.local"]?.signals.errors, 1)
        XCTAssertEqual(edges["unknown->payments"]?.connection, .virtualNode)
        XCTAssertEqual(edges["unknown->payments"]?.signals.mutualTLS, 1)
        XCTAssertEqual(Set(graph.virtualNodes), ["orders-db", "legacy.shop.svc.cluster.local", "unknown"])

        // The partner arriving after its half left is not counted again.
        golden.follow(try received(request(service: "legacy", spans: [
            span(trace: trace, id: 30, parent: 11, kind: .server, end: end),
        ])))
        XCTAssertEqual(golden.pairingStatistics.late, 1)
        XCTAssertEqual(golden.pairingStatistics.pending, 0)
        XCTAssertEqual(golden.serviceGraph(in: everything).edges.count, graph.edges.count)
    }

    func testPrometheusExpositionCarriesGrafanasServiceGraphNames() throws {
        for nanoseconds in PrometheusTotals.boundNanoseconds.flatMap({ [$0 - 1, $0, $0 + 1] }) + [0, 1, 1 << 40, .max] {
            let seconds = Double(nanoseconds) / 1e9
            XCTAssertEqual(PrometheusTotals.bucket(ofNanoseconds: nanoseconds), PrometheusTotals.bounds.filter { $0 < seconds }.count, "\(nanoseconds)")
        }
        let (requests, simulator) = simulatedRequests(count: 300, errorRate: 0.05)
        let golden = try signals(self)
        for request in requests { golden.follow(try received(request)) }
        let text = golden.prometheusText()
        for (edge, stats) in simulator.truth.edges {
            let labels = "client=\"\(edge.source)\",server=\"\(edge.target)\""
            let line = text.split(separator: "\n").first { $0.hasPrefix("traces_service_graph_request_total{\(labels)") }
            XCTAssertNotNil(line, "\(edge)")
            XCTAssertEqual(line.flatMap { $0.split(separator: " ").last.map(String.init) }, String(stats.requests))
            let failed = text.split(separator: "\n").first { $0.hasPrefix("traces_service_graph_request_failed_total{\(labels)") }
            XCTAssertEqual(failed.flatMap { $0.split(separator: " ").last.map(String.init) }, String(stats.errors))
            // Each cumulative bucket holds exactly the client-side durations at or under its bound
            // (the nanoseconds on either side of each bound are placed as seconds compare).
            for bound in PrometheusTotals.bounds + [.infinity] {
                let le = bound.isInfinite ? "+Inf" : "\(bound)"
                let bucket = text.split(separator: "\n").first {
                    $0.hasPrefix("traces_service_graph_request_client_seconds_bucket{\(labels)") && $0.contains("le=\"\(le)\"")
                }
                let expected = stats.durations.filter { Double($0) / 1e9 <= bound }.count
                XCTAssertEqual(bucket.flatMap { $0.split(separator: " ").last.map(String.init) }, String(expected), "\(edge) le \(le)")
            }
        }
        for name in ["traces_service_graph_request_server_seconds_bucket", "traces_service_graph_request_client_seconds_sum",
                     "traces_spanmetrics_calls_total", "traces_spanmetrics_latency_bucket", "span_kind=\"SPAN_KIND_SERVER\"",
                     "client=\"user\"", "le=\"+Inf\""] {
            XCTAssertTrue(text.contains(name), name)
        }
    }

    // MARK: Proxies' OTLP metrics

    /// Istio's request counter from one proxy: `count` requests with `code`, cumulative since `start`.
    private func istioRequests(_ count: Int64, code: String, start: UInt64, at time: UInt64, reporter: String = "destination",
                               temporality: Opentelemetry_Proto_Metrics_V1_AggregationTemporality = .cumulative) -> ExportMetricsServiceRequest {
        var point = Opentelemetry_Proto_Metrics_V1_NumberDataPoint()
        point.asInt = count
        point.startTimeUnixNano = start
        point.timeUnixNano = time
        point.attributes = [
            KeyValue("reporter", reporter), KeyValue("source_workload", "frontend"), KeyValue("source_workload_namespace", "shop"),
            KeyValue("destination_canonical_service", "cart"), KeyValue("destination_canonical_revision", "v2"),
            KeyValue("destination_workload_namespace", "shop"), KeyValue("response_code", code),
            KeyValue("connection_security_policy", "mutual_tls"),
        ]
        var metric = Opentelemetry_Proto_Metrics_V1_Metric()
        metric.name = "istio_requests_total"
        metric.sum.aggregationTemporality = temporality
        metric.sum.isMonotonic = true
        metric.sum.dataPoints = [point]
        var request = ExportMetricsServiceRequest()
        request.resourceMetrics = [.init()]
        request.resourceMetrics[0].scopeMetrics = [.init()]
        request.resourceMetrics[0].scopeMetrics[0].metrics = [metric]
        return request
    }

    private func reported(_ golden: GoldenSignals) -> Signals {
        golden.signals(in: everything).filter { if case .reported = $0.key { return true } else { return false } }
            .values.reduce(into: Signals()) { $0.merge($1) }
    }

    func testCumulativeProxyCountersCountTheirIncreaseAndSurviveRestartsAndResets() throws {
        let directory = temporaryDirectory(self)
        let start = UInt64(Date().timeIntervalSince1970 * 1e9) + 1_000_000_000  // began after the store: counts whole
        func open() throws -> (SpanStore, GoldenSignals) { try openStore(directory) }
        func send(_ store: SpanStore, _ request: ExportMetricsServiceRequest) throws {
            try store.appendMetrics(request, encoded: try request.serializedBytes())
        }
        do {
            let (store, golden) = try open()
            try send(store, istioRequests(10, code: "200", start: start, at: start + 10_000_000_000))
            try send(store, istioRequests(4, code: "503", start: start, at: start + 10_000_000_000))
            try send(store, istioRequests(25, code: "200", start: start, at: start + 20_000_000_000))
            try send(store, istioRequests(25, code: "200", start: start, at: start + 30_000_000_000))  // nothing new
            var signals = reported(golden)
            XCTAssertEqual(signals.requests, 29)
            XCTAssertEqual(signals.errors, 4)
            XCTAssertEqual(signals.mutualTLS, 29)
            try store.seal()  // the streams' last points go into the series file
            try send(store, istioRequests(30, code: "200", start: start, at: start + 40_000_000_000))
            signals = reported(golden)
            XCTAssertEqual(signals.requests, 34)
        }
        // After a crash: the series file, then the WAL, and the next point counts only its increase.
        let (store, golden) = try open()
        XCTAssertEqual(reported(golden).requests, 34)
        try send(store, istioRequests(31, code: "200", start: start, at: start + 50_000_000_000))
        XCTAssertEqual(reported(golden).requests, 35)
        // The proxy restarted: its counter went back down, and counts whole.
        try send(store, istioRequests(2, code: "200", start: start + 60_000_000_000, at: start + 70_000_000_000))
        XCTAssertEqual(reported(golden).requests, 37)
        // A delta counter counts as it is.
        try send(store, istioRequests(5, code: "404", start: 0, at: start + 70_000_000_000, temporality: .delta))
        XCTAssertEqual(reported(golden).requests, 42)
        XCTAssertEqual(reported(golden).clientErrors, 5)
        // A stream that began before the store did is a baseline first.
        try send(store, istioRequests(1_000, code: "200", start: 1, at: start + 80_000_000_000, reporter: "source"))
        XCTAssertEqual(reported(golden).requests, 42)
        try send(store, istioRequests(1_003, code: "200", start: 1, at: start + 90_000_000_000, reporter: "source"))
        XCTAssertEqual(reported(golden).requests, 45)

        let graph = golden.serviceGraph(in: everything)
        XCTAssertEqual(Set(graph.reported.map(\.reporter)), ["destination", "source"])
        XCTAssertTrue(graph.reported.allSatisfy { $0.client.service == "frontend" && $0.server == Workload(service: "cart", namespace: "shop", version: "v2") })
        XCTAssertTrue(graph.edges.isEmpty, "metrics alone make no span edges")
    }

    func testProxyLatencyHistogramsFoldIntoTheEdgesLatency() throws {
        let golden = try signals(self)
        let start = UInt64(Date().timeIntervalSince1970 * 1e9) + 1_000_000_000
        let labels = [KeyValue("source_workload", "frontend"), KeyValue("destination_workload", "cart"), KeyValue("reporter", "destination")]
        // Explicit buckets in milliseconds, cumulative: 3 requests in (10, 25], then 1 more in (100, 250].
        func explicit(_ counts: [UInt64], sum: Double) -> ExportMetricsServiceRequest {
            var point = Opentelemetry_Proto_Metrics_V1_HistogramDataPoint()
            point.startTimeUnixNano = start
            point.timeUnixNano = start + 10_000_000_000
            point.explicitBounds = [0, 5, 10, 25, 50, 100, 250]
            point.bucketCounts = counts
            point.count = counts.reduce(0, +)
            point.sum = sum
            point.attributes = labels
            var metric = Opentelemetry_Proto_Metrics_V1_Metric()
            metric.name = "istio_request_duration_milliseconds"
            metric.unit = "ms"
            metric.histogram.aggregationTemporality = .cumulative
            metric.histogram.dataPoints = [point]
            var request = ExportMetricsServiceRequest()
            request.resourceMetrics = [.init()]
            request.resourceMetrics[0].scopeMetrics = [.init()]
            request.resourceMetrics[0].scopeMetrics[0].metrics = [metric]
            return request
        }
        golden.follow(metrics: explicit([0, 0, 0, 3, 0, 0, 0, 0], sum: 45))
        golden.follow(metrics: explicit([0, 0, 0, 3, 0, 0, 1, 0], sum: 245))
        var latency = reported(golden).latency
        XCTAssertEqual(latency.count, 4)
        XCTAssertEqual(latency.quantile(0.5)! / 1e6, (10.0 * 25).squareRoot(), accuracy: 0.5)
        XCTAssertEqual(latency.quantile(1)! / 1e6, (100.0 * 250).squareRoot(), accuracy: 3)

        // An exponential histogram in seconds, delta: two requests near 0.1 s.
        var point = Opentelemetry_Proto_Metrics_V1_ExponentialHistogramDataPoint()
        point.timeUnixNano = start + 20_000_000_000
        point.scale = 3
        point.positive.offset = -27  // (2^(-27/8), 2^(-26/8)] ≈ (0.0962, 0.105] seconds
        point.positive.bucketCounts = [2]
        point.count = 2
        point.sum = 0.2
        point.attributes = labels
        var metric = Opentelemetry_Proto_Metrics_V1_Metric()
        metric.name = "istio.request.duration"
        metric.unit = "s"
        metric.exponentialHistogram.aggregationTemporality = .delta
        metric.exponentialHistogram.dataPoints = [point]
        var request = ExportMetricsServiceRequest()
        request.resourceMetrics = [.init()]
        request.resourceMetrics[0].scopeMetrics = [.init()]
        request.resourceMetrics[0].scopeMetrics[0].metrics = [metric]
        golden.follow(metrics: request)
        latency = reported(golden).latency
        XCTAssertEqual(latency.count, 6)
        XCTAssertEqual(latency.quantile(0.8)! / 1e9, 0.1, accuracy: 0.006)
    }

    // MARK: Resolutions

    func testSeriesRollUpToCoarserResolutionsAndExpireWithoutChangingTotals() throws {
        let now = GoldenSignals.wallClock()
        let (requests, simulator) = simulatedRequests(count: 600, seed: 9, start: now - 3 * 3_600_000_000_000)
        let directory = temporaryDirectory(self)
        func open() throws -> (SpanStore, GoldenSignals) {
            var configuration = GoldenSignals.Configuration(directory: directory + "/series")
            configuration.resolutions = [
                .init(width: .seconds(10), retention: .seconds(60)), .init(width: .seconds(60), retention: .seconds(3600)),
                .init(width: .seconds(3600), retention: .seconds(86400)),
            ]
            let golden = try GoldenSignals(configuration: configuration)
            return (try SpanStore(configuration: SpanStore.Configuration(dataDirectory: directory), follower: golden), golden)
        }
        let (store, golden) = try open()
        for (index, request) in requests.enumerated() {
            _ = try store.append(try received(request))
            if index % 10 == 9 { try store.seal() }
        }
        try store.seal()
        let before = golden.signals(in: everything)
        assertMatchesTruth(golden.serviceGraph(in: everything), simulator.truth)
        XCTAssertGreaterThan(golden.seriesFiles[10_000_000_000] ?? 0, 1)

        // Three hours old: past the 10-second and the 1-minute retention, within the hour's.
        let (rolledUp, expired) = try golden.rollUp(now: now)
        XCTAssertGreaterThan(rolledUp, 2)
        XCTAssertEqual(expired, 0)
        XCTAssertEqual(golden.seriesFiles, [3_600_000_000_000: 1])
        XCTAssertEqual(golden.signals(in: everything), before)
        let names = try FileManager.default.contentsOfDirectory(atPath: directory + "/series").filter { $0.hasSuffix(".mtr") }
        XCTAssertEqual(names.count, 1)
        XCTAssertTrue(names[0].hasSuffix("-3600s-" + names[0].split(separator: "-").last!), names[0])

        // Reopened, the hourly file alone answers the same.
        let (_, reopened) = try open()
        XCTAssertEqual(reopened.signals(in: everything), before)
        assertMatchesTruth(reopened.serviceGraph(in: everything), simulator.truth)

        // A day later the hourly buckets expire too.
        XCTAssertEqual(try reopened.rollUp(now: now + 2 * 86_400_000_000_000).expired, 1)
        XCTAssertTrue(reopened.signals(in: everything).isEmpty)
    }

    func testPackedBucketsAnswerExactlyAsOpenOnesAndAsMergingRowByRow() {
        let second: UInt64 = 1_000_000_000
        var tiers = Tiers(resolutions: [(10 * second, 1_000_000 * second), (60 * second, 1_000_000 * second), (3600 * second, 1_000_000 * second)])
        var generator = SeededGenerator(seed: 29)
        let start: UInt64 = 2_000 * 3600 * second
        let now = start + 3 * 3600 * second
        var reference: [Int32: Signals] = [:]
        for bucket in stride(from: start, to: start + 2 * 3600 * second, by: Int(10 * second)) {
            for series in Int32(0)..<12 where generator.unit() < 0.7 {
                var row = Signals()
                // Some series see a request now and then, some many, some huge counts.
                let requests = series % 3 == 0 ? 1 : series % 3 == 1 ? 40 : 3
                for _ in 0..<requests {
                    row.count(Signals.Request(
                        failed: generator.unit() < 0.05, clientError: false, requestBytes: 100, responseBytes: 2_000,
                        security: .mutualTLS,
                        duration: Signals.Latency(nanoseconds: UInt64(generator.logNormal(median: Double(series + 1) * 1e6, sigma: 0.8))),
                        serverDuration: series % 2 == 0 ? Signals.Latency(nanoseconds: UInt64(generator.logNormal(median: 1e6, sigma: 0.3))) : nil))
                }
                if series == 5 { row.latency.record(3e6, times: 100_000) }
                tiers.add(row, series: series, bucket: bucket, resolution: 10 * second, now: now)
                reference[series, default: Signals()].merge(row)
            }
        }
        let windows: [ClosedRange<UInt64>] = [
            start...(start + 2 * 3600 * second - 1),
            (start + 1_234 * second)...(start + 2 * 3600 * second - 1),
            (start + 35 * second)...(start + 5_000 * second),
        ]
        let open = windows.map { tiers.signals(in: $0) }
        XCTAssertEqual(open[0], reference)
        tiers.pack(endedBefore: .max)
        for (window, answer) in zip(windows, open) {
            XCTAssertEqual(tiers.signals(in: window), answer)
        }
        // Some series only: the rest are not merged at all.
        let even = tiers.signals(in: windows[1], including: { $0 % 2 == 0 })
        XCTAssertEqual(Set(even.keys), Set(open[1].keys.filter { $0 % 2 == 0 }))
        for (series, signals) in even { XCTAssertEqual(signals, open[1][series]) }
    }

    func testAQueryMergesCoarseBucketsInsideTheWindowAndFineOnesAtItsEnds() throws {
        let second: UInt64 = 1_000_000_000
        var tiers = Tiers(resolutions: [(10 * second, 1_000_000 * second), (60 * second, 1_000_000 * second), (3600 * second, 1_000_000 * second)])
        let series: Int32 = 7
        var one = Signals()
        one.requests = 1
        // One request in every 10-second bucket for three hours.
        let start: UInt64 = 1_000 * 3600 * second
        for bucket in stride(from: start, to: start + 3 * 3600 * second, by: Int(10 * second)) {
            tiers.add(one, series: series, bucket: bucket, resolution: 10 * second, now: start + 4 * 3600 * second)
        }
        func count(_ lower: UInt64, _ upper: UInt64) -> UInt64 { tiers.signals(in: lower...upper - 1)[series]?.requests ?? 0 }
        XCTAssertEqual(count(start, start + 3 * 3600 * second), 3 * 360)
        // 20 s into the first hour to 30 s into the third: every 10-second bucket overlapping.
        XCTAssertEqual(count(start + 20 * second, start + 2 * 3600 * second + 30 * second), 360 * 2 - 2 + 3)
        // A window inside one 10-second bucket still sees it.
        XCTAssertEqual(count(start + 3 * second, start + 4 * second), 1)

        // Packed, the buckets answer the same; a late row opens its bucket again.
        let before = tiers.signals(in: start...(start + 3 * 3600 * second - 1))
        tiers.pack(endedBefore: .max)
        XCTAssertEqual(tiers.signals(in: start...(start + 3 * 3600 * second - 1)), before)
        XCTAssertEqual(count(start + 20 * second, start + 2 * 3600 * second + 30 * second), 360 * 2 - 2 + 3)
        var late = Signals()
        late.requests = 5
        late.latency.record(1_000_000)
        tiers.add(late, series: series, bucket: start + 30 * second, resolution: 10 * second, now: start + 4 * 3600 * second)
        XCTAssertEqual(count(start, start + 3 * 3600 * second), 3 * 360 + 5)
        XCTAssertEqual(count(start + 30 * second, start + 31 * second), 6)
        XCTAssertEqual(tiers.signals(in: start...(start + 3 * 3600 * second - 1))[series]?.latency.count, 1)
    }
}
