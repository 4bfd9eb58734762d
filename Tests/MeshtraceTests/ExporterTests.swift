import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import MeshCore
@_spi(CABI) @testable import MeshExporter
import OTLPWire
import XCTest

/// MeshExporter: trace context, the span ring, the OTLP it writes, and export to a
/// real collector process over OTLP/HTTP and OTLP/gRPC, through a collector restart.
final class ExporterTests: XCTestCase {
    // MARK: Trace context

    func testTraceparentAndB3ParseAsTheSpecificationsSay() throws {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        let context = try XCTUnwrap(TraceContext(traceparent: header, tracestate: "ot=th:8,vendor=x"))
        XCTAssertEqual(context.traceID.hex, "4bf92f3577b34da6a3ce929d0e0e4736")
        XCTAssertEqual(context.spanID.hex, "00f067aa0ba902b7")
        XCTAssertTrue(context.sampled)
        XCTAssertEqual(context.traceState, "ot=th:8,vendor=x")
        XCTAssertEqual(context.traceparent, header)
        // A later version is read by its first fields; these are refused.
        XCTAssertNotNil(TraceContext(traceparent: "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra"))
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // version ff
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // zero span id
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  // upper case
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  // version 00 with more
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  // short trace id
        ] {
            XCTAssertNil(TraceContext(traceparent: bad), bad)
        }

