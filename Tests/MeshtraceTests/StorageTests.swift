import Compression
import Foundation
import MeshCore
import MeshSim
import OTLPWire
import QueryEngine
@testable import SegmentStore
import SwiftProtobuf
import Synchronization
import XCTest

final class StorageTests: XCTestCase {
    private func batch(_ requests: [ExportTraceServiceRequest]) -> SpanBatch {
        var batch = SpanBatch()
        for request in requests { batch.append(request) }
        return batch
    }

    private func wireFixture() throws -> ExportTraceServiceRequest {
        let url = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/wire/trace_export_request", withExtension: "binpb"))
        return try ExportTraceServiceRequest(serializedBytes: try Data(contentsOf: url))
    }

    func testSegmentRoundTripIsLosslessForMeshSimTraffic() throws {
        let (requests, _) = simulatedRequests(count: 300)
        let original = batch(requests)
        let path = temporaryDirectory(self) + "/one.mts"
        try SegmentWriter.write(original, walSequence: 9, to: path)

        let reader = try SegmentReader(path: path)
        XCTAssertEqual(reader.footer.spanCount, original.count)
        XCTAssertEqual(reader.footer.walSequence, 9)
        XCTAssertEqual(reader.footer.traceCount, 300)
        XCTAssertTrue(reader.footer.services.contains("frontend"))
        let restored = try reader.readBatch()
        XCTAssertEqual(restored.traceIDs, restored.traceIDs.sorted(), "rows are sorted by trace id")
        XCTAssertEqual(canonicalSpans(try restored.tracesData()), canonicalSpans(tracesData(requests)))
    }

    /// A segment's rows follow `traceOrder()`: every row once, in the order a plain
    /// comparison sort gives — for random 128-bit ids, for 64-bit ids (every high half
    /// zero, as Zipkin and Envoy send them), for traces longer than a run the radix
    /// pass leaves to a comparison sort, and for spans equal in trace, start and id.
    func testTraceOrderMatchesAComparisonSort() {
        var random = SystemRandomNumberGenerator()
        for (highs, traces, spansPerTrace) in [(UInt64.max, 500, 1...12), (0, 300, 1...12), (7, 20, 30...90)] as [(UInt64, Int, ClosedRange<Int>)] {
            var batch = SpanBatch()
            let resource = batch.intern(resource: ResourceEntry(serviceName: "a", encoded: []))
            let scope = batch.intern(scope: [])
            let ids = (0..<traces).map { _ in TraceID(high: UInt64.random(in: 0...highs, using: &random), low: random.next()) }
            var rows: [SpanBatch.Row] = []
            for trace in ids {
                for _ in 0..<Int.random(in: spansPerTrace, using: &random) {
                    let start = UInt64.random(in: 1...4, using: &random)
                    rows.append(SpanBatch.Row(
                        traceID: trace, spanID: SpanID(UInt64.random(in: 1...3, using: &random)), parentSpanID: .zero,
                        name: "op", kind: .server, startTime: start, endTime: start + 1, statusCode: .unset,
                        statusMessage: "", httpStatusCode: 200, resourceIndex: resource, scopeIndex: scope,
                        attributes: [], extras: []))
                }
            }
            rows.shuffle(using: &random)
            for row in rows { batch.append(row) }
            let expected = (0..<batch.count).sorted { a, b in
                (batch.traceIDs[a], batch.startTimes[a], batch.spanIDs[a].value, a)
                    < (batch.traceIDs[b], batch.startTimes[b], batch.spanIDs[b].value, b)
            }
            let order = batch.traceOrder()
            XCTAssertEqual(order.count, expected.count)
            let firstDifference = expected.indices.first { $0 >= order.count || order[$0] != expected[$0] }
            XCTAssertNil(firstDifference, "high halves up to \(highs): the orders part at this position")
        }
    }

