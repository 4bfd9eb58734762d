import Foundation
import MeshCore
import MeshSim
import OTLPWire
import SegmentStore
import SwiftProtobuf
import XCTest

/// OTLP in → segment → OTLP out is equal for random messages that use every field
/// and every attribute value type.
final class RoundTripPropertyTests: XCTestCase {
    func testRandomOTLPSurvivesASegmentUnchanged() throws {
        let directory = temporaryDirectory(self)
        for seed in UInt64(1)...60 {
            let request = randomExportRequest(seed: seed)
            var batch = SpanBatch()
            let outcome = batch.append(request)
            XCTAssertEqual(outcome.rejected, 0)
            let path = directory + "/\(seed).mts"
            // Blocks and runs of a few spans, so values are coded afresh often and lookups enter runs.
            try SegmentWriter.write(batch, walSequence: seed, to: path, blockSpans: Int(seed % 11) + 1, runSpans: Int(seed % 4) + 1)
            let segment = try SegmentReader(path: path)
            let restored = try segment.readBatch()
            for traceID in Set(restored.traceIDs) {
                var one = SpanBatch()
                one.append(contentsOf: restored, rows: restored.rows(of: traceID))
                let found = try XCTUnwrap(try segment.trace(traceID), "seed \(seed): trace \(traceID)")
                XCTAssertEqual(canonicalSpans(try found.tracesData()), canonicalSpans(try one.tracesData()), "seed \(seed): trace \(traceID)")
            }
            var expected = TracesData.with { $0.resourceSpans = request.resourceSpans }
            expected.resourceSpans = expected.resourceSpans.compactMap { resource in
                var resource = resource
                resource.scopeSpans.removeAll { $0.spans.isEmpty }
                return resource.scopeSpans.isEmpty ? nil : resource
            }
            let got = canonicalSpans(try restored.tracesData())
            let want = canonicalSpans(expected)
            if got != want {
                let missing = want.filter { !got.contains($0) }
                let extra = got.filter { !want.contains($0) }
                let wantLines = (missing.first ?? "").split(separator: "\n")
                let gotLines = (extra.first ?? "").split(separator: "\n")
                let index = (0..<min(wantLines.count, gotLines.count)).first { wantLines[$0] != gotLines[$0] } ?? min(wantLines.count, gotLines.count)
                let context = { (lines: [Substring]) in lines[max(0, index - 6)..<min(lines.count, index + 3)].joined(separator: "\n") }
                XCTFail("seed \(seed): \(missing.count) spans changed at line \(index); expected:\n\(context(wantLines))\nfound:\n\(context(gotLines))")
            }
        }
    }

    func testMicrosecondAndNanosecondTimesBothSurvive() throws {
        for resolution: UInt64 in [1, 1_000] {
            var configuration = MeshSim.Configuration(seed: 3)
            configuration.timestampResolution = resolution
            var simulator = MeshSim(configuration: configuration)
            var spans: [MeshSim.EmittedSpan] = []
            for index in 0..<30 { spans += simulator.request(at: 1_700_000_000_000_000_123 + UInt64(index) * 999_999) }
            let requests = simulator.exportRequests(spans)
            var batch = SpanBatch()
            for request in requests { batch.append(request) }
            let path = temporaryDirectory(self) + "/times.mts"
            try SegmentWriter.write(batch, walSequence: 1, to: path)
            let segment = try SegmentReader(path: path)
            XCTAssertEqual(segment.footer.blocks.allSatisfy { $0.timeUnit == resolution }, true)
            XCTAssertEqual(canonicalSpans(try segment.readBatch().tracesData()), canonicalSpans(tracesData(requests)))
        }
    }
}