        let single = try XCTUnwrap(TraceContext(b3: { $0 == "b3" ? "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0-05e3ac9a4f6e3b90" : nil }))
        XCTAssertEqual(single.traceID.hex, "80f198ee56343ba864fe8b2a57d3eff7")
        XCTAssertEqual(single.spanID.hex, "e457b5a2e4d86bd1")
        XCTAssertFalse(single.sampled)
        let headers = ["x-b3-traceid": "a3ce929d0e0e4736", "x-b3-spanid": "00f067aa0ba902b7", "x-b3-sampled": "1"]
        let multi = try XCTUnwrap(TraceContext(b3: { headers[$0] }))
        XCTAssertEqual(multi.traceID, TraceID(high: 0, low: 0xa3ce929d0e0e4736))
        XCTAssertTrue(multi.sampled)
        XCTAssertEqual(multi.b3, "0000000000000000a3ce929d0e0e4736-00f067aa0ba902b7-1")
        XCTAssertNil(TraceContext(b3: { $0 == "b3" ? "0" : nil }))
    }

    func testHeadSamplingIsConsistentAndRecordsItsThreshold() {
        let sampler = HeadSampler(probability: 0.25)
        var kept = 0
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            let id = TraceID(high: generator.next(), low: generator.next())
            let (sampled, traceState) = sampler.decide(traceID: id, parent: nil)
            // The same id gets the same decision from another sampler of the same probability.
            XCTAssertEqual(HeadSampler(probability: 0.25).decide(traceID: id, parent: nil).sampled, sampled)
            if sampled {
                kept += 1
                XCTAssertEqual(traceState, "ot=th:c")
            }
        }
        XCTAssertEqual(Double(kept) / 20_000, 0.25, accuracy: 0.02)
        // A context from upstream is followed, with its tracestate.
        let parent = TraceContext(traceID: TraceID(high: 1, low: 0xFF_FFFF_FFFF_FFFF), spanID: SpanID(3), flags: 0, traceState: "ot=th:0")
        XCTAssertEqual(sampler.decide(traceID: parent.traceID, parent: parent).sampled, false)
        XCTAssertEqual(HeadSampler(probability: 1).decide(traceID: parent.traceID, parent: nil).traceState, "")
    }

    // MARK: Ring and encoding

    private func span(_ index: Int, kind: SpanKind = .client) -> RequestSpan {
        RequestSpan(
            traceID: TraceID(high: 0xABCD, low: UInt64(index) << 8 | 0x42), spanID: SpanID(UInt64(index) + 1),
            parentSpanID: index % 2 == 0 ? .zero : SpanID(7), name: "GET /api/orders/{id}", kind: kind,
            startTime: 1_700_000_000_000_000_000 + UInt64(index) * 1000, endTime: 1_700_000_000_002_000_000 + UInt64(index) * 1000,
            httpStatus: index % 10 == 0 ? 503 : 200, failed: index % 10 == 0, method: "GET", path: "/api/orders/\(index)",
            peerService: "payments", upstreamCluster: "outbound|8080||payments.shop.svc.cluster.local",
            peerAddress: "10.0.3.7:8080", responseFlags: "-", requestID: "req-\(index)", userAgent: "envoy",
            requestBytes: 120, responseBytes: UInt64(2000 + index), mutualTLS: index % 3 != 0, traceState: index % 4 == 0 ? "ot=th:8" : "")
    }

    func testEncodedSpansDecodeWithSwiftProtobufAsRecorded() throws {
        try checkEncodedSpans(labelled: false)
    }

    func testLabelledSpansEncodeAsTheirStrings() throws {
        // Every repeated string by label, its own string blanked: what is exported comes from the labels.
        try checkEncodedSpans(labelled: true)
        let labels = LabelTable()
        XCTAssertEqual(labels.label("GET"), labels.label("GET"))
        XCTAssertNotEqual(labels.label("GET"), labels.label("POST"))
        XCTAssertNil(labels.label(String(repeating: "x", count: LabelTable.maxLength + 1)))
        // A label another table made reads as empty, never as another table's bytes.
        XCTAssertEqual(LabelTable().bytes(of: Int(labels.label("POST")!.index)).count, 0)
        // Labels are not cut to a slot's size: a 600-byte cluster name in a 32-byte slot.
        let small = SpanRing(byteBudget: 4 * SpanRing.slotSize(stringBytes: 32), stringBytes: 32, shards: 1)
        let cluster = "outbound|8080||" + String(repeating: "p", count: 585)
        var long = span(1)
        long.upstreamCluster = ""
        long.path = "/x"
        long.requestID = ""
        long.labels = SpanLabels(name: labels.label(long.name), upstreamCluster: labels.label(cluster))
        XCTAssertTrue(small.push(long, bits: SlotHeader.exportBit))
        var drained = DrainedSpans(capacity: 1, slotBytes: SlotString.allCases.count * 2 + 32, labels: labels)
        small.drain(into: &drained, limit: 1)
        XCTAssertEqual(drained.headers[0].bits & SlotHeader.truncatedBit, 0)
        XCTAssertEqual(Array(drained.string(0, .upstreamCluster)), Array(cluster.utf8))
        XCTAssertEqual(Array(drained.string(0, .name)), Array(long.name.utf8))
        XCTAssertEqual(Array(drained.string(0, .path)), Array("/x".utf8))
    }

    private func checkEncodedSpans(labelled: Bool) throws {
        let ring = SpanRing(byteBudget: 1 << 20, shards: 4)
        let labels = LabelTable()
        for index in 0..<100 {
            var recorded = span(index)
            if labelled {
                recorded.labels = SpanLabels(
                    name: labels.label(recorded.name), method: labels.label(recorded.method), peerService: labels.label(recorded.peerService),
                    upstreamCluster: labels.label(recorded.upstreamCluster), responseFlags: labels.label(recorded.responseFlags),
                    userAgent: labels.label(recorded.userAgent))
                (recorded.name, recorded.method, recorded.peerService, recorded.upstreamCluster) = ("", "", "", "")
            }
            XCTAssertTrue(ring.push(recorded, bits: index == 5 ? 0 : SlotHeader.exportBit))
        }
        var drained = DrainedSpans(capacity: 100, slotBytes: SlotString.allCases.count * 2 + ring.stringBytes, labels: labels)
        ring.drain(into: &drained, limit: 1000)
        XCTAssertEqual(drained.count, 100)
        XCTAssertEqual(ring.count, 0)
        var encoder = OTLPSpanEncoder(resourceAttributes: [("service.name", "frontend"), ("k8s.pod.name", "frontend-1")],
                                      scopeName: "meshtrace.MeshExporter", scopeVersion: "1")
        let request = try ExportTraceServiceRequest(serializedBytes: encoder.encode(drained))
        XCTAssertEqual(request.resourceSpans.count, 1)
        let resource = request.resourceSpans[0]
        XCTAssertEqual(resource.resource.attributes.map(\.key), ["service.name", "k8s.pod.name"])
        XCTAssertEqual(resource.scopeSpans[0].scope.name, "meshtrace.MeshExporter")
        let spans = resource.scopeSpans[0].spans
        // The span recorded without the export bit is left out.
        XCTAssertEqual(spans.count, 99)
        for decoded in spans {
            let index = Int(TraceID(bytes: decoded.traceID)!.low >> 8)
            let recorded = span(index)
            XCTAssertNotEqual(index, 5)
            XCTAssertEqual(TraceID(bytes: decoded.traceID), recorded.traceID)
            XCTAssertEqual(SpanID(bytes: decoded.spanID), recorded.spanID)
            XCTAssertEqual(decoded.parentSpanID.isEmpty ? SpanID.zero : SpanID(bytes: decoded.parentSpanID), recorded.parentSpanID)
            XCTAssertEqual(decoded.name, recorded.name)
            XCTAssertEqual(decoded.kind, .client)
            XCTAssertEqual(decoded.startTimeUnixNano, recorded.startTime)
            XCTAssertEqual(decoded.endTimeUnixNano, recorded.endTime)
            XCTAssertEqual(decoded.traceState, recorded.traceState)
            XCTAssertEqual(decoded.status.code, recorded.failed ? .error : .unset)
            let attributes = Dictionary(decoded.attributes.map { ($0.key, $0.value) }) { first, _ in first }
            XCTAssertEqual(attributes["http.request.method"]?.stringValue, "GET")
            XCTAssertEqual(attributes["url.path"]?.stringValue, recorded.path)
            XCTAssertEqual(attributes["peer.service"]?.stringValue, "payments")
            XCTAssertEqual(attributes["user_agent.original"]?.stringValue, "envoy")
            XCTAssertEqual(attributes["response_flags"]?.stringValue, "-")
            XCTAssertEqual(attributes["upstream_cluster"]?.stringValue, recorded.upstreamCluster)
            XCTAssertEqual(attributes["guid:x-request-id"]?.stringValue, recorded.requestID)
            XCTAssertEqual(attributes["http.response.status_code"]?.intValue, Int64(recorded.httpStatus))
            XCTAssertEqual(attributes["http.response.body.size"]?.intValue, Int64(recorded.responseBytes))
            XCTAssertEqual(attributes["connection_security_policy"]?.stringValue, recorded.mutualTLS! ? "mutual_tls" : "none")
            XCTAssertEqual(decoded.attributes.count, Set(decoded.attributes.map(\.key)).count)
        }
    }

    func testRingHoldsItsBoundAndCountsWhatItDrops() {
        let ring = SpanRing(byteBudget: 64 * SpanRing.slotSize(stringBytes: 384), shards: 4)
        XCTAssertEqual(ring.capacity, 64)
        var pushed = 0
        for index in 0..<1000 where ring.push(span(index), bits: SlotHeader.exportBit) { pushed += 1 }
        // Spans spread over shards by trace id; each shard holds a quarter.
        XCTAssertEqual(pushed, 64)
        XCTAssertEqual(ring.totals.recorded, 64)
        XCTAssertEqual(ring.totals.dropped, 936)
        // A string longer than a slot holds is cut, not spilled into the next slot.
        let small = SpanRing(byteBudget: 4 * SpanRing.slotSize(stringBytes: 32), stringBytes: 32, shards: 1)
        var long = span(1)
        long.path = String(repeating: "x", count: 100)
        XCTAssertTrue(small.push(long, bits: SlotHeader.exportBit))
        var drained = DrainedSpans(capacity: 1, slotBytes: SlotString.allCases.count * 2 + 32, labels: LabelTable())
        small.drain(into: &drained, limit: 1)
        XCTAssertNotEqual(drained.headers[0].bits & SlotHeader.truncatedBit, 0)
        XCTAssertEqual(drained.strings(0).reduce(0) { $0 + $1.count }, 32)
    }

    // MARK: Against a real collector

    func testExportsOverHTTPAndGRPCToARealCollector() async throws {
        let collector = try CollectorProcess(test: self)
        try collector.start()
        defer { collector.stop() }
        for (transport, compression) in [(MeshExporter.Configuration.Transport.http, MeshExporter.Configuration.Compression.zstd),
                                         (.http, .gzip), (.grpc, .gzip), (.grpc, .none)] {
            var configuration = MeshExporter.Configuration(
                endpoint: transport == .http ? "http://127.0.0.1:\(collector.httpPort)" : "127.0.0.1:\(collector.grpcPort)",
                transport: transport, serviceName: "frontend")
            configuration.compression = compression
            configuration.flushInterval = .milliseconds(50)
            let exporter = try MeshExporter(configuration: configuration)
            let base = UInt64(transport == .http ? 1 : 2) << 40 | UInt64(compression == .none ? 0 : compression == .gzip ? 1 : 2) << 32
            for index in 0..<300 {
                var recorded = span(index)
                recorded.traceID = TraceID(high: base, low: UInt64(index) << 8 | 0x42)
                exporter.record(recorded)
            }
            await exporter.flush()
            let statistics = exporter.statistics
            XCTAssertEqual(statistics.recorded, 300, "\(transport) \(compression)")
            XCTAssertEqual(statistics.exported, 300, "\(transport) \(compression): \(statistics.lastError ?? "")")
            XCTAssertEqual(statistics.metricExports, 1, "\(transport) \(compression): \(statistics.lastError ?? "")")
            await exporter.shutdown()
            // The collector stored them as recorded.
            let trace = try await collector.trace(TraceID(high: base, low: 7 << 8 | 0x42))
            XCTAssertEqual(trace?.count, 1)
        }
    }

    func testACollectorRestartLosesNothingAcknowledgedAndTheBoundHolds() async throws {
        let collector = try CollectorProcess(test: self)
        try collector.start()
        defer { collector.stop() }
        var configuration = MeshExporter.Configuration(endpoint: "http://127.0.0.1:\(collector.httpPort)", serviceName: "frontend")
        configuration.flushInterval = .milliseconds(20)
        configuration.memoryLimit = 256 << 10
        configuration.retry.initial = .milliseconds(50)
        configuration.retry.maximum = .milliseconds(200)
        configuration.requestTimeout = .seconds(2)
        let exporter = try MeshExporter(configuration: configuration)
        var recorded: [TraceID] = []
        func record(_ count: Int) async {
            for _ in 0..<count {
                let index = recorded.count
                var next = span(index)
                next.traceID = TraceID(high: 0x5151, low: UInt64(index) << 8 | 0x11)
                if exporter.record(next) { recorded.append(next.traceID) }
                if index % 50 == 0 { try? await Task.sleep(for: .milliseconds(2)) }
            }
        }
        await record(500)
        collector.kill()
        // Down: the exporter keeps recording into its ring and drops past its bound, counting.
        await record(3000)
        // A request cut off by the kill fails (at the latest by its timeout), and is retried.
        var whileDown = exporter.statistics
        for _ in 0..<100 where whileDown.retries == 0 {
            try await Task.sleep(for: .milliseconds(50))
            whileDown = exporter.statistics
        }
        XCTAssertGreaterThan(whileDown.droppedBufferFull, 0)
        XCTAssertGreaterThan(whileDown.retries, 0, "\(whileDown)")
        try collector.start()
        await record(500)
        await exporter.flush()
        let statistics = exporter.statistics
        await exporter.shutdown()
        // Everything is accounted for: exported, or counted as dropped.
        XCTAssertEqual(statistics.recorded, statistics.exported + statistics.droppedExportFailed + statistics.rejectedByCollector,
                       "\(statistics)")
        XCTAssertEqual(statistics.droppedExportFailed, 0, "\(statistics)")
        XCTAssertEqual(UInt64(recorded.count), statistics.recorded)
        // What the collector acknowledged is stored (a request cut by the kill may be stored and sent again: OTLP allows duplicates).
        let stored = try await collector.storedTraceIDs(service: "frontend")
        XCTAssertTrue(Set(recorded).isSubset(of: stored), "missing \(Set(recorded).subtracting(stored).count) of \(recorded.count)")
    }
}