    /// The attribute scanner reads an entry whose lengths each fit one byte without a
    /// wire reader, and every other entry with one: both must find the same key, type
    /// and value — integers of one to ten varint bytes, strings on either side of the
    /// one-byte length, booleans, doubles, bytes and an empty value — and both must
    /// refuse what the columns cannot reproduce.
    func testAttributeScannerReadsShortAndLongEntriesAlike() throws {
        // A `KeyValueList` entry: field 1, a KeyValue of key (1) and, when given, value (2).
        func entry(_ key: [UInt8], _ anyValue: [UInt8]?) -> [UInt8] {
            field(1, field(1, key) + (anyValue.map { field(2, $0) } ?? []))
        }
        var list: [UInt8] = []
        var expected: [(key: [UInt8], type: AttributeType, scalar: UInt64, bytes: [UInt8])] = []
        let integers: [UInt64] = [0, 1, 127, 128, 300, 1 << 20, 1 << 35, (1 << 56) + 9, 1 << 62, UInt64.max]
        for (index, number) in integers.enumerated() {
            let key = Array("n\(index)".utf8)
            list += entry(key, [0x18] + varint(number))
            expected.append((key, .int, number, []))
        }
        for length in [0, 1, 60, 117, 118, 200] {
            let key = Array("s\(length)".utf8)
            let text = (0..<length).map { UInt8(ascii: "a") + UInt8($0 % 26) }
            list += entry(key, [0x0A] + varint(UInt64(length)) + text)
            expected.append((key, .string, 0, text))
        }
        let longKey = [UInt8](repeating: UInt8(ascii: "k"), count: 130)
        list += entry(longKey, [0x0A, 0x01, UInt8(ascii: "v")])
        expected.append((longKey, .string, 0, [UInt8(ascii: "v")]))
        for flag: UInt64 in [0, 1] {
            list += entry(Array("b\(flag)".utf8), [0x10, UInt8(flag)])
            expected.append((Array("b\(flag)".utf8), .bool, flag, []))
        }
        let bits = (2.5).bitPattern
        list += entry(Array("d".utf8), [0x21] + (0..<8).map { UInt8(truncatingIfNeeded: bits >> UInt64($0 * 8)) })
        expected.append((Array("d".utf8), .double, bits, []))
        let bytesValue: [UInt8] = [0x3A, 0x02, 0xFF, 0x00]
        list += entry(Array("raw".utf8), bytesValue)
        expected.append((Array("raw".utf8), .other, 0, bytesValue))
        list += entry(Array("none".utf8), nil)
        expected.append((Array("none".utf8), .absent, 0, []))
        list += entry(Array("empty".utf8), [])
        expected.append((Array("empty".utf8), .other, 0, []))

        let scanned = try XCTUnwrap(AttributeCoding.scan(list))
        XCTAssertEqual(scanned.count, expected.count)
        for (attribute, want) in zip(scanned, expected) {
            let name = String(decoding: want.key, as: UTF8.self)
            XCTAssertEqual(Array(attribute.key), want.key)
            XCTAssertEqual(attribute.type, want.type, name)
            XCTAssertEqual(attribute.scalar, want.scalar, name)
            XCTAssertEqual(Array(attribute.bytes), want.bytes, name)
        }

        // Refused on either path: a boolean of 2, an integer's varint cut short, a
        // value with a second field, a value before its key, an entry past the end.
        let refused: [[UInt8]] = [
            entry(Array("b".utf8), [0x10, 0x02]),
            entry(Array("n".utf8), [0x18, 0x80]),
            entry(Array("n".utf8), [0x18, 0x01, 0x18, 0x01]),
            [0x0A, 0x06, 0x12, 0x02, 0x10, 0x01, 0x0A, 0x00],
            Array(entry(Array("s".utf8), [0x0A, 0x01, 0x41]).dropLast()),
        ]
        for (index, bad) in refused.enumerated() {
            XCTAssertNil(AttributeCoding.scan(list + bad), "case \(index)")
            XCTAssertNil(AttributeCoding.scan(bad + list), "case \(index), first")
        }
    }


