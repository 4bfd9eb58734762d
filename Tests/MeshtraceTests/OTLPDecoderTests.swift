import Foundation
@testable import MeshCore
import MeshSim
import OTLPWire
import SwiftProtobuf
import Synchronization
import XCTest

/// The direct OTLP decoder against swift-protobuf's generated messages: on every
/// input both accept or both refuse, and what they accept yields the same spans.
final class OTLPDecoderTests: XCTestCase {
    /// What swift-protobuf makes of `bytes`: the request converted through its message, or nil when it refuses them.
    private func reference(_ bytes: [UInt8]) -> (spans: SpanBatch, outcome: IngestOutcome)? {
        guard let request = try? ExportTraceServiceRequest(serializedBytes: bytes) else { return nil }
        var spans = SpanBatch()
        let outcome = spans.append(request)
        return (spans, outcome)
    }

    /// Asserts that both decoders agree on `bytes`; returns whether they accepted it.
    @discardableResult
    private func assertAgree(_ bytes: [UInt8], _ label: @autoclosure () -> String, file: StaticString = #filePath, line: UInt = #line) throws -> Bool {
        let expected = reference(bytes)
        let direct: DecodedTraceExport
        do {
            direct = try DecodedTraceExport(protobuf: bytes)
        } catch {
            XCTAssertNil(expected, "\(label()): swift-protobuf accepts what the direct decoder refuses (\(error))", file: file, line: line)
            return false
        }
        guard let expected else {
            XCTFail("\(label()): the direct decoder accepts what swift-protobuf refuses", file: file, line: line)
            return false
        }
        XCTAssertEqual(direct.outcome, expected.outcome, label(), file: file, line: line)
        XCTAssertEqual(direct.encoded, bytes, file: file, line: line)
        let (got, want) = (direct.spans, expected.spans)
        XCTAssertEqual(got.count, want.count, label(), file: file, line: line)
        guard got.count == want.count else { return true }
        XCTAssertEqual(got.traceIDs, want.traceIDs, label(), file: file, line: line)
        XCTAssertEqual(got.spanIDs, want.spanIDs, label(), file: file, line: line)
        XCTAssertEqual(got.parentSpanIDs, want.parentSpanIDs, label(), file: file, line: line)
        XCTAssertEqual(got.names, want.names, label(), file: file, line: line)
        XCTAssertEqual(got.kinds, want.kinds, label(), file: file, line: line)
        XCTAssertEqual(got.startTimes, want.startTimes, label(), file: file, line: line)
        XCTAssertEqual(got.endTimes, want.endTimes, label(), file: file, line: line)
        XCTAssertEqual(got.statusCodes, want.statusCodes, label(), file: file, line: line)
        XCTAssertEqual(got.statusMessages, want.statusMessages, label(), file: file, line: line)
        XCTAssertEqual(got.httpStatusCodes, want.httpStatusCodes, label(), file: file, line: line)
        // The facts gathered while decoding are those read again from the stored attributes.
        XCTAssertEqual(direct.facts, got.requestFacts(), "\(label()): request facts", file: file, line: line)
        for row in 0..<got.count {
            XCTAssertEqual(got.serviceName(at: row), want.serviceName(at: row), "\(label()) row \(row)", file: file, line: line)
            // Serialized, so NaN doubles compare by their bits.
            XCTAssertEqual(try got.span(at: row).serializedBytes() as [UInt8], try want.span(at: row).serializedBytes() as [UInt8],
                           "\(label()) row \(row): span", file: file, line: line)
            XCTAssertEqual(try ResourceSpans(serializedBytes: got.resources[Int(got.resourceIndices[row])].encoded).serializedBytes() as [UInt8],
                           try ResourceSpans(serializedBytes: want.resources[Int(want.resourceIndices[row])].encoded).serializedBytes() as [UInt8],
                           "\(label()) row \(row): resource", file: file, line: line)
            XCTAssertEqual(try ScopeSpans(serializedBytes: got.scopes[Int(got.scopeIndices[row])]).serializedBytes() as [UInt8],
                           try ScopeSpans(serializedBytes: want.scopes[Int(want.scopeIndices[row])]).serializedBytes() as [UInt8],
                           "\(label()) row \(row): scope", file: file, line: line)
        }
        return true
    }