extension ExporterTests {
    func testShutdownWhileTheCollectorIsDownDoesNotWaitOutTheRetryBudget() async throws {
        // Nothing listens on port 1: every attempt is refused and retried.
        var configuration = MeshExporter.Configuration(endpoint: "http://127.0.0.1:1", serviceName: "frontend")
        configuration.flushInterval = .milliseconds(10)
        configuration.retry.initial = .milliseconds(100)
        configuration.retry.maxElapsed = .seconds(300)
        let exporter = try MeshExporter(configuration: configuration)
        for index in 0..<100 { exporter.record(span(index)) }
        var statistics = exporter.statistics
        for _ in 0..<200 where statistics.retries == 0 {
            try await Task.sleep(for: .milliseconds(10))
            statistics = exporter.statistics
        }
        XCTAssertGreaterThan(statistics.retries, 0)
        let clock = ContinuousClock()
        let began = clock.now
        await exporter.shutdown()
        XCTAssertLessThan(clock.now - began, .seconds(10))
        statistics = exporter.statistics
        // Nothing is lost silently: what could not be sent is counted.
        XCTAssertEqual(statistics.recorded, 100)
        XCTAssertEqual(statistics.droppedExportFailed, 100, "\(statistics)")
        XCTAssertEqual(statistics.exported, 0)
    }
}