    func testValueWritersCodeEveryRecentValueAsARepeatAndReadBack() throws {
        // The writers' lists slide through their memory and are searched by
        // fingerprint; a reference move-to-front list says what each write must be: a
        // value among the last 64 distinct ones is one varint naming its position,
        // any other is new. Everything written reads back through the readers.
        let lists = ListArena()
        var strings = StringValueWriter(in: lists)
        var integers = IntegerValueWriter(in: lists)
        var stringBytes = ByteWriter()
        var integerBytes = ByteWriter()
        var recentStrings: [[UInt8]] = []
        var recentIntegers: [UInt64] = []
        var writtenStrings: [[UInt8]] = []
        var writtenIntegers: [UInt64] = []
        var restarts: [(strings: Int, integers: Int)] = []
        var random = SeededGenerator(seed: 7)
        func uuid(_ high: UInt64, _ low: UInt64) -> String {
            func hex(_ value: UInt64) -> String {
                let digits = String(value, radix: 16)
                return String(repeating: "0", count: 16 - digits.count) + digits
            }
            let digits = hex(high) + hex(low)
            return [0..<8, 8..<12, 12..<16, 16..<20, 20..<32].map { range in
                String(digits.dropFirst(range.lowerBound).prefix(range.count))
            }.joined(separator: "-")
        }
        for step in 0..<20_000 {
            if step % 5_000 == 4_999 {
                strings.restart()
                integers.restart()
                recentStrings.removeAll()
                recentIntegers.removeAll()
                restarts.append((stringBytes.count, integerBytes.count))
            }
            // Mostly values from the list, at any position and just past its end; some new.
            let pick = Int(random.next() % 80)
            let string: [UInt8]
            let integer: UInt64
            if pick < recentStrings.count {
                string = recentStrings[pick]
                integer = recentIntegers[min(pick, recentIntegers.count - 1)]
            } else {
                let shape = random.next() % 3
                let number = random.next() % 100_000
                string = shape == 0 ? Array("/api/items/\(number)".utf8)
                    : shape == 1 ? Array(uuid(random.next(), random.next()).utf8) : Array("plain-\(number)-text".utf8)
                integer = random.next() % 400
            }
            let stringStart = stringBytes.count
            string.withUnsafeBufferPointer { strings.write($0, to: &stringBytes) }
            let stringCode = Array(stringBytes.bytes[stringStart...])
            if let position = recentStrings.firstIndex(of: string) {
                XCTAssertEqual(stringCode, varint(UInt64(position + 3)), "step \(step): a string at position \(position)")
                recentStrings.remove(at: position)
            } else {
                XCTAssertLessThan(stringCode.first ?? 255, 3, "step \(step): a new string is coded as new")
            }
            recentStrings.insert(string, at: 0)
            if recentStrings.count > 64 { recentStrings.removeLast() }

            let integerStart = integerBytes.count
            integers.write(integer, to: &integerBytes)
            let integerCode = Array(integerBytes.bytes[integerStart...])
            if let position = recentIntegers.firstIndex(of: integer) {
                XCTAssertEqual(integerCode, varint(UInt64(position + 1)), "step \(step): an integer at position \(position)")
                recentIntegers.remove(at: position)
            } else {
                XCTAssertEqual(integerCode.first, 0, "step \(step): a new integer is coded as new")
            }
            recentIntegers.insert(integer, at: 0)
            if recentIntegers.count > 64 { recentIntegers.removeLast() }
            writtenStrings.append(string)
            writtenIntegers.append(integer)
        }
        withExtendedLifetime(lists) {}

        let stringChunk = stringBytes.bytes
        var stringReader = ByteReader(stringChunk)
        var integerReader = ByteReader(integerBytes.bytes)
        var readStrings = StringValueReader()
        var readIntegers = IntegerValueReader()
        var nextRestart = 0
        for step in writtenStrings.indices {
            if nextRestart < restarts.count && restarts[nextRestart].strings == stringReader.offset {
                XCTAssertEqual(restarts[nextRestart].integers, integerReader.offset)
                readStrings.restart()
                readIntegers.restart()
                nextRestart += 1
            }
            XCTAssertEqual(Array(try readStrings.read(from: &stringReader).bytes(in: stringChunk)), writtenStrings[step], "step \(step)")
            XCTAssertEqual(try readIntegers.read(from: &integerReader), writtenIntegers[step], "step \(step)")
        }
        XCTAssertEqual(stringReader.remaining, 0)
        XCTAssertEqual(integerReader.remaining, 0)
    }
    func testSegmentRoundTripKeepsEveryOTLPField() throws {
        let request = try wireFixture()
        let original = batch([request])
        XCTAssertEqual(original.count, 2)
        let path = temporaryDirectory(self) + "/fields.mts"
        try SegmentWriter.write(original, walSequence: 1, to: path)
        let restored = try SegmentReader(path: path).readBatch()
        // The fixture's second ResourceSpans has no spans, so it carries nothing to keep.
        var expected = tracesData([request])
        expected.resourceSpans.removeLast()
        XCTAssertEqual(canonicalSpans(try restored.tracesData()), canonicalSpans(expected))
    }

    func testLookupReturnsExactlyEachTraceWhereverItSitsInItsBlockAndRun() throws {
        // About 12,000 spans in 1,024-span blocks, so traces sit at the start, middle
        // and end of blocks and of runs, after rows a lookup reads past. Runs of one
        // trace, of a sixteenth of a block (as by default), and longer than a block.
        let (requests, _) = simulatedRequests(count: 1_500, seed: 11)
        let original = batch(requests)
        var traceIDs = Array(Set(original.traceIDs)).sorted()
        XCTAssertEqual(traceIDs.count, 1_500)
        for runSpans in [1, 64, 100_000] {
            let path = temporaryDirectory(self) + "/lookup-\(runSpans).mts"
            try SegmentWriter.write(original, walSequence: 1, to: path, blockSpans: 1_024, runSpans: runSpans)
            let reader = try SegmentReader(path: path)
            XCTAssertGreaterThan(reader.footer.blocks.count, 2)
            for block in reader.footer.blocks { traceIDs += [block.firstTraceID, block.lastTraceID] }
            for traceID in traceIDs.enumerated().filter({ $0.offset % 20 == runSpans % 20 || $0.offset >= 1_500 }).map(\.element) {
                var expected = SpanBatch()
                expected.append(contentsOf: original, rows: original.rows(of: traceID))
                let found = try XCTUnwrap(try reader.trace(traceID), "trace \(traceID) not found, runs of \(runSpans)")
                XCTAssertEqual(canonicalSpans(try found.tracesData()), canonicalSpans(try expected.tracesData()),
                               "trace \(traceID), runs of \(runSpans)")
            }
            XCTAssertNil(try reader.trace(TraceID(high: 0, low: 1)))
        }
    }

