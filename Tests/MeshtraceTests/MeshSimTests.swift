import Compression
import MeshCore
import MeshSim
import OTLPWire
import QueryEngine
import SegmentStore
import SwiftProtobuf
import XCTest

final class MeshSimTests: XCTestCase {
    func testSameSeedGivesTheSameTraffic() throws {
        let (first, _) = simulatedRequests(count: 40, seed: 11)
        let (second, _) = simulatedRequests(count: 40, seed: 11)
        let (other, _) = simulatedRequests(count: 40, seed: 12)
        XCTAssertEqual(first, second)
        XCTAssertNotEqual(first, other)
    }

    func testRandomBitsAreALowerBoundThatCompressorsRespect() throws {
        let (requests, simulator) = simulatedRequests(count: 400)
        let spans = Double(simulator.truth.spans)
        let floor = simulator.truth.randomBits / 8 / spans
        // More than the ids alone (a 63-bit span id per span, a 127-bit trace id and a
        // 128-bit request id per trace), less than what real lossless coders reach.
        let traces = Double(simulator.truth.requests)
        XCTAssertGreaterThan(floor, (63 * spans + 255 * traces) / 8 / spans + 2)
        var batch = SpanBatch()
        for request in requests { batch.append(request) }
        let segment = try SegmentWriter.encode(batch, walSequence: 1)
        XCTAssertLessThan(floor * spans, Double(segment.count))
        var otlp: [UInt8] = []
        for request in requests { otlp += try request.serializedBytes() as [UInt8] }
        XCTAssertLessThan(floor * spans, Double(try Zstd.compress(otlp, level: 19).count))
    }

    func testTrafficHasMeshShape() throws {
        let (requests, simulator) = simulatedRequests(count: 2_000)
        let truth = simulator.truth
        XCTAssertEqual(truth.hopsPerRequest, 8, accuracy: 1.0, "about 8 hops per request")
        let hops = truth.edges.values.reduce(0) { $0 + $1.requests }
        XCTAssertEqual(truth.spans, truth.requests + 2 * hops, "one root span plus a CLIENT and a SERVER span per hop")
        XCTAssertEqual(Set(simulator.mesh.services.map(\.namespace)).count, 4)

        let spans = requests.flatMap { $0.resourceSpans.flatMap { $0.scopeSpans.flatMap(\.spans) } }
        XCTAssertEqual(spans.count, truth.spans)
        XCTAssertEqual(spans.filter { $0.kind == .client }.count, hops)
        let client = try XCTUnwrap(spans.first { $0.kind == .client })
        for key in ["http.request.method", "url.path", "http.response.status_code", "upstream_cluster", "peer.address",
                    "user_agent.original", "http.response.body.size", "response_flags", "guid:x-request-id"] {
            XCTAssertTrue(client.attributes.contains { $0.key == key }, "client spans carry \(key)")
        }
        let resource = requests[0].resourceSpans[0].resource.attributes
        for key in ["service.name", "service.version", "k8s.namespace.name", "k8s.pod.name"] {
            XCTAssertNotNil(resource.string(key), "resources carry \(key)")
        }

        let errorShare = Double(truth.edges.values.reduce(0) { $0 + $1.errors }) / Double(hops)
        XCTAssertEqual(errorShare, 0.02, accuracy: 0.01)
        let checkout = try XCTUnwrap(truth.edges[GroundTruth.Edge(source: "cart", target: "checkout")])
        XCTAssertGreaterThan(checkout.percentile(0.99), checkout.percentile(0.50) * 2, "latency has a heavy tail")
    }