/// A `meshtrace-collector` process (from this build) on fixed loopback ports, so it
/// can be killed and started again where its clients expect it.
final class CollectorProcess: @unchecked Sendable {
    let httpPort: Int
    let grpcPort: Int
    let queryPort: Int
    let directory: String
    private var process: Process?

    init(test: XCTestCase) throws {
        httpPort = try Self.freePort()
        grpcPort = try Self.freePort()
        queryPort = try Self.freePort()
        directory = temporaryDirectory(test)
    }

    func start() throws {
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("meshtrace-collector")
        let keepAll = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("interop/keep_all.yaml").path
        let process = Process()
        process.executableURL = binary
        process.arguments = [
            "--data-dir", directory, "--otlp-http", "127.0.0.1:\(httpPort)", "--otlp-grpc", "127.0.0.1:\(grpcPort)",
            "--zipkin", "off", "--query", "127.0.0.1:\(queryPort)", "--policy", keepAll,
        ]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        // Ready when it has printed its three listeners.
        var seen = 0
        var buffer = Data()
        while seen < 3 {
            let chunk = output.fileHandleForReading.availableData
            guard !chunk.isEmpty else { throw CocoaError(.fileReadUnknown) }
            buffer += chunk
            seen = String(decoding: buffer, as: UTF8.self).components(separatedBy: "listening on").count - 1
        }
    }