    func testFlippedBitIsReportedWithFileAndColumn() throws {
        let path = temporaryDirectory(self) + "/flip.mts"
        try SegmentWriter.write(batch(simulatedRequests(count: 20).0), walSequence: 1, to: path)
        let chunk = try XCTUnwrap(SegmentReader(path: path).footer.columns.first { $0.column == "0/attr/string/url.path" })
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[chunk.offset + chunk.compressedSize / 2] ^= 0x08
        try bytes.write(to: URL(fileURLWithPath: path))

        let reader = try SegmentReader(path: path)
        XCTAssertNoThrow(try reader.columnBytes(named: "0/span.id"), "undamaged columns stay readable")
        XCTAssertThrowsError(try reader.readBatch()) { error in
            guard case StoreError.corruptColumn(let file, let column, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(file, path)
            XCTAssertEqual(column, "0/attr/string/url.path")
        }
    }

    /// A segment's chunks as stored: each one's name, decompressed bytes and zstd frame.
    private typealias StoredChunk = (name: String, raw: [UInt8], compressed: [UInt8])

    private func storedChunks(_ reader: SegmentReader) throws -> [StoredChunk] {
        let compressor = try Zstd.Compressor(level: 3)
        return try reader.footer.columns.map { chunk in
            let raw = try reader.columnBytes(named: chunk.column)
            return (chunk.column, raw, try compressor.compress(raw))
        }
    }

    /// A segment file of `chunks` under `footer` (its chunk list replaced), every
    /// checksum matching.
    private func segmentFile(_ footer: SegmentFooter, _ chunks: [StoredChunk]) -> [UInt8] {
        var footer = footer
        var file = SegmentFile.headerMagicPrefix + [UInt8(footer.version)]
        footer.columns = chunks.map { chunk in
            defer { file += chunk.compressed }
            return ColumnChunkInfo(
                column: chunk.name, offset: file.count, compressedSize: chunk.compressed.count, rawSize: chunk.raw.count,
                checksum: CRC32C.checksum(chunk.compressed))
        }
        let footerBytes = footer.encode()
        var trailer = ByteWriter()
        trailer.write(UInt32(footerBytes.count))
        trailer.write(CRC32C.checksum(footerBytes))
        return file + footerBytes + trailer.bytes + SegmentFile.trailerMagic
    }

    /// Rewrites the segment at `path` with `transform` applied to the decompressed
    /// bytes of chunk `name`, and every checksum made to match again: damage no
    /// checksum can see, as a faulty writer would leave.
    private func rewriteChunk(_ path: String, _ name: String, _ transform: ([UInt8]) -> [UInt8]) throws {
        let reader = try SegmentReader(path: path)
        var chunks = try storedChunks(reader)
        let index = try XCTUnwrap(chunks.firstIndex { $0.name == name }, "no chunk \(name)")
        chunks[index].raw = transform(chunks[index].raw)
        chunks[index].compressed = try Zstd.Compressor(level: 3).compress(chunks[index].raw)
        try Data(segmentFile(reader.footer, chunks)).write(to: URL(fileURLWithPath: path))
    }

    /// A table index read from a segment must name an entry of its table: an empty
    /// dictionary that rows still point into (checksums intact) is reported with the
    /// file and column, in every format version, and does not stop the process.
    func testIndexesIntoEmptyTablesAreReportedNotTrapped() throws {
        let directory = temporaryDirectory(self)
        let spans = batch(simulatedRequests(count: 5).0)
        func refused(_ path: String, column: String, _ transform: @escaping ([UInt8]) -> [UInt8]) throws {
            try rewriteChunk(path, column, transform)
            XCTAssertThrowsError(try SegmentReader(path: path).readBatch(), column) { error in
                guard case StoreError.corruptColumn(let file, _, _) = error else { return XCTFail("\(column): \(error)") }
                XCTAssertEqual(file, path)
            }
        }
        // The current version: no scopes, while every row names scope 0.
        let scopes = directory + "/scopes.mts"
        try SegmentWriter.write(spans, walSequence: 1, to: scopes)
        XCTAssertNoThrow(try SegmentReader(path: scopes).readBatch(), "the segment reads before it is damaged")
        try refused(scopes, column: "dict.scopes") { _ in [0] }
        // No attribute keys, while a dedicated column names key 0 (and no layouts).
        let keys = directory + "/keys.mts"
        try SegmentWriter.write(spans, walSequence: 1, to: keys)
        try refused(keys, column: "dict.attributes") { _ in [0, 1, 0, AttributeType.string.rawValue, 0] }

        // Version 1: a name column whose dictionary is empty, and a scope column whose
        // table is, each followed by an index of 0 for every row.
        let golden = goldenSegmentPath(version: 1, name: "mesh")
        let rows = try SegmentReader(path: golden).footer.spanCount
        for column in ["name", "scope"] {
            let path = directory + "/v1-\(column).mts"
            try FileManager.default.copyItem(atPath: golden, toPath: path)
            try refused(path, column: column) { _ in [0] + [UInt8](repeating: 0, count: rows) }
        }
    }

    /// Seeded random mutations of one chunk at a time — every chunk of a segment with
    /// several blocks and runs, and of the version 1 golden segment, checksums made to
    /// match — read through every way a query reads a segment: each read answers or
    /// reports the segment, never traps.
    func testMutatedChunksWithMatchingChecksumsNeverCrashTheReaders() throws {
        let directory = temporaryDirectory(self)
        let spans = batch(simulatedRequests(count: 12).0)
        let current = directory + "/current.mts"
        try SegmentWriter.write(spans, walSequence: 1, to: current, blockSpans: 24, runSpans: 6)
        let golden = goldenSegmentPath(version: 1, name: "mesh")
        let compressor = try Zstd.Compressor(level: 3)
        let traceIDs = [spans.traceIDs[0], spans.traceIDs[spans.count - 1], TraceID(high: 1, low: 2)]
        let path = directory + "/mutated.mts"
        for original in [current, golden] {
            let pristine = try SegmentReader(path: original)
            let chunks = try storedChunks(pristine)
            if original == current {
                XCTAssertGreaterThan(chunks.filter { $0.name.hasSuffix("/trace.runs") }.count, 2, "several blocks")
            }
            var reported = 0
            var read = 0
            for seed in 0..<UInt64(chunks.count * 4) {
                var mutated = chunks
                let index = Int(seed) % chunks.count
                let chunk = chunks[index].name
                mutated[index].raw = mutations(of: chunks[index].raw, count: 1, seed: seed)[0]
                mutated[index].compressed = try compressor.compress(mutated[index].raw)
                try Data(segmentFile(pristine.footer, mutated)).write(to: URL(fileURLWithPath: path))
                let reader = try SegmentReader(path: path)
                do {
                    _ = try reader.readBatch()
                    read += 1
                } catch {
                    guard case StoreError.corruptColumn(let file, _, _) = error else { return XCTFail("\(chunk), seed \(seed): \(error)") }
                    XCTAssertEqual(file, path)
                    reported += 1
                }
                _ = try? reader.readBatch(attributes: false)
                for traceID in traceIDs { _ = try? reader.trace(traceID) }
                _ = try? reader.summaries()
                if reader.hasSpanFacts {
                    _ = try? reader.factDictionaries()
                    for block in reader.footer.blocks.indices { _ = try? reader.facts(block: block) }
                }
            }
            XCTAssertGreaterThan(reported, 0, original)
            XCTAssertGreaterThan(read, 0, "\(original): some mutations leave a segment that still reads")
        }
    }

    func testTruncatedAndGarbageSegmentsAreRefused() throws {
        let directory = temporaryDirectory(self)
        let path = directory + "/cut.mts"
        try SegmentWriter.write(batch(simulatedRequests(count: 20).0), walSequence: 1, to: path)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        try bytes.prefix(bytes.count - 40).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try SegmentReader(path: path)) { error in
            guard case StoreError.corruptSegment = error else { return XCTFail("\(error)") }
        }
        try Data("hello".utf8).write(to: URL(fileURLWithPath: directory + "/garbage.mts"))
        XCTAssertThrowsError(try SegmentReader(path: directory + "/garbage.mts"))
    }

