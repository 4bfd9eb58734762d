import Foundation
import MeshCore
import OTLPWire
import SegmentStore
import SwiftProtobuf
import XCTest

/// Segments written by every released format version stay readable: each
/// `storage/golden/v<N>/<name>.mts` must read back as `<name>.expected.binpb`
/// (an OTLP `TracesData`).
///
/// `MESHTRACE_WRITE_GOLDEN=1 swift test --filter GoldenFileTests` writes the current
/// version's files; files of earlier versions are never rewritten.
final class GoldenFileTests: XCTestCase {
    private let golden = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("storage/golden")

    /// The inputs the golden segments are written from.
    private func inputs() throws -> [String: ExportTraceServiceRequest] {
        let fixture = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/wire/trace_export_request", withExtension: "binpb"))
        var everyField = try ExportTraceServiceRequest(serializedBytes: try Data(contentsOf: fixture))
        everyField.resourceSpans.removeLast()  // it holds no spans
        let (mesh, _) = simulatedRequests(count: 12, seed: 5)
        return ["every-field": everyField, "mesh": ExportTraceServiceRequest.with { $0.resourceSpans = mesh.flatMap(\.resourceSpans) }]
    }

    func testWriteGoldenFilesWhenAsked() throws {
        guard ProcessInfo.processInfo.environment["MESHTRACE_WRITE_GOLDEN"] == "1" else {
            throw XCTSkip("set MESHTRACE_WRITE_GOLDEN=1 to write the current version's golden segments")
        }
        let directory = golden.appendingPathComponent("v\(SegmentWriter.formatVersion)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for (name, request) in try inputs() {
            var batch = SpanBatch()
            batch.append(request)
            // Small blocks and runs, so the files hold several of each.
            try SegmentWriter.write(
                batch, walSequence: 1, to: directory.appendingPathComponent("\(name).mts").path, blockSpans: 48, runSpans: 12)
            let expected = TracesData.with { $0.resourceSpans = request.resourceSpans }
            let encoded: Data = try expected.serializedBytes()
            try encoded.write(to: directory.appendingPathComponent("\(name).expected.binpb"))
        }
    }

    func testEveryGoldenSegmentReadsBackAsWritten() throws {
        let versions = try FileManager.default.contentsOfDirectory(atPath: golden.path).filter { $0.hasPrefix("v") }
        XCTAssertFalse(versions.isEmpty, "storage/golden holds no versions")
        var checked = 0
        for version in versions {
            let directory = golden.appendingPathComponent(version)
            for name in try FileManager.default.contentsOfDirectory(atPath: directory.path) where name.hasSuffix(".mts") {
                let segment = try SegmentReader(path: directory.appendingPathComponent(name).path)
                XCTAssertEqual("v\(segment.footer.version)", version)
                let expected = try TracesData(serializedBytes: try Data(contentsOf: directory.appendingPathComponent(
                    name.replacingOccurrences(of: ".mts", with: ".expected.binpb"))))
                let all = try segment.readBatch()
                XCTAssertEqual(canonicalSpans(try all.tracesData()), canonicalSpans(expected), "\(version)/\(name)")
                for traceID in Set(all.traceIDs) {
                    var one = SpanBatch()
                    one.append(contentsOf: all, rows: all.rows(of: traceID))
                    let found = try XCTUnwrap(try segment.trace(traceID), "\(version)/\(name): trace \(traceID)")
                    XCTAssertEqual(canonicalSpans(try found.tracesData()), canonicalSpans(try one.tracesData()),
                                   "\(version)/\(name): trace \(traceID)")
                }
                checked += 1
            }
        }
        XCTAssertGreaterThanOrEqual(checked, 2)
    }
}