    func kill() {
        guard let process, process.isRunning else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func stop() {
        guard let process, process.isRunning else { return }
        process.terminate()
        process.waitUntilExit()
    }

    /// The stored spans of `traceID`, from the Tempo API (OTLP protobuf); nil when not found.
    func trace(_ traceID: TraceID) async throws -> [OTLPSpan]? {
        let url = URL(string: "http://127.0.0.1:\(queryPort)/api/traces/\(traceID.hex)")!
        var request = URLRequest(url: url)
        request.setValue("application/protobuf", forHTTPHeaderField: "Accept")
        let (data, response) = try await URLSession.shared.data(for: request)
        guard (response as? HTTPURLResponse)?.statusCode == 200 else { return nil }
        let decoded = try TracesData(serializedBytes: Array(data))
        return decoded.resourceSpans.flatMap { $0.scopeSpans.flatMap(\.spans) }
    }

    /// Trace ids of every stored trace with a span of `service`, from the Jaeger API.
    func storedTraceIDs(service: String) async throws -> Set<TraceID> {
        let url = URL(string: "http://127.0.0.1:\(queryPort)/api/traces?service=\(service)&limit=100000&start=1")!
        let (data, _) = try await URLSession.shared.data(from: url)
        let object = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        let traces = object?["data"] as? [[String: Any]] ?? []
        return Set(traces.compactMap { ($0["traceID"] as? String).flatMap { TraceID(hex: $0) } })
    }

    private static func freePort() throws -> Int {
        let socket = Foundation.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(socket) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket, $0, length) == 0 && getsockname(socket, $0, &length) == 0 }
        }
        guard bound else { throw CocoaError(.fileReadUnknown) }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