    func testStoreReplaysTheWALAfterACrashWithoutDuplicates() throws {
        let directory = temporaryDirectory(self)
        let (requests, _) = simulatedRequests(count: 50)
        let total = batch(requests).count
        do {
            let store = try SpanStore(configuration: .init(dataDirectory: directory))
            for request in requests { _ = try store.append(try received(request)) }
            XCTAssertEqual(store.unsealedSpanCount, total)
            // The process "dies" here: nothing is sealed, only the WAL is on disk.
        }
        let reopened = try SpanStore(configuration: .init(dataDirectory: directory))
        XCTAssertEqual(reopened.unsealedSpanCount, total)
        XCTAssertTrue(reopened.problems.isEmpty, "\(reopened.problems)")

        try reopened.seal()
        XCTAssertEqual(reopened.unsealedSpanCount, 0)
        let afterSeal = try SpanStore(configuration: .init(dataDirectory: directory))
        XCTAssertEqual(afterSeal.unsealedSpanCount, 0, "sealed spans are not replayed again")
        XCTAssertEqual(afterSeal.snapshot().segments.reduce(0) { $0 + $1.footer.spanCount }, total)
    }

    func testConcurrentAppendsShareWALSyncsAndAllReplay() throws {
        let directory = temporaryDirectory(self)
        let (requests, _) = simulatedRequests(count: 160)
        let exports = try requests.map(received)
        let total = batch(requests).count
        let syncs: Int
        do {
            let store = try SpanStore(configuration: .init(dataDirectory: directory))
            let failures = Mutex(0)
            // One thread per request, as the collector's blocking pool runs them; a
            // seal midway rotates the log under writers waiting for their sync.
            let done = DispatchGroup()
            for index in 0...requests.count {
                done.enter()
                Thread.detachNewThread {
                    defer { done.leave() }
                    do {
                        if index == requests.count { try store.seal() } else {
                            _ = try store.append(exports[index])
                        }
                    } catch {
                        failures.withLock { $0 += 1 }
                    }
                }
            }
            done.wait()
            XCTAssertEqual(failures.withLock { $0 }, 0)
            syncs = store.walStatistics.syncs
            let stored = store.unsealedSpanCount + store.snapshot().segments.reduce(0) { $0 + $1.footer.spanCount }
            XCTAssertEqual(stored, total)
        }
        print("WAL syncs for \(requests.count) concurrent requests: \(syncs)")
        XCTAssertLessThan(syncs, requests.count * 3 / 4, "concurrent requests share syncs")
        let reopened = try SpanStore(configuration: .init(dataDirectory: directory))
        let stored = reopened.unsealedSpanCount + reopened.snapshot().segments.reduce(0) { $0 + $1.footer.spanCount }
        XCTAssertEqual(stored, total, "every acknowledged span is on disk once")
    }