    func testDecodesMeshSimTrafficAsSwiftProtobufDoes() throws {
        let (requests, _) = simulatedRequests(count: 300)
        for (index, request) in requests.enumerated() {
            XCTAssertTrue(try assertAgree(try request.serializedBytes(), "request \(index)"))
        }
    }

    /// Spans of one name share one string from request to request (the golden signals
    /// tell names apart by the string's bits), and decoders on
    /// several threads at once, each with a table of its own, still yield every name as
    /// swift-protobuf does.
    func testSpanNamesAreSharedAcrossRequestsAndThreads() throws {
        let (requests, _) = simulatedRequests(count: 200)
        let encoded = try requests.map { try $0.serializedBytes() as [UInt8] }
        func bits(_ string: String) -> (UInt64, UInt64) { unsafeBitCast(string, to: (UInt64, UInt64).self) }
        // One thread: a long name (held out of line) decoded again is the same string.
        let first = try DecodedTraceExport(protobuf: encoded[0]).spans
        let again = try DecodedTraceExport(protobuf: encoded[0]).spans
        let long = try XCTUnwrap(first.names.indices.first { first.names[$0].utf8.count > 15 }, "MeshSim names a span with more than 15 bytes")
        XCTAssertEqual(first.names[long], again.names[long])
        XCTAssertTrue(bits(first.names[long]) == bits(again.names[long]), "the second request's span got a string of its own")

        let expected = requests.map { request in
            var batch = SpanBatch()
            batch.append(request)
            return batch.names
        }
        let mismatches = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: 4) { worker in
            for round in 0..<3 {
                for index in stride(from: (worker + round) % 4, to: encoded.count, by: 4) {
                    let names = (try? DecodedTraceExport(protobuf: encoded[index]).spans.names) ?? []
                    if names != expected[index] { mismatches.withLock { $0 += 1 } }
                }
            }
        }
        XCTAssertEqual(mismatches.withLock { $0 }, 0)
    }

    func testDecodesRandomRequestsAsSwiftProtobufDoes() throws {
        for seed in UInt64(1)...300 {
            XCTAssertTrue(try assertAgree(try randomExportRequest(seed: seed).serializedBytes(), "seed \(seed)"))
        }
    }

    func testDecodesPythonSDKOutputAsSwiftProtobufDoes() throws {
        // Written by opentelemetry-proto's Python classes (see WireCompatibilityTests).
        for name in ["trace_export_request", "traces_data"] {
            let url = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/wire/\(name)", withExtension: "binpb"))
            let bytes = [UInt8](try Data(contentsOf: url))
            XCTAssertTrue(try assertAgree(bytes, name))
            XCTAssertGreaterThan(try DecodedTraceExport(protobuf: bytes).spans.count, 0, name)
        }
    }

    /// Hand-built bytes no encoder writes but protobuf allows: a field repeated (the
    /// last wins; messages merge), fields out of order, known fields with another
    /// wire type, unknown fields and groups at every level, statuses in pieces, ids
    /// of the wrong length.
    func testDecodesMergedReorderedAndUnknownFieldsAsSwiftProtobufDoes() throws {
        var random = SeededGenerator(seed: 99)
        let traceID = [UInt8](repeating: 0xAB, count: 16)
        let overlongTagged = field(1, Array("peer.service".utf8)) + field(2, field(1, Array("overlong-tag".utf8)))
        let overlongLength = field(1, Array("k3".utf8)) + field(2, field(1, Array("overlong".utf8)))
        let pieces: [[UInt8]] = [
            field(1, traceID), field(2, [1, 2, 3, 4, 5, 6, 7, 8]), field(2, [9, 9, 9, 9, 9, 9, 9, 9]),
            field(1, [UInt8](repeating: 0, count: 15)), field(1, traceID),
            field(4, []), field(4, [7, 7, 7, 7, 7, 7, 7, 7]), field(4, [1, 2, 3]),
            field(5, Array("first".utf8)), field(5, Array("second ✓".utf8)),
            varintField(6, 2), varintField(6, 9), varintField(6, UInt64.max), varintField(6, 0xFFFF_FFFF_0000_0003),
            fixed64Field(7, 1_700_000_000_000_000_000), fixed64Field(8, 1_700_000_000_000_500_000),
            varintField(7, 5),
            field(9, field(1, Array("http.response.status_code".utf8)) + field(2, varintField(3, 503))),
            field(9, field(1, Array("http.response.status_code".utf8)) + field(2, field(1, Array("x".utf8)))),
            field(9, field(1, Array("http.status_code".utf8)) + field(2, varintField(3, 404))),
            field(9, field(1, Array("k".utf8)) + field(2, varintField(3, 1)) + field(2, field(1, Array("merged".utf8)))),
            field(9, field(1, Array("k2".utf8)) + field(2, varintField(3, 1)) + field(2, [])),
            field(9, field(1, Array("a".utf8)) + field(1, Array("http.status_code".utf8)) + field(2, varintField(3, 200))),
            field(9, field(2, field(5, field(1, field(1, Array("nested".utf8))))) + varintField(3, 4)),
            field(9, field(1, Array("upstream_cluster".utf8)) + field(2, field(1, Array("outbound|80||reviews.shop.svc.cluster.local".utf8)))),
            field(9, field(1, Array("peer.service".utf8)) + field(2, field(1, Array("ratings".utf8)))),
            field(9, field(2, field(1, Array("orders-db".utf8))) + field(1, Array("db.name".utf8))),
            field(9, field(1, Array("response_size".utf8)) + field(2, field(1, Array("2048".utf8)))),
            field(9, field(1, Array("http.request.body.size".utf8)) + field(2, varintField(3, 77))),
            field(9, field(1, Array("connection_security_policy".utf8)) + field(2, field(1, Array("mutual_tls".utf8)))),
            field(9, field(1, Array("tls.established".utf8)) + field(2, varintField(2, 0))),
            field(9, field(1, Array("x".utf8)) + field(1, Array("peer.service".utf8)) + field(2, field(1, Array("second-key".utf8)))),
            varintField(9, 1),
            // Attributes written with a two-byte tag, and with a length in more bytes than it needs.
            [0xCA, 0x00] + varint(UInt64(overlongTagged.count)) + overlongTagged,
            [0x4A, UInt8(overlongLength.count) | 0x80, 0x00] + overlongLength,
            // Text that is not ASCII, and integers of every width.
            field(9, field(1, Array("clé".utf8)) + field(2, field(1, Array("✓ ok".utf8)))),
            field(9, field(1, Array("request_size".utf8)) + field(2, varintField(3, 300))),
            field(9, field(1, Array("negative".utf8)) + field(2, varintField(3, UInt64(bitPattern: -2)))),
            field(9, field(1, Array("".utf8)) + field(2, [])),
            field(15, varintField(3, 2)), field(15, field(2, Array("broken".utf8))), field(15, varintField(3, 0)),
            field(15, []), field(15, varintField(1, 1)), field(15, varintField(3, 1) + field(2, [])),
            field(3, Array("ot=th:8".utf8)), varintField(10, 3), varintField(12, 1), varintField(14, 2), fixed32Field(16, 0x301),
            field(11, fixed64Field(1, 5) + field(2, Array("event".utf8)) + field(3, field(1, Array("e".utf8)))),
            field(13, field(1, traceID) + field(2, [1, 1, 1, 1, 1, 1, 1, 1]) + field(3, Array("s".utf8)) + fixed32Field(6, 1)),
            varintField(99, 12345), field(100, [0xDE, 0xAD]), [0xA3, 0x06, 0x08, 0x01, 0xA4, 0x06],  // field 100 as a group
            fixed32Field(15, 7), varintField(1, 3),
        ]
        var accepted = 0
        for trial in 0..<2_000 {
            // One to three spans a scope, so refused and accepted spans follow each other;
            // now and then more than the decoder gathers before adding them to its batch.
            var spans: [UInt8] = []
            for _ in 0..<(trial % 50 == 0 ? 150 : Int(random.next() % 3) + 1) {
                var span: [UInt8] = []
                for _ in 0..<Int(random.next() % 12) + 1 { span += pieces[Int(random.next() % UInt64(pieces.count))] }
                if random.next() % 2 == 0 { span = field(1, traceID) + field(2, [1, 2, 3, 4, 5, 6, 7, 8]) + span }
                spans += field(2, span)
            }
            let resource = field(1, field(1, Array("service.name".utf8)) + field(2, field(1, Array("svc-\(trial % 3)".utf8))))
                + (trial % 5 == 0 ? field(1, field(1, Array("service.name".utf8)) + field(2, varintField(3, 1))) : [])
                + (trial % 7 == 0 ? field(3, field(2, Array("k8s.pod".utf8)) + field(3, Array("k8s.pod.uid".utf8))) : [])
            let scope = field(1, Array("envoy".utf8)) + field(2, Array("1.31".utf8)) + (trial % 4 == 0 ? varintField(9, 1) : [])
            let scopeSpans = (trial % 3 == 0 ? spans + field(1, scope) : field(1, scope) + spans)
                + field(3, Array("https://opentelemetry.io/schemas/1.27.0".utf8))
            let resourceSpans = (trial % 2 == 0 ? field(2, scopeSpans) + field(1, resource) : field(1, resource) + field(2, scopeSpans))
                + (trial % 6 == 0 ? field(1, field(2, [0x7F]) + varintField(2, 1)) : [])
            let request = field(1, resourceSpans) + (trial % 8 == 0 ? varintField(5, 1) + field(1, resourceSpans) : [])
            if try assertAgree(request, "trial \(trial)") { accepted += 1 }
        }
        XCTAssertGreaterThan(accepted, 1_000, "most hand-built requests are valid protobuf")
    }

    /// Seeded mutations of real traffic: both decoders refuse the same inputs and
    /// agree on the rest. Bounded, so it runs in every CI build.
    func testMutatedRequestsAreRefusedExactlyWhenSwiftProtobufRefusesThem() throws {
        let (requests, _) = simulatedRequests(count: 4)
        let originals: [[UInt8]] = [try requests[0].serializedBytes(), try randomExportRequest(seed: 5).serializedBytes()]
        var accepted = 0, refused = 0
        for (which, original) in originals.enumerated() {
            for (index, bytes) in mutations(of: original, count: 6_000, seed: 1_000 + UInt64(which)).enumerated() {
                if try assertAgree(bytes, "input \(which) mutation \(index)") { accepted += 1 } else { refused += 1 }
            }
        }
        XCTAssertGreaterThan(accepted, 500)
        XCTAssertGreaterThan(refused, 500)
    }

    func testNestingLimitIsSwiftProtobufs() throws {
        // Request > ResourceSpans > ScopeSpans > Span > KeyValue > AnyValue, then ArrayValue/AnyValue pairs.
        for extra in 88...100 {
            var value = field(1, Array("leaf".utf8))
            for _ in 0..<extra { value = field(5, field(1, value)) }
            let span = field(1, [UInt8](repeating: 1, count: 16)) + field(2, [UInt8](repeating: 2, count: 8))
                + field(9, field(1, Array("deep".utf8)) + field(2, value))
            let request = field(1, field(2, field(2, span)))
            try assertAgree(request, "nesting \(extra)")
        }
        var deep = field(1, [UInt8](repeating: 1, count: 16))
        for _ in 0..<60 { deep = field(5, field(1, deep)) }
        XCTAssertThrowsError(try DecodedTraceExport(protobuf: field(1, field(2, field(2, field(9, field(2, deep))))))) { error in
            XCTAssertEqual((error as? OTLPDecodingError)?.reason, .tooDeep)
        }
    }

    func testUTF8ValidationMatchesTheStandardLibrary() throws {
        var random = SeededGenerator(seed: 3)
        let interesting: [[UInt8]] = [[0xC0, 0x80], [0xE0, 0x80, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xF0, 0x9F, 0x98],
                                      [0xF0, 0x9F, 0x98, 0x80], [0xC3, 0xA9], [0xFF], [0x80], [0xE2, 0x9C, 0x93], [0xEF, 0xBF, 0xBF]]
        for trial in 0..<20_000 {
            var text = Array("ascii-prefix-".utf8.prefix(Int(random.next() % 14)))
            for _ in 0..<Int(random.next() % 4) {
                text += random.next() % 2 == 0 ? interesting[Int(random.next() % UInt64(interesting.count))]
                    : [UInt8(truncatingIfNeeded: random.next())]
            }
            let valid = String(validating: text, as: UTF8.self) != nil
            let span = field(1, [UInt8](repeating: 1, count: 16)) + field(2, [UInt8](repeating: 2, count: 8))
                + field(9, field(1, Array("k".utf8)) + field(2, field(1, text)))
            let request = field(1, field(2, field(2, span)))
            XCTAssertEqual((try? DecodedTraceExport(protobuf: request)) != nil, valid, "trial \(trial): \(text)")
            try assertAgree(request, "trial \(trial)")
        }
    }

    /// What golden signals read of a span's attributes is gathered while decoding, and
    /// the peer's name is found where the attributes are stored.
    func testGathersRequestFactsWhileDecoding() throws {
        func span(_ id: UInt8, _ attributes: [KeyValue]) -> OTLPSpan {
            OTLPSpan.with {
                $0.traceID = Data(repeating: 0xAB, count: 16)
                $0.spanID = Data([0, 0, 0, 0, 0, 0, 0, id])
                $0.name = "GET /"
                $0.kind = .client
                $0.attributes = attributes
            }
        }
        let long = KeyValue(String(repeating: "x", count: 200), "a key whose length takes two bytes")
        var request = ExportTraceServiceRequest()
        request.resourceSpans = [ResourceSpans.with {
            $0.resource.attributes = [KeyValue("service.name", "productpage")]
            $0.scopeSpans = [ScopeSpans.with {
                $0.spans = [
                    span(1, [long, KeyValue("upstream_cluster", "outbound|9080||reviews.shop.svc.cluster.local"),
                             KeyValue("peer.service", "reviews-v2"), KeyValue("response_size", "2048"),
                             KeyValue("request_size", Int64(512)), KeyValue("tls.client.subject", "spiffe://mesh/ns/shop/sa/reviews")]),
                    span(2, [KeyValue("http.method", "GET"), long, KeyValue("upstream_cluster", "outbound|9080||details.shop.svc.cluster.local"),
                             KeyValue("connection_security_policy", "none")]),
                    span(3, [KeyValue("db.system", "redis"), KeyValue("response_size", "-1"), KeyValue("messaging.system", "kafka")]),
                ]
            }]
        }]
        let decoded = try DecodedTraceExport(protobuf: try request.serializedBytes())
        XCTAssertEqual(decoded.facts.count, 3)
        func peer(_ row: Int) -> String? {
            guard let range = decoded.facts[row].peer else { return nil }
            let start = decoded.spans.attributes.range(of: row).lowerBound
            return String(decoding: decoded.spans.attributes.bytes[start + range.lowerBound..<start + range.upperBound], as: UTF8.self)
        }
        XCTAssertEqual(peer(0), "reviews-v2", "peer.service outranks the cluster whichever comes first")
        XCTAssertEqual(decoded.facts[0].requestBytes, 512)
        XCTAssertEqual(decoded.facts[0].responseBytes, 2048, "Envoy's sizes arrive as decimal strings")
        XCTAssertEqual(decoded.facts[0].security, .mutualTLS)
        XCTAssertEqual(peer(1), "details.shop.svc.cluster.local", "the host of an Envoy cluster name")
        XCTAssertEqual(decoded.facts[1].security, .plaintext)
        XCTAssertEqual(peer(2), "redis")
        XCTAssertTrue(decoded.facts[2].database)
        XCTAssertTrue(decoded.facts[2].messaging)
        XCTAssertEqual(decoded.facts[2].responseBytes, 0)
        XCTAssertEqual(decoded.facts, decoded.spans.requestFacts())
        // Built from a message (JSON, Zipkin), the facts are read from the stored attributes.
        XCTAssertEqual(DecodedTraceExport(request).facts, decoded.facts)
    }

    /// The filter that passes over attributes no fact needs lets every fact's key
    /// through (each one `key` knows), and its mask holds the bits those keys set.
    func testEveryFactKeyPassesTheKeyFilter() {
        var hashes: UInt64 = 0
        for key in RequestFacts.factKeys {
            let bytes = Array(UnsafeBufferPointer(start: key.utf8Start, count: key.utf8CodeUnitCount))
            bytes.withUnsafeBufferPointer { buffer in
                XCTAssertNotNil(RequestFacts.key(buffer, 0..<buffer.count), "\(key)")
                XCTAssertTrue(RequestFacts.mayBeFactKey(buffer.baseAddress!, count: buffer.count), "\(key)")
                if buffer.count >= 8 { hashes |= 1 << RequestFacts.keyHash(buffer.baseAddress!, count: buffer.count) }
            }
        }
        XCTAssertEqual(String(hashes, radix: 16), String(RequestFacts.factKeyHashes, radix: 16))
        // Keys of other lengths, and some of the same lengths, are passed over.
        var passed = 0
        for key in ["db.nam", "db.names", "http.request.method", "url.path", "peer.address", "component", "response_flags"] {
            let bytes = Array(key.utf8)
            XCTAssertNil(bytes.withUnsafeBufferPointer { RequestFacts.key($0, 0..<$0.count) }, key)
            if bytes.withUnsafeBufferPointer({ RequestFacts.mayBeFactKey($0.baseAddress!, count: $0.count) }) { passed += 1 }
        }
        XCTAssertLessThan(passed, 4)
    }

    /// The peer named by an Envoy cluster (`direction|port|subset|host`) is its host,
    /// and only a name of exactly four parts with a host has one: checked against
    /// splitting the name, for bars at every position of the words it is read in.
    func testTheHostOfAnEnvoyClusterNameIsItsFourthPart() throws {
        var random = SeededGenerator(seed: 7)
        for trial in 0..<3_000 {
            let length = Int(random.next() % 40)
            let name = String((0..<length).map { _ in random.next() % 4 == 0 ? "|" : Character(UnicodeScalar(UInt8(97 + random.next() % 3))) })
            let parts = name.split(separator: "|", omittingEmptySubsequences: false)
            let expected = parts.count == 4 && !parts[3].isEmpty ? String(parts[3]) : nil
            let span = field(1, [UInt8](repeating: 1, count: 16)) + field(2, [UInt8](repeating: 2, count: 8))
                + field(9, field(1, Array("upstream_cluster".utf8)) + field(2, field(1, Array(name.utf8))))
            let decoded = try DecodedTraceExport(protobuf: field(1, field(2, field(2, span))))
            let peer = decoded.facts[0].peer.map { range in
                String(decoding: decoded.spans.attributes.bytes[range], as: UTF8.self)
            }
            XCTAssertEqual(peer, expected, "trial \(trial): \(name)")
        }
    }

    func testEmptyInputIsAnEmptyRequest() throws {
        let decoded = try DecodedTraceExport(protobuf: [])
        XCTAssertEqual(decoded.spans.count, 0)
        XCTAssertEqual(decoded.outcome, IngestOutcome())
    }
}
