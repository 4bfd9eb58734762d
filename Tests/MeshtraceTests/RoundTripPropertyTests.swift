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
    private struct Random {
        var generator: SeededGenerator

        mutating func int(_ range: ClosedRange<Int>) -> Int { generator.int(in: range) }
        mutating func chance(_ p: Double) -> Bool { generator.chance(p) }
        mutating func bytes(_ count: Int) -> Data { Data((0..<count).map { _ in UInt8(truncatingIfNeeded: generator.next()) }) }

        mutating func string() -> String {
            let pool = ["", "a", "GET", "/api/cart/0", "/api/cart/00123", "10.0.0.1:8080", "héllo ✓", "550e8400-e29b-41d4-a716-446655440000",
                        "550E8400-E29B-41D4-A716-446655440000", "x99999999999999999999", "007", "0", "tail9z", "ot=th:c;rv:1"]
            return chance(0.6) ? pool[int(0...pool.count - 1)] : "v\(int(0...5))-\(generator.next() % 100_000)"
        }

        mutating func value(depth: Int = 0) -> AnyValue {
            var value = AnyValue()
            switch int(0...(depth > 1 ? 5 : 8)) {
            case 0: value.stringValue = string()
            case 1: value.boolValue = chance(0.5)
            case 2: value.intValue = chance(0.5) ? Int64(int(-5...600)) : Int64(bitPattern: generator.next())
            case 3: value.doubleValue = chance(0.2) ? -0.0 : Double(int(-1000...1000)) / 7
            case 4: value.bytesValue = bytes(int(0...20))
            case 5: break  // an AnyValue with nothing set
            case 6: value.arrayValue = ArrayValue.with { array in array.values = (0..<int(0...3)).map { _ in self.value(depth: depth + 1) } }
            default: value.kvlistValue = KeyValueList.with { list in list.values = attributes(depth: depth + 1) }
            }
            return value
        }

        mutating func attributes(depth: Int = 0) -> [KeyValue] {
            let keys = ["http.request.method", "url.path", "http.response.status_code", "peer.address", "k", "", "guid:x-request-id", "n"]
            return (0..<int(0...7)).map { _ in
                var attribute = KeyValue()
                attribute.key = keys[int(0...keys.count - 1)]
                if chance(0.9) { attribute.value = value(depth: depth) }
                return attribute
            }
        }
    }

    private func randomRequest(seed: UInt64) -> ExportTraceServiceRequest {
        var random = Random(generator: SeededGenerator(seed: seed))
        var request = ExportTraceServiceRequest()
        let traceIDs = (0..<random.int(1...4)).map { _ in random.bytes(16) }
        for _ in 0..<random.int(1...3) {
            var resourceSpans = ResourceSpans()
            if random.chance(0.8) {
                resourceSpans.resource.attributes = random.attributes() + [KeyValue("service.name", "svc-\(random.int(0...3))")]
                resourceSpans.resource.droppedAttributesCount = UInt32(random.int(0...2))
            }
            if random.chance(0.3) { resourceSpans.schemaURL = "https://opentelemetry.io/schemas/1.\(random.int(0...30)).0" }
            for _ in 0..<random.int(1...3) {
                var scopeSpans = ScopeSpans()
                if random.chance(0.7) {
                    scopeSpans.scope.name = random.string()
                    scopeSpans.scope.version = random.string()
                    scopeSpans.scope.attributes = random.attributes()
                }
                var spanIDs: [Data] = []
                for _ in 0..<random.int(0...12) {
                    var span = OTLPSpan()
                    span.traceID = traceIDs[random.int(0...traceIDs.count - 1)]
                    span.spanID = random.bytes(8)
                    if random.chance(0.7) { span.parentSpanID = spanIDs.isEmpty || random.chance(0.2) ? random.bytes(8) : spanIDs[random.int(0...spanIDs.count - 1)] }
                    spanIDs.append(span.spanID)
                    span.name = random.string()
                    span.kind = OTLPSpan.SpanKind(rawValue: random.int(0...5))!
                    let start = UInt64(1_700_000_000_000_000_000) + UInt64(random.int(0...1_000_000_000)) * (random.chance(0.5) ? 1000 : 1)
                    span.startTimeUnixNano = start
                    span.endTimeUnixNano = random.chance(0.05) ? start - 5 : start + UInt64(random.int(0...50_000_000))
                    span.attributes = random.attributes()
                    if random.chance(0.2) { span.droppedAttributesCount = UInt32(random.int(1...9)) }
                    if random.chance(0.3) { span.traceState = random.string() }
                    if random.chance(0.6) { span.flags = UInt32(random.int(0...0x3FF)) }
                    for _ in 0..<(random.chance(0.3) ? random.int(1...3) : 0) {
                        span.events.append(OTLPSpan.Event.with { event in
                            event.timeUnixNano = start + 17
                            event.name = random.string()
                            event.attributes = random.attributes()
                        })
                    }
                    if random.chance(0.2) {
                        span.links.append(OTLPSpan.Link.with { link in
                            link.traceID = random.bytes(16)
                            link.spanID = random.bytes(8)
                            link.traceState = random.string()
                            link.flags = 0x101
                        })
                    }
                    if random.chance(0.1) { span.droppedEventsCount = 3; span.droppedLinksCount = 4 }
                    if random.chance(0.4) {
                        // Set, present but empty, or with a code no version of OTLP has defined yet.
                        span.status.code = OTLPStatus.StatusCode(rawValue: random.chance(0.1) ? 7 : random.int(0...2))!
                        span.status.message = random.chance(0.5) ? random.string() : ""
                    }
                    scopeSpans.spans.append(span)
                }
                resourceSpans.scopeSpans.append(scopeSpans)
            }
            request.resourceSpans.append(resourceSpans)
        }
        return request
    }

    func testRandomOTLPSurvivesASegmentUnchanged() throws {
        let directory = temporaryDirectory(self)
        for seed in UInt64(1)...60 {
            let request = randomRequest(seed: seed)
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
