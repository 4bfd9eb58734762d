import Foundation
import GoldenSignals
import MeshCore
import OTLPWire
import Synchronization
@testable import QueryEngine
@testable import SegmentStore
import XCTest

/// Search over a real store (sealed segments and the head block) against an
/// independent reading of the same OTLP data; TraceQL parsing; the CLI's tables.
final class QueryTests: XCTestCase {
    // MARK: TraceQL

    func testTraceQLReadsWhatGrafanaWrites() throws {
        XCTAssertEqual(try TraceQL.parse(""), .spanset(.always))
        XCTAssertEqual(try TraceQL.parse("{}"), .spanset(.always))
        XCTAssertEqual(
            try TraceQL.parse(#"{resource.service.name="cart" && name="GET /api/cart" && duration>100ms && status=error}"#),
            .spanset(.and(.and(.and(
                .compare(.serviceName, .equal, .string("cart")),
                .compare(.name, .equal, .string("GET /api/cart"))),
                .compare(.duration, .greater, .duration(100_000_000))),
                .compare(.status, .equal, .status(.error)))))
        XCTAssertEqual(
            try TraceQL.parse(#"{ span.http.response.status_code >= 500 || .x != nil } && ({ kind = client } || { trace:duration < 1.5s })"#),
            .and(
                .spanset(.or(.compare(.attribute(.span, "http.response.status_code"), .greaterOrEqual, .integer(500)),
                             .compare(.attribute(.any, "x"), .notEqual, .nil))),
                .or(.spanset(.compare(.kind, .equal, .kind(.client))),
                    .spanset(.compare(.traceDuration, .less, .duration(1_500_000_000))))))
        XCTAssertEqual(try TraceQL.parse(#"{ span."odd key" =~ `a"b.*` && span:name != "x" && rootServiceName = "fe" }"#),
                       .spanset(.and(.and(
                           .compare(.attribute(.span, "odd key"), .matches, .string(#"a"b.*"#)),
                           .compare(.name, .notEqual, .string("x"))),
                           .compare(.rootServiceName, .equal, .string("fe")))))
        XCTAssertEqual(try TraceQL.parse("{ .ratio <= -0.5 && .ok = true }"),
                       .spanset(.and(.compare(.attribute(.any, "ratio"), .lessOrEqual, .decimal(-0.5)),
                                     .compare(.attribute(.any, "ok"), .equal, .bool(true)))))
    }

    func testTraceQLRefusalsSayWhereAndWhy() {
        let cases: [(String, Int, String)] = [
            ("{ foo = 1 }", 2, "need a scope"),
            ("{ .a = }", 7, "expected a value"),
            ("{ .a = 1", 8, "expected '}'"),
            ("{ status > error }", 11, "status compares"),
            (#"{ name > "a" }"#, 9, "quoted string"),
            ("{ duration = 12parsecs }", 13, "not a number or a duration"),
            ("{ duration =~ 300ms }", 14, "a duration compares"),
            (#"{ .a =~ "[" }"#, 8, "regular expression"),
            ("{ .a = 1 } | count() > 1", 11, "pipelines"),
            ("{ .a = 1 } >> { .b = 1 }", 11, "structural"),
            ("{ .a = unquoted }", 7, "strings are quoted"),
            (#"{ .a = "open }"#, 7, "unterminated"),
        ]
        for (query, offset, reason) in cases {
            XCTAssertThrowsError(try TraceQL.parse(query), query) { error in
                guard let error = error as? TraceQL.ParseError else { return XCTFail("\(query): \(error)") }
                XCTAssertEqual(error.offset, offset, "\(query): \(error)")
                XCTAssertTrue(error.reason.contains(reason), "\(query): \(error)")
            }
        }
    }

    // MARK: Search

    /// One span of the oracle: read from the OTLP messages with swift-protobuf, not from the store.
    private struct PlainSpan {
        var trace: TraceID
        var id: SpanID
        var parent: SpanID
        var service: String
        var name: String
        var kind: SpanKind
        var error: Bool
        var start: UInt64
        var end: UInt64
        var attributes: [String: AnyValue]
    }

    private func plainSpans(_ requests: [ExportTraceServiceRequest]) -> [PlainSpan] {
        requests.flatMap { request in
            request.resourceSpans.flatMap { resourceSpans in
                let service = resourceSpans.resource.attributes.first { $0.key == "service.name" }?.value.stringValue ?? ""
                return resourceSpans.scopeSpans.flatMap(\.spans).map { span in
                    PlainSpan(trace: TraceID(bytes: span.traceID)!, id: SpanID(bytes: span.spanID)!,
                              parent: span.parentSpanID.isEmpty ? .zero : SpanID(bytes: span.parentSpanID)!,
                              service: service, name: span.name, kind: SpanKind(rawValue: UInt8(span.kind.rawValue))!,
                              error: span.status.code == .error, start: span.startTimeUnixNano, end: span.endTimeUnixNano,
                              attributes: Dictionary(span.attributes.map { ($0.key, $0.value) }) { first, _ in first })
                }
            }
        }
    }

    /// A store whose first half of traffic is in sealed segments and the rest in the head block.
    private func store(_ requests: [ExportTraceServiceRequest]) throws -> SpanStore {
        var configuration = SpanStore.Configuration(dataDirectory: temporaryDirectory(self))
        configuration.compactionTargetSpans = 0
        let store = try SpanStore(configuration: configuration)
        for (index, request) in requests.enumerated() {
            _ = try store.append(try received(request))
            if index == requests.count / 3 || index == requests.count / 2 { try store.seal() }
        }
        XCTAssertEqual(store.sealedSegments.count, 2)
        XCTAssertGreaterThan(store.unsealedSpanCount, 0)
        return store
    }

    func testSearchFindsExactlyTheTracesAnIndependentReadingFinds() throws {
        let (requests, _) = simulatedRequests(count: 400, errorRate: 0.05)
        let store = try store(requests)
        let engine = QueryEngine(snapshot: store.snapshot())
        let spans = plainSpans(requests)
        let byTrace = Dictionary(grouping: spans, by: \.trace)
        let start = spans.map(\.start).min()!
        let end = spans.map(\.end).max()!
        func duration(_ trace: [PlainSpan]) -> UInt64 { trace.map(\.end).max()! - trace.map(\.start).min()! }
        func root(_ trace: [PlainSpan]) -> PlainSpan? { trace.filter { $0.parent == .zero }.min { $0.start < $1.start } }
        func status(_ span: PlainSpan) -> Int64 {
            if case .intValue(let code)? = span.attributes["http.response.status_code"]?.value { return code }
            return 0
        }
        // A middle window: only spans starting within it may match.
        let window = (start + (end - start) / 4)...(start + (end - start) * 3 / 4)

        let cases: [(String, ClosedRange<UInt64>, ([PlainSpan]) -> Bool)] = [
            (#"{ resource.service.name = "payments" && status = error }"#, start...end,
             { $0.contains { $0.service == "payments" && $0.error } }),
            ("{ duration > 40ms && kind = server }", start...end,
             { $0.contains { $0.end - $0.start > 40_000_000 && $0.kind == .server } }),
            (#"{ span.http.response.status_code >= 500 } && { resource.service.name = "fraud" }"#, start...end,
             { $0.contains { status($0) >= 500 } && $0.contains { $0.service == "fraud" } }),
            (#"{ name =~ "GET /api/stock/.*" && resource.service.name = "inventory" } || { traceDuration > 150ms }"#, start...end,
             { trace in trace.contains { $0.name.hasPrefix("GET /api/stock/") && $0.service == "inventory" } || duration(trace) > 150_000_000 }),
            (#"{ rootName = "GET /" && span.http.response.status_code = 201 }"#, start...end,
             { trace in root(trace)?.name == "GET /" && trace.contains { status($0) == 201 } }),
            (#"{ resource.service.name = "checkout" }"#, window,
             { $0.contains { $0.service == "checkout" && window.contains($0.start) } }),
        ]
        for (query, range, oracle) in cases {
            let expected = Set(byTrace.filter { oracle($0.value) }.keys)
            XCTAssertFalse(expected.isEmpty, "\(query) should match some of the traffic")
            XCTAssertLessThan(expected.count, byTrace.count, "\(query) should not match everything")
            // Twice: the second pass skips blocks by the summaries the first one left.
            let first = try engine.search(TraceSearch(query: try TraceQL.parse(query), window: range, limit: 10_000))
            let found = try engine.search(TraceSearch(query: try TraceQL.parse(query), window: range, limit: 10_000))
            XCTAssertEqual(Set(first.map(\.traceID)), expected, query)
            XCTAssertEqual(Set(found.map(\.traceID)), expected, query)
            for summary in found {
                // Whole traces: every span, across segments and the head block.
                XCTAssertEqual(summary.spanCount, byTrace[summary.traceID]!.count, query)
                XCTAssertEqual(summary.duration, duration(byTrace[summary.traceID]!), query)
                XCTAssertEqual(summary.rootService, root(byTrace[summary.traceID]!)?.service ?? "", query)
            }
        }
    }

    func testSpanFactsAgreeWithTheDecodedRowsOfEveryBlock() throws {
        let (requests, _) = simulatedRequests(count: 300, errorRate: 0.05)
        var batch = SpanBatch()
        for request in requests { batch.append(request) }
        let path = temporaryDirectory(self) + "/facts.mts"
        try SegmentWriter.write(batch, walSequence: 1, to: path, blockSpans: 512, runSpans: 64)
        let segment = try SegmentReader(path: path)
        XCTAssertTrue(segment.hasSpanFacts)
        XCTAssertGreaterThan(segment.footer.blocks.count, 3)
        let decoded = try segment.readBatch()
        let (names, resources) = try segment.factDictionaries()
        var row = 0
        for block in segment.footer.blocks.indices {
            let facts = try segment.facts(block: block)
            XCTAssertEqual(facts.count, segment.footer.blocks[block].spanCount)
            for local in 0..<facts.count {
                XCTAssertEqual(facts.traceIDs[Int(facts.traces[local])], decoded.traceIDs[row])
                XCTAssertEqual(facts.kinds[local], decoded.kinds[row])
                XCTAssertEqual(facts.statusCodes[local], decoded.statusCodes[row])
                XCTAssertEqual(facts.startTimes[local], decoded.startTimes[row])
                XCTAssertEqual(facts.endTimes[local], decoded.endTimes[row])
                XCTAssertEqual(names[Int(facts.names[local])], decoded.names[row])
                XCTAssertEqual(resources[Int(facts.resources[local])].serviceName, decoded.serviceName(at: row))
                row += 1
            }
        }
        XCTAssertEqual(row, decoded.count)
        // The summaries the segment stores are exactly those its facts make.
        let summaries = try segment.summaries()
        XCTAssertEqual(summaries.count, segment.footer.blocks.count)
        for block in segment.footer.blocks.indices {
            let summary = try XCTUnwrap(summaries[block])
            XCTAssertEqual(summary, BlockSummary(try segment.facts(block: block)))
        }

        // A damaged summaries chunk is reported, and a search reads every block instead.
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: path)))
        let chunk = try XCTUnwrap(segment.footer.columns.first { $0.column == "block.summaries" })
        bytes[chunk.offset + chunk.compressedSize / 2] ^= 0xFF
        let damagedPath = temporaryDirectory(self) + "/damaged.mts"
        try Data(bytes).write(to: URL(fileURLWithPath: damagedPath))
        let damaged = try SegmentReader(path: damagedPath)
        XCTAssertThrowsError(try damaged.summaries()) { error in
            guard case .corruptColumn(damagedPath, "block.summaries", "checksum mismatch")? = error as? StoreError else {
                return XCTFail("\(error)")
            }
        }
        let reports = Mutex(0)
        let search = TraceSearch(query: try TraceQL.parse("{ status = error }"), window: 0...UInt64.max, limit: 1000)
        let expected = try QueryEngine(snapshot: SpanStore.Snapshot(unsealed: [], segments: [segment])).search(search)
        let found = try QueryEngine(snapshot: SpanStore.Snapshot(unsealed: [], segments: [damaged])) { _, _ in
            reports.withLock { $0 += 1 }
        }.search(search)
        XCTAssertFalse(expected.isEmpty)
        XCTAssertEqual(found.map(\.traceID), expected.map(\.traceID))
        XCTAssertEqual(reports.withLock { $0 }, 1)

        // A segment of an earlier version stores none: reading a block's facts leaves its summary.
        let golden = goldenSegmentPath(version: 3, name: "mesh")
        let earlier = try SegmentReader(path: golden)
        XCTAssertEqual(try earlier.summaries().compactMap { $0 }.count, 0)
        let facts = try earlier.facts(block: 0)
        XCTAssertEqual(try earlier.summaries()[0], BlockSummary(facts))
    }

    func testSearchReturnsTheNewestMatchesUpToTheLimit() throws {
        let (requests, _) = simulatedRequests(count: 200)
        let store = try store(requests)
        let spans = plainSpans(requests)
        let newestFirst = Dictionary(grouping: spans.filter { $0.service == "frontend" }, by: \.trace)
            .mapValues { $0.map(\.start).max()! }
            .sorted { $0.value > $1.value }.map(\.key)
        let found = try QueryEngine(snapshot: store.snapshot()).search(
            TraceSearch(query: try TraceQL.parse(#"{ resource.service.name = "frontend" }"#), window: 0...UInt64.max, limit: 7, spansPerSpanset: 2))
        XCTAssertEqual(found.map(\.traceID), Array(newestFirst.prefix(7)))
        for summary in found {
            XCTAssertEqual(summary.matched.count, 1)
            XCTAssertEqual(summary.matched[0].rows.count, 2)
            XCTAssertGreaterThanOrEqual(summary.matched[0].count, 2)
            XCTAssertEqual(summary.spans.serviceName(at: summary.matched[0].rows[0]), "frontend")
        }
    }

    func testQueryServiceRoutesAnswerFromTheStore() throws {
        let (requests, _) = simulatedRequests(count: 50, start: TimeWindow.now() - 60_000_000_000)
        let store = try store(requests)
        let golden = try GoldenSignals(configuration: .init(directory: temporaryDirectory(self)))
        for request in requests { golden.follow(try received(request)) }
        let service = QueryService(engine: { QueryEngine(snapshot: store.snapshot()) }, golden: golden)

        let trace = plainSpans(requests)[0].trace
        let byID = service.answer(path: "/api/traces/\(trace.hex)", parameters: QueryParameters(), accept: "application/protobuf")
        XCTAssertEqual(byID.status, 200)
        let data = try TracesData(serializedBytes: byID.body)
        XCTAssertEqual(data.resourceSpans.flatMap(\.scopeSpans).flatMap(\.spans).count, plainSpans(requests).filter { $0.trace == trace }.count)

        let missing = service.answer(path: "/api/v2/traces/\(String(repeating: "ab", count: 16))", parameters: QueryParameters())
        XCTAssertEqual(missing.status, 404)
        let badID = service.answer(path: "/api/traces/xyz", parameters: QueryParameters())
        XCTAssertEqual(badID.status, 400)
        XCTAssertTrue(badID.text.contains("xyz"))
        let unknown = service.answer(path: "/api/v1/nothing", parameters: QueryParameters())
        XCTAssertEqual(unknown.status, 404)

        let services = service.answer(path: "/api/services", parameters: QueryParameters())
        let names = try JSONDecoder().decode(ServicesEnvelope.self, from: Data(services.body))
        XCTAssertEqual(Set(names.data), Set(plainSpans(requests).map(\.service)))
        XCTAssertEqual(names.total, names.data.count)
    }

    private struct ServicesEnvelope: Decodable {
        var data: [String]
        var total: Int
    }

    // MARK: CLI tables

    /// The tables are compared with files in `Fixtures/cli`; `MESHTRACE_UPDATE_GOLDEN=1`
    /// rewrites them from the current output.
    private func assertGolden(_ text: String, _ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("cli/\(name).txt")
        if ProcessInfo.processInfo.environment["MESHTRACE_UPDATE_GOLDEN"] == "1" {
            let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/cli/\(name).txt")
            try FileManager.default.createDirectory(at: source.deletingLastPathComponent(), withIntermediateDirectories: true)
            try text.write(to: source, atomically: true, encoding: .utf8)
            return
        }
        let expected = try String(contentsOf: url, encoding: .utf8)
        XCTAssertEqual(text, expected, "\(name) differs from Fixtures/cli/\(name).txt", file: file, line: line)
    }

    private static func figures(requests: Int, errors: Int, p50: Double?, p99: Double?, mtls: Double? = nil, seconds: Double = 60) -> SignalQueries.Figures {
        let json = """
            {"requests":\(requests),"errors":\(errors),"client_errors":1,"rps":\(Double(requests) / seconds),
             "success":\(requests == 0 ? "null" : String(1 - Double(errors) / Double(requests))),
             "latency_ms_p50":\(p50.map { String($0) } ?? "null"),"latency_ms_p90":\(p50.map { String($0 * 2) } ?? "null"),
             "latency_ms_p95":\(p99.map { String($0 / 2) } ?? "null"),"latency_ms_p99":\(p99.map { String($0) } ?? "null"),
             "request_bytes":1000,"response_bytes":5000,"mtls":\(mtls.map { String($0) } ?? "null")}
            """
        return try! JSONDecoder().decode(SignalQueries.Figures.self, from: Data(json.utf8))
    }

    func testTablesMatchTheirGoldenFiles() throws {
        let stats = [
            SignalQueries.Stat(name: "cart", namespace: "shop", versions: ["v1", "v2"],
                               inbound: Self.figures(requests: 1200, errors: 18, p50: 6.9, p99: 81.5), outbound_requests: 2400),
            SignalQueries.Stat(name: "loadgen", namespace: "", versions: [],
                               inbound: Self.figures(requests: 0, errors: 0, p50: nil, p99: nil), outbound_requests: 300),
        ]
        try assertGolden(QueryTables.stat(stats), "stat")
        try assertGolden(QueryTables.stat(stats, wide: true), "stat-wide")
        let edges = [
            SignalQueries.Edge(source: "frontend", source_namespace: "edge", target: "cart", target_namespace: "shop", connection_type: "",
                               figures: Self.figures(requests: 600, errors: 6, p50: 7.1, p99: 401.7, mtls: 0.9)),
            SignalQueries.Edge(source: "cart", source_namespace: "shop", target: "redis", target_namespace: "", connection_type: "database",
                               figures: Self.figures(requests: 600, errors: 0, p50: 1, p99: 1.2)),
            SignalQueries.Edge(source: "checkout", source_namespace: "shop", target: "payments", target_namespace: "payments", connection_type: "",
                               figures: Self.figures(requests: 30, errors: 0, p50: 20, p99: 90, mtls: 1)),
        ]
        try assertGolden(QueryTables.edges(edges), "edges")
        try assertGolden(QueryTables.edges(edges, wide: true), "edges-wide")
        XCTAssertTrue(QueryTables.edges(edges, colour: true).contains("\u{1B}[31mno (10.00% plaintext)\u{1B}[0m"))

        let search = try JSONDecoder().decode([QueryService.SearchResult].self, from: Data("""
            [{"trace_id":"5716a1730b63155b51170a70bb95dbd3","root_service":"frontend","root_operation":"GET /","start":"2026-11-27T16:46:09.048Z",
              "start_unix_nano":1795797969048000000,"duration_ms":170.25,"spans":21,"errors":2,"matched_spans":3,
              "services":[{"name":"cart","spans":4,"errors":2},{"name":"frontend","spans":5,"errors":0}]},
             {"trace_id":"0000000000000000a3ce929d0e0e4736","root_service":"","root_operation":"","start":"2026-11-27T16:46:08.001Z",
              "start_unix_nano":1795797968001000000,"duration_ms":0.85,"spans":2,"errors":0,"matched_spans":1,
              "services":[{"name":"cart","spans":2,"errors":0}]}]
            """.utf8))
        try assertGolden(QueryTables.search(search), "search")
        try assertGolden(QueryTables.search(search, wide: true), "search-wide")

        let groups = [
            SignalQueries.LatencyGroup(service: "cart", operation: "GET /api/cart", span_kind: "server", version: nil, source: nil, target: nil,
                                       figures: Self.figures(requests: 1200, errors: 18, p50: 6.9, p99: 81.5), series: nil),
            SignalQueries.LatencyGroup(service: "cart", operation: "HGETALL", span_kind: "client", version: nil, source: nil, target: nil,
                                       figures: Self.figures(requests: 1200, errors: 0, p50: 0.95, p99: 3.1), series: nil),
        ]
        try assertGolden(QueryTables.latency(groups, by: .operation), "latency-operation")
        var stepped = groups[0]
        stepped.series = [
            .init(time: "2026-11-27T16:00:00.000Z", requests: 600, errors: 10, latency_ms_p50: 6.5, latency_ms_p95: 40, latency_ms_p99: 80),
            .init(time: "2026-11-27T16:05:00.000Z", requests: 0, errors: 0, latency_ms_p50: nil, latency_ms_p95: nil, latency_ms_p99: nil),
        ]
        try assertGolden(QueryTables.latency([stepped], by: .operation), "latency-series")
        try assertGolden(QueryTables.top(groups, limit: 1), "top")

        let audit = SignalQueries.Audit(findings: [
            .init(kind: "plaintext_edge", source: "frontend", target: "cart", requests: 60, detail: "10.00% of requests without mutual TLS"),
            .init(kind: "unenrolled_workload", source: "cart", target: "redis", requests: 600, detail: "callee reports no spans (database)"),
        ])
        try assertGolden(QueryTables.audit(audit), "audit")
        let comparison = QueryService.Comparison(service: "cart", versions: [
            .init(version: "v1", baseline: true, figures: Self.figures(requests: 1000, errors: 10, p50: 6, p99: 80),
                  error_rate_delta_points: 0, p99_ratio: 1),
            .init(version: "v2", baseline: false, figures: Self.figures(requests: 100, errors: 5, p50: 7, p99: 120),
                  error_rate_delta_points: 4, p99_ratio: 1.5),
        ])
        try assertGolden(QueryTables.compare(comparison), "compare")
    }

    func testWaterfallMatchesItsGoldenFile() throws {
        var batch = SpanBatch()
        let trace = TraceID(hex: "4bf92f3577b34da6a3ce929d0e0e4736")!
        let request = ExportTraceServiceRequest.with { request in
            func span(_ id: UInt8, _ parent: UInt8, _ name: String, _ kind: OTLPSpan.SpanKind, _ start: UInt64, _ end: UInt64, error: Bool = false) -> OTLPSpan {
                OTLPSpan.with {
                    $0.traceID = Data(trace.bytes)
                    $0.spanID = Data([0, 0, 0, 0, 0, 0, 0, id])
                    if parent != 0 { $0.parentSpanID = Data([0, 0, 0, 0, 0, 0, 0, parent]) }
                    $0.name = name
                    $0.kind = kind
                    $0.startTimeUnixNano = 1_700_000_000_000_000_000 + start
                    $0.endTimeUnixNano = 1_700_000_000_000_000_000 + end
                    if error { $0.status.code = .error }
                }
            }
            func resource(_ service: String, _ spans: [OTLPSpan]) -> ResourceSpans {
                ResourceSpans.with {
                    $0.resource.attributes = [KeyValue.with { $0.key = "service.name"; $0.value.stringValue = service }]
                    $0.scopeSpans = [ScopeSpans.with { $0.spans = spans }]
                }
            }
            request.resourceSpans = [
                resource("frontend", [span(1, 0, "GET /", .server, 0, 100_000_000), span(2, 1, "GET /api/cart", .client, 5_000_000, 65_000_000, error: true)]),
                resource("cart", [span(3, 2, "GET /api/cart", .server, 6_000_000, 64_000_000, error: true), span(4, 3, "HGETALL", .client, 10_000_000, 11_000_000)]),
            ]
        }
        batch.append(request)
        try assertGolden(TraceTree.render(batch.sortedByTrace(), barWidth: 20), "waterfall")
        XCTAssertTrue(TraceTree.render(batch.sortedByTrace(), colour: true).contains("\u{1B}[31mERROR\u{1B}[0m"))
    }
}