    func testProxyExportsSendEachPodsSpansAsTheyEndInBatchesBySizeOrTime() throws {
        var simulator = MeshSim(configuration: MeshSim.Configuration(seed: 5))
        var emitted: [MeshSim.EmittedSpan] = []
        var time: UInt64 = 1_800_000_000_000_000_000
        for _ in 0..<3_000 {
            emitted += simulator.request(at: time)
            time += 1_000_000
        }
        let flushInterval: UInt64 = 200_000_000
        let requests = simulator.proxyExports(emitted, maxSpansPerRequest: 64, flushInterval: flushInterval)

        // Every span once, each request one pod's, none over the size.
        let sent = requests.flatMap { $0.resourceSpans.flatMap { $0.scopeSpans.flatMap(\.spans) } }
        XCTAssertEqual(sent.count, emitted.count)
        XCTAssertEqual(Set(sent.map { [UInt8]($0.spanID) }).count, emitted.count)
        XCTAssertTrue(requests.allSatisfy { $0.resourceSpans.count == 1 })
        XCTAssertTrue(requests.allSatisfy { $0.resourceSpans[0].scopeSpans[0].spans.count <= 64 })
        let sizes = requests.map { $0.resourceSpans[0].scopeSpans[0].spans.count }
        XCTAssertGreaterThan(sizes.filter { $0 == 64 }.count, 0, "busy pods fill batches")
        // A batch sent before it filled, and not the pod's last: sent because its time came.
        let pods = requests.map { $0.resourceSpans[0].resource.attributes.string("k8s.pod.name") ?? "" }
        let lastOfPod = Dictionary(pods.enumerated().map { ($1, $0) }, uniquingKeysWith: max)
        XCTAssertGreaterThan(sizes.indices.filter { sizes[$0] < 64 && lastOfPod[pods[$0]] != $0 }.count, 0,
                             "quiet pods send by time")

        // A batch's spans ended within a flush interval of its first; each pod sends in end order.
        var lastEndByPod: [String: UInt64] = [:]
        var departures: [UInt64] = []
        for request in requests {
            let pod = try XCTUnwrap(request.resourceSpans[0].resource.attributes.string("k8s.pod.name"))
            let ends = request.resourceSpans[0].scopeSpans[0].spans.map(\.endTimeUnixNano)
            XCTAssertEqual(ends, ends.sorted())
            XCTAssertLessThan(ends.last! - ends.first!, flushInterval)
            XCTAssertGreaterThanOrEqual(ends.first!, lastEndByPod[pod] ?? 0)
            lastEndByPod[pod] = ends.last!
            departures.append(ends.last!)
        }
        // Requests come in about the order they left: a trace's spans arrive close together,
        // not one pod's whole share of the traffic after another's.
        let outOfOrder = zip(departures, departures.dropFirst()).filter { $0.0 > $0.1 + 2 * flushInterval }.count
        XCTAssertEqual(outOfOrder, 0)
        let byPodOrder = simulator.exportRequests(emitted, maxSpansPerRequest: 64).map {
            $0.resourceSpans[0].scopeSpans[0].spans.last!.endTimeUnixNano
        }
        XCTAssertGreaterThan(zip(byPodOrder, byPodOrder.dropFirst()).filter { $0.0 > $0.1 + 2 * flushInterval }.count, 0,
                             "the pod-by-pod grouping is what this order replaces")
    }

    func testTopologyFromStoredSpansEqualsGroundTruth() throws {
        let (requests, simulator) = simulatedRequests(count: 500)
        let store = try SpanStore(configuration: .init(dataDirectory: temporaryDirectory(self)))
        for (index, request) in requests.enumerated() {
            _ = try store.append(try received(request))
            if index == requests.count / 2 { try store.seal() }
        }
        let topology = try QueryEngine(snapshot: store.snapshot()).topology(window: 0...UInt64.max)
        let truth = simulator.truth
        XCTAssertEqual(topology.edges.count, truth.edges.count)
        for edge in topology.edges {
            let expected = try XCTUnwrap(truth.edges[GroundTruth.Edge(source: edge.source, target: edge.target)], "\(edge.source)→\(edge.target)")
            XCTAssertEqual(edge.requests, expected.requests, "\(edge.source)→\(edge.target)")
            XCTAssertEqual(edge.errors, expected.errors, "\(edge.source)→\(edge.target)")
            XCTAssertEqual(edge.p50, expected.percentile(0.50))
            XCTAssertEqual(edge.p99, expected.percentile(0.99))
        }
    }
}
