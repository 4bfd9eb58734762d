import Foundation
import MeshCore
import MeshSim
import OTLPWire
import SwiftProtobuf
import XCTest

/// A fresh directory under the system temporary folder, removed by the test's teardown.
func temporaryDirectory(_ test: XCTestCase) -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("meshtrace-test-\(UUID().uuidString)").path
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
    return path
}

/// MeshSim traffic as OTLP export requests, plus the simulator that made it.
func simulatedRequests(count: Int, seed: UInt64 = 7, errorRate: Double = 0.02, start: UInt64 = 1_700_000_000_000_000_000)
    -> ([ExportTraceServiceRequest], MeshSim)
{
    var simulator = MeshSim(configuration: MeshSim.Configuration(seed: seed, errorRate: errorRate))
    var spans: [MeshSim.EmittedSpan] = []
    for index in 0..<count {
        spans += simulator.request(at: start + UInt64(index) * 10_000_000)
    }
    return (simulator.exportRequests(spans, maxSpansPerRequest: 256), simulator)
}

/// Spans of OTLP data in a canonical order, each with its resource and scope (without
/// their span lists), so two encodings of the same spans compare equal.
func canonicalSpans(_ data: TracesData) -> [String] {
    var rows: [(Data, String)] = []
    for resourceSpans in data.resourceSpans {
        var resource = resourceSpans
        resource.scopeSpans = []
        for scopeSpans in resourceSpans.scopeSpans {
            var scope = scopeSpans
            scope.spans = []
            for span in scopeSpans.spans {
                let text = "\(resource.textFormatString())|\(scope.textFormatString())|\(span.textFormatString())"
                rows.append((span.spanID + span.traceID, text))
            }
        }
    }
    return rows.sorted { $0.1 < $1.1 }.map(\.1)
}

func tracesData(_ requests: [ExportTraceServiceRequest]) -> TracesData {
    TracesData.with { $0.resourceSpans = requests.flatMap(\.resourceSpans) }
}

/// Random OTLP content that uses every field and attribute value type.
struct RandomOTLP {
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

/// A random export request: several resources, scopes and traces, every span field,
/// every attribute value type, statuses set, empty and unknown.
func randomExportRequest(seed: UInt64) -> ExportTraceServiceRequest {
    var random = RandomOTLP(generator: SeededGenerator(seed: seed))
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

/// Seeded random mutations of `original`: flipped bits, cut and spliced bytes, overlong varints.
func mutations(of original: [UInt8], count: Int, seed: UInt64) -> [[UInt8]] {
    var random = SeededGenerator(seed: seed)
    return (0..<count).map { _ in
        var bytes = original
        for _ in 0...Int(random.next() % 4) {
            guard !bytes.isEmpty else { break }
            let at = Int(random.next() % UInt64(bytes.count))
            switch random.next() % 6 {
            case 0: bytes[at] ^= UInt8(1 << (random.next() % 8))
            case 1: bytes[at] = UInt8(truncatingIfNeeded: random.next())
            case 2: bytes.removeSubrange(at...)
            case 3: bytes.insert(contentsOf: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], at: at)
            case 4: bytes.removeSubrange(at..<min(bytes.count, at + Int(random.next() % 16) + 1))
            default:
                let from = Int(random.next() % UInt64(bytes.count))
                bytes.insert(contentsOf: bytes[from..<min(bytes.count, from + 24)], at: at)
            }
        }
        return bytes
    }
}

/// `request` as a receiver hands it to the store: its protobuf bytes through the direct decoder.
func received(_ request: ExportTraceServiceRequest) throws -> DecodedTraceExport {
    try DecodedTraceExport(protobuf: try request.serializedBytes())
}

/// Where `storage/golden/v<version>/<name>.mts` lies in the source tree.
func goldenSegmentPath(version: Int, name: String) -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("storage/golden/v\(version)/\(name).mts").path
}

// Protobuf written by hand: what no encoder writes, for decoders to meet.

func varint(_ value: UInt64) -> [UInt8] {
    var bytes: [UInt8] = []
    var rest = value
    while rest >= 0x80 {
        bytes.append(UInt8(truncatingIfNeeded: rest) | 0x80)
        rest >>= 7
    }
    return bytes + [UInt8(rest)]
}

/// A length-delimited field.
func field(_ number: UInt64, _ payload: [UInt8]) -> [UInt8] {
    varint(number << 3 | 2) + varint(UInt64(payload.count)) + payload
}

func varintField(_ number: UInt64, _ value: UInt64) -> [UInt8] {
    varint(number << 3) + varint(value)
}

func fixed64Field(_ number: UInt64, _ value: UInt64) -> [UInt8] {
    varint(number << 3 | 1) + withUnsafeBytes(of: value.littleEndian, Array.init)
}

func fixed32Field(_ number: UInt64, _ value: UInt32) -> [UInt8] {
    varint(number << 3 | 5) + withUnsafeBytes(of: value.littleEndian, Array.init)
}