    func testWALSyncIntervalSpacesSyncsAndStillAcknowledgesOnlyDurableRecords() throws {
        let directory = temporaryDirectory(self)
        let (requests, _) = simulatedRequests(count: 60)
        let exports = try requests.map(received)
        var configuration = SpanStore.Configuration(dataDirectory: directory)
        configuration.walSyncInterval = .milliseconds(40)
        let store = try SpanStore(configuration: configuration)
        let started = ContinuousClock.now
        // Sequential appends: with no interval each would sync on its own.
        for export in exports { _ = try store.append(export) }
        let elapsed = started.duration(to: .now)
        let syncs = store.walStatistics.syncs
        XCTAssertEqual(syncs, exports.count, "one waiting request at a time: one sync each")
        XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(40) * (syncs - 1), "syncs start at least 40 ms apart")

        // Concurrent appends join the sync that is waiting out the interval.
        let done = DispatchGroup()
        let failures = Mutex(0)
        for export in exports {
            done.enter()
            Thread.detachNewThread {
                defer { done.leave() }
                do { _ = try store.append(export) } catch { failures.withLock { $0 += 1 } }
            }
        }
        done.wait()
        XCTAssertEqual(failures.withLock { $0 }, 0)
        XCTAssertLessThan(store.walStatistics.syncs - syncs, exports.count / 4, "concurrent requests share spaced syncs")
        var readOnly = SpanStore.Configuration(dataDirectory: directory)
        readOnly.readOnly = true
        let reopened = try SpanStore(configuration: readOnly)
        XCTAssertEqual(reopened.unsealedSpanCount, 2 * exports.reduce(0) { $0 + $1.spans.count })
    }

    func testCrashBetweenSegmentRenameAndWALCleanupStoresSpansOnce() throws {
        let directory = temporaryDirectory(self)
        let (requests, _) = simulatedRequests(count: 30)
        let total = batch(requests).count
        let saved = directory + "-wal-copy"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: saved) }
        do {
            let store = try SpanStore(configuration: .init(dataDirectory: directory))
            for request in requests { _ = try store.append(try received(request)) }
            try FileManager.default.copyItem(atPath: directory + "/wal", toPath: saved)
            try store.seal()
        }
        // Put back the WAL files the seal removed, as if it crashed just before removing them.
        for name in try FileManager.default.contentsOfDirectory(atPath: saved) {
            let target = directory + "/wal/" + name
            if !FileManager.default.fileExists(atPath: target) {
                try FileManager.default.copyItem(atPath: saved + "/" + name, toPath: target)
            }
        }
        let reopened = try SpanStore(configuration: .init(dataDirectory: directory))
        let stored = reopened.unsealedSpanCount + reopened.snapshot().segments.reduce(0) { $0 + $1.footer.spanCount }
        XCTAssertEqual(stored, total)
    }

    func testTornWALTailIsCutAndEverythingBeforeItSurvives() throws {
        let directory = temporaryDirectory(self)
        let (requests, _) = simulatedRequests(count: 10)
        do {
            let store = try SpanStore(configuration: .init(dataDirectory: directory))
            for request in requests { _ = try store.append(try received(request)) }
        }
        let walPath = directory + "/wal/" + (try XCTUnwrap(FileManager.default.contentsOfDirectory(atPath: directory + "/wal").sorted().first))
        // The file was grown ahead of its records with zero bytes; a crash tears the
        // next record there, after the last whole one.
        let file = [UInt8](try Data(contentsOf: URL(fileURLWithPath: walPath)))
        var recordsEnd = 8
        while recordsEnd + 12 <= file.count, file[recordsEnd..<recordsEnd + 4].elementsEqual([0x4D, 0x54, 0x52, 0x4C]) {
            let length = file[recordsEnd + 4..<recordsEnd + 8].reversed().reduce(0) { $0 << 8 | Int($1) }
            recordsEnd += 12 + length
        }
        XCTAssertGreaterThan(file.count, recordsEnd, "zero bytes follow the records")
        XCTAssertTrue(file[recordsEnd...].allSatisfy { $0 == 0 })
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: walPath))
        try handle.seek(toOffset: UInt64(recordsEnd))
        // A record header claiming 255 bytes and three bytes of its checksum.
        try handle.write(contentsOf: Data([0x4D, 0x54, 0x52, 0x4C, 0xFF, 0x00, 0x00, 0x00, 0xAB, 0xCD, 0xEF]))
        try handle.close()

        let reopened = try SpanStore(configuration: .init(dataDirectory: directory))
        XCTAssertEqual(reopened.unsealedSpanCount, batch(requests).count)
        XCTAssertEqual(reopened.problems.count, 1)
        XCTAssertTrue(reopened.problems[0].reason.contains("11 trailing bytes"), reopened.problems[0].reason)
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: walPath)[.size] as? Int, recordsEnd, "cut back to its records")
    }

    func testWALRecordsWhoseFramesCarryLZ4sContentChecksumStillReplay() throws {
        // Records are written without LZ4's content checksum (their CRC32C covers them);
        // files written with it, as before, replay all the same.
        let directory = temporaryDirectory(self)
        let (requests, _) = simulatedRequests(count: 10)
        try FileManager.default.createDirectory(atPath: directory + "/wal", withIntermediateDirectories: true)
        var file: [UInt8] = Array("MTWAL".utf8) + [0, 0, 1]
        for request in requests {
            let payload = try LZ4Frame.compress([1] + (try request.serializedBytes() as [UInt8]), contentChecksum: true)
            var header = ByteWriter(capacity: 12)
            header.write(UInt32(0x4C52_544D))
            header.write(UInt32(payload.count))
            header.write(CRC32C.checksum(payload))
            file += header.bytes + payload
        }
        try Data(file).write(to: URL(fileURLWithPath: directory + "/wal/wal-0000000000000001.log"))

        let store = try SpanStore(configuration: .init(dataDirectory: directory))
        XCTAssertEqual(store.unsealedSpanCount, batch(requests).count)
        XCTAssertEqual(store.problems.count, 0, "\(store.problems)")
        // And what the store writes now replays beside them.
        let more = simulatedRequests(count: 5, seed: 9).0
        for request in more { _ = try store.append(try received(request)) }
        let reopened = try SpanStore(configuration: .init(dataDirectory: directory))
        XCTAssertEqual(reopened.unsealedSpanCount, batch(requests + more).count)
    }

    func testGarbageInTheSegmentFolderIsReportedAndTheStoreStillAnswers() throws {
        let directory = temporaryDirectory(self)
        let (requests, _) = simulatedRequests(count: 10)
        let store = try SpanStore(configuration: .init(dataDirectory: directory))
        for request in requests { _ = try store.append(try received(request)) }
        try store.seal()
        try Data(repeating: 0xAB, count: 100).write(to: URL(fileURLWithPath: directory + "/segments/seg-00000000000000ff.mts"))
        try Data("notes".utf8).write(to: URL(fileURLWithPath: directory + "/segments/README"))

        let reopened = try SpanStore(configuration: .init(dataDirectory: directory))
        XCTAssertEqual(reopened.problems.count, 2, "\(reopened.problems)")
        let someTrace = try XCTUnwrap(TraceID(bytes: requests[0].resourceSpans[0].scopeSpans[0].spans[0].traceID))
        XCTAssertNotNil(try QueryEngine(snapshot: reopened.snapshot()).trace(someTrace))
    }

    func testInvalidIDsAreRejectedAndCounted() throws {
        var request = try wireFixture()
        request.resourceSpans[0].scopeSpans[0].spans[0].traceID = Data(repeating: 0, count: 16)
        request.resourceSpans[0].scopeSpans[0].spans[1].spanID = Data([1, 2, 3])
        var batch = SpanBatch()
        let outcome = batch.append(request)
        XCTAssertEqual(outcome.accepted, 0)
        XCTAssertEqual(outcome.rejected, 2)
        XCTAssertTrue(outcome.firstRejection?.contains("trace id") ?? false)

        let store = try SpanStore(configuration: .init(dataDirectory: temporaryDirectory(self)))
        let stored = try store.append(try received(request))
        XCTAssertEqual(stored.rejected, 2)
        XCTAssertEqual(store.unsealedSpanCount, 0)
    }

    func testTraceLookupFindsATraceSplitAcrossSegmentsAndHead() throws {
        let store = try SpanStore(configuration: .init(dataDirectory: temporaryDirectory(self)))
        let request = try wireFixture()
        var first = request
        first.resourceSpans[0].scopeSpans[0].spans.removeLast()
        var second = request
        second.resourceSpans[0].scopeSpans[0].spans.removeFirst()
        _ = try store.append(try received(first))
        try store.seal()
        _ = try store.append(try received(second))
        let traceID = try XCTUnwrap(TraceID(hex: "5b8efff798038103d269b633813fc60c"))
        let found = try XCTUnwrap(try QueryEngine(snapshot: store.snapshot()).trace(traceID))
        XCTAssertEqual(found.count, 2)
        XCTAssertNil(try QueryEngine(snapshot: store.snapshot()).trace(TraceID(high: 1, low: 2)))
    }

    private func sealedStore(_ directory: String, startTimes: [UInt64], configure: (inout SpanStore.Configuration) -> Void = { _ in }) throws -> SpanStore {
        var configuration = SpanStore.Configuration(dataDirectory: directory)
        configure(&configuration)
        let store = try SpanStore(configuration: configuration)
        for (index, start) in startTimes.enumerated() {
            let (requests, _) = simulatedRequests(count: 5, seed: UInt64(index + 1), start: start)
            for request in requests { _ = try store.append(try received(request)) }
            try store.seal()
        }
        return store
    }

    func testRetentionByAgeDeletesOnlyExpiredSegments() throws {
        let directory = temporaryDirectory(self)
        let day: UInt64 = 86_400_000_000_000
        let now: UInt64 = 1_800_000_000_000_000_000
        let store = try sealedStore(directory, startTimes: [now - 3 * day, now - 2 * day, now - 3_600_000_000_000]) {
            $0.retention = .seconds(86_400)
        }
        XCTAssertEqual(store.snapshot().segments.count, 3)
        let removed = try store.enforceRetention(now: now)
        XCTAssertEqual(removed.count, 2)
        XCTAssertEqual(store.snapshot().segments.count, 1)
        XCTAssertTrue(store.snapshot().segments[0].footer.minStartTime >= now - day)
        for path in removed { XCTAssertFalse(FileManager.default.fileExists(atPath: path)) }
        let reopened = try SpanStore(configuration: .init(dataDirectory: directory))
        XCTAssertEqual(reopened.snapshot().segments.count, 1, "deleted segments stay deleted")
        XCTAssertEqual(reopened.unsealedSpanCount, 0, "their spans are not replayed from the WAL")
    }

    func testRetentionBySizeDeletesOldestFirst() throws {
        let directory = temporaryDirectory(self)
        let base: UInt64 = 1_800_000_000_000_000_000
        let hour: UInt64 = 3_600_000_000_000
        var store = try sealedStore(directory, startTimes: [base, base + hour, base + 2 * hour])
        let newest = try XCTUnwrap(store.snapshot().segments.max { $0.footer.maxEndTime < $1.footer.maxEndTime })
        store = try SpanStore(configuration: {
            var configuration = SpanStore.Configuration(dataDirectory: directory)
            configuration.maxSegmentBytes = newest.fileSize + 1
            return configuration
        }())
        let removed = try store.enforceRetention(now: base + 3 * hour)
        XCTAssertEqual(removed.count, 2)
        XCTAssertEqual(store.snapshot().segments.map(\.path), [newest.path])
    }

    func testCompactionMergesSmallSegmentsWithoutLosingOrDuplicatingSpans() throws {
        let directory = temporaryDirectory(self)
        let base: UInt64 = 1_800_000_000_000_000_000
        let store = try sealedStore(directory, startTimes: (0..<5).map { base + UInt64($0) * 1_000_000_000 })
        let before = store.snapshot().segments
        let spans = before.reduce(0) { $0 + $1.footer.spanCount }
        let someTrace = try XCTUnwrap(before.last?.readBatch().traceIDs.first)
        let expectedTrace = try XCTUnwrap(try before.last?.trace(someTrace)).count
        let merged = try store.compact()
        XCTAssertEqual(merged.count, 5)
        let after = store.snapshot().segments
        XCTAssertEqual(after.count, 1)
        XCTAssertEqual(after[0].footer.spanCount, spans)
        XCTAssertEqual(Set(after[0].footer.replaces), Set(before.map { ($0.path as NSString).lastPathComponent }))
        XCTAssertEqual(try QueryEngine(snapshot: store.snapshot()).trace(someTrace)?.count, expectedTrace)
        for path in merged { XCTAssertFalse(FileManager.default.fileExists(atPath: path)) }
    }

    func testCompactionCrashAfterRenameLeavesNoDuplicates() throws {
        let directory = temporaryDirectory(self)
        let base: UInt64 = 1_800_000_000_000_000_000
        let store = try sealedStore(directory, startTimes: (0..<3).map { base + UInt64($0) * 1_000_000_000 })
        let spans = store.snapshot().segments.reduce(0) { $0 + $1.footer.spanCount }
        let saved = directory + "-inputs"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: saved) }
        try FileManager.default.copyItem(atPath: directory + "/segments", toPath: saved)
        try store.compact()
        // The crash: the output was renamed into place, the inputs were not yet deleted.
        for name in try FileManager.default.contentsOfDirectory(atPath: saved) {
            try FileManager.default.copyItem(atPath: saved + "/" + name, toPath: directory + "/segments/" + name)
        }
        let reopened = try SpanStore(configuration: .init(dataDirectory: directory))
        XCTAssertEqual(reopened.snapshot().segments.count, 1)
        XCTAssertEqual(reopened.snapshot().segments[0].footer.spanCount, spans)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory + "/segments").count, 1,
                       "the leftover inputs are deleted on open")
    }
}
