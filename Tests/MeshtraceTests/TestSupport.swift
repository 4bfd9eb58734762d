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
