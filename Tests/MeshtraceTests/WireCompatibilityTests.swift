import Foundation
import OTLPWire
import SwiftProtobuf
import XCTest

/// OTLP bytes written by Python's opentelemetry-proto decode in Swift to the same
/// values, and Swift's bytes decode in Python to the same values. The fixtures are
/// made by Tests/interop/wire_fixtures.py.
final class WireCompatibilityTests: XCTestCase {
    private func fixture(_ name: String, _ ext: String) throws -> Data {
        let url = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/wire/\(name)", withExtension: ext))
        return try Data(contentsOf: url)
    }

    private func check<M: SwiftProtobuf.Message & Equatable>(_ name: String, as type: M.Type) throws {
        let fromBinary = try M(serializedBytes: try fixture(name, "binpb"))
        let fromJSON = try M(jsonUTF8Data: try fixture(name, "json"))
        XCTAssertEqual(fromBinary, fromJSON, "\(name): Swift's binary decoding disagrees with Python's JSON of the same message")
        XCTAssertTrue(fromBinary.unknownFields.data.isEmpty, "\(name): fields unknown to Swift's schema")

        let swiftBytes: Data = try fromJSON.serializedBytes()
        XCTAssertEqual(try M(serializedBytes: swiftBytes), fromBinary)
        try checkInPython(name, swiftBytes)
    }

    /// Asks the fixture script to decode Swift's bytes with Python's runtime and compare.
    private func checkInPython(_ name: String, _ bytes: Data) throws {
        guard let python = ProcessInfo.processInfo.environment["MESHTRACE_PYTHON"] else {
            throw XCTSkip("MESHTRACE_PYTHON is not set (make test sets it to the test virtualenv)")
        }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("interop/wire_fixtures.py")
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("swift-\(name)-\(UUID()).binpb")
        try bytes.write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [script.path, "check", name, file.path]
        let errors = Pipe()
        process.standardError = errors
        try process.run()
        process.waitUntilExit()
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(process.terminationStatus, 0, "Python decodes Swift's \(name) differently: \(message)")
    }

    func testTraceExportRequestMatchesPython() throws {
        try check("trace_export_request", as: ExportTraceServiceRequest.self)
    }

    func testMetricsExportRequestMatchesPython() throws {
        try check("metrics_export_request", as: ExportMetricsServiceRequest.self)
    }

    func testTracesDataMatchesPython() throws {
        try check("traces_data", as: TracesData.self)
    }

    func testPartialSuccessMatchesPython() throws {
        try check("trace_partial_success", as: ExportTraceServiceResponse.self)
    }

    func testOTLPJSONUsesHexIDsAndIntegerEnums() throws {
        let request = try ExportTraceServiceRequest(serializedBytes: try fixture("trace_export_request", "binpb"))
        let json = try OTLPJSON.encode(request)
        let text = String(decoding: json, as: UTF8.self)
        XCTAssertTrue(text.contains("\"traceId\":\"5b8efff798038103d269b633813fc60c\""), text)
        XCTAssertTrue(text.contains("\"parentSpanId\":\"eee19b7ec3c1b173\""))
        XCTAssertTrue(text.contains("\"kind\":3"))
        XCTAssertEqual(try OTLPJSON.decode(ExportTraceServiceRequest.self, from: Array(json)), request)
    }

    func testOTLPJSONRejectsWhatIsNotOTLP() {
        XCTAssertThrowsError(try OTLPJSON.decode(ExportTraceServiceRequest.self, from: Array("{\"resourceSpans\": 5}".utf8)))
        XCTAssertThrowsError(try OTLPJSON.decode(ExportTraceServiceRequest.self, from: Array("[1,2]".utf8)))
        XCTAssertThrowsError(try OTLPJSON.decode(ExportTraceServiceRequest.self, from: Array("{not json".utf8)))
        XCTAssertNoThrow(try OTLPJSON.decode(ExportTraceServiceRequest.self, from: Array("{\"futureField\": 1}".utf8)))
    }
}
