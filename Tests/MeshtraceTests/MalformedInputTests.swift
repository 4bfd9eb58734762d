@testable import Collector
import Compression
import Foundation
import MeshCore
import MeshSim
import OTLPWire
import SegmentStore
import SwiftProtobuf
import XCTest

/// Seeded random mutations of valid inputs — flipped bits, cut and spliced bytes,
/// overlong varints — fed to every decoder that reads bytes from outside. Each
/// must answer with a value or an error, never trap or hang; what decodes must
/// also survive being stored and read back. The seeds are fixed, so a failure
/// reproduces.
final class MalformedInputTests: XCTestCase {
    func testMutatedOTLPNeverCrashesDecodingStoringOrReading() throws {
        let (requests, _) = simulatedRequests(count: 6)
        let original: [UInt8] = try requests[0].serializedBytes()
        var decoded = 0
        for (index, bytes) in mutations(of: original, count: 5_000, seed: 41).enumerated() {
            guard let export = try? DecodedTraceExport(protobuf: bytes) else { continue }
            decoded += 1
            let batch = export.spans
            XCTAssertEqual(export.outcome.accepted, batch.count)
            guard index % 25 == 0, batch.count > 0 else { continue }
            let segment = try SegmentWriter.encode(batch, walSequence: 1, blockSpans: 8, runSpans: 2)
            let path = temporaryDirectory(self) + "/\(index).mts"
            try Data(segment).write(to: URL(fileURLWithPath: path))
            XCTAssertEqual(try SegmentReader(path: path).readBatch().count, batch.count)
        }
        XCTAssertGreaterThan(decoded, 100, "some mutations still decode, and are stored")
    }

    func testMutatedZipkinNeverCrashesEitherDecoder() throws {
        let json = Array("""
            [{"traceId":"463ac35c9f6413ad","id":"a2fb4a1d1a96d312","parentId":"0020000000000001","kind":"SERVER",
              "shared":true,"name":"get /","timestamp":1700000000123456,"duration":2300,
              "localEndpoint":{"serviceName":"checkout","ipv4":"10.1.0.9","port":8080},
              "remoteEndpoint":{"serviceName":"frontend","ipv6":"::1"},
              "annotations":[{"timestamp":1700000000124000,"value":"wr"}],"tags":{"http.status_code":"200","error":"boom"}}]
            """.utf8)
        var acceptedJSON = 0
        for bytes in mutations(of: json, count: 3_000, seed: 42) {
            guard let spans = try? ZipkinSpan.decodeJSON(bytes) else { continue }
            acceptedJSON += 1
            var batch = SpanBatch()
            batch.append(ZipkinSpan.exportRequest(spans))
        }
        XCTAssertGreaterThan(acceptedJSON, 10)

        // A proto3 ListOfSpans with one span of every field.
        var span: [UInt8] = [0x0A, 16] + Array(repeating: 0x11, count: 16) + [0x12, 8] + Array(repeating: 0x22, count: 8)
        span += [0x1A, 8] + Array(repeating: 0x33, count: 8) + [0x20, 2, 0x2A, 3] + Array("get".utf8)
        span += [0x31] + Array(repeating: 0x01, count: 8) + [0x38, 0xE8, 0x07]
        span += [0x42, 13, 0x0A, 5] + Array("front".utf8) + [0x12, 4, 10, 0, 0, 1]
        span += [0x52, 13, 0x09] + Array(repeating: 0x02, count: 8) + [0x12, 2] + Array("wr".utf8)
        span += [0x5A, 8, 0x0A, 1, 0x6B, 0x12, 3] + Array("val".utf8) + [0x68, 1]
        let proto: [UInt8] = [0x0A, UInt8(span.count)] + span
        XCTAssertEqual(try ZipkinSpan.decodeProto3(proto).count, 1)
        var acceptedProto = 0
        for bytes in mutations(of: proto, count: 6_000, seed: 43) {
            guard let spans = try? ZipkinSpan.decodeProto3(bytes) else { continue }
            acceptedProto += 1
            var batch = SpanBatch()
            batch.append(ZipkinSpan.exportRequest(spans))
        }
        XCTAssertGreaterThan(acceptedProto, 10)
    }

    /// OTLP/JSON bodies: seeded mutations of a real export, and nesting far deeper
    /// than any message (an array or object a million levels down, for Zipkin's JSON
    /// too) — each decodes or is refused; what decodes is stored.
    func testMutatedAndDeeplyNestedOTLPJSONNeverCrashes() throws {
        let (requests, _) = simulatedRequests(count: 2)
        let json = Array(try OTLPJSON.encode(requests[0]))
        var accepted = 0
        for bytes in mutations(of: json, count: 1_500, seed: 46) {
            guard let request = try? OTLPJSON.decode(ExportTraceServiceRequest.self, from: bytes) else { continue }
            accepted += 1
            var batch = SpanBatch()
            batch.append(request)
        }
        XCTAssertGreaterThan(accepted, 10)
        let depth = 1_000_000
        for nested in [
            Array(repeating: UInt8(ascii: "["), count: depth) + Array(repeating: UInt8(ascii: "]"), count: depth),
            Array(repeating: Array(#"{"a":"#.utf8), count: depth).flatMap { $0 } + Array("1".utf8)
                + Array(repeating: UInt8(ascii: "}"), count: depth),
            Array(#"{"resourceSpans":"#.utf8) + Array(repeating: UInt8(ascii: "["), count: depth)
                + Array(repeating: UInt8(ascii: "]"), count: depth) + Array("}".utf8),
        ] {
            XCTAssertThrowsError(try OTLPJSON.decode(ExportTraceServiceRequest.self, from: nested))
            XCTAssertThrowsError(try ZipkinSpan.decodeJSON(nested), "Zipkin's JSON door too")
        }
    }

    func testMutatedCompressedBodiesNeverCrashTheDecompressors() throws {
        let plain = Array(try simulatedRequests(count: 2).0[0].serializedBytes() as [UInt8])
        for bytes in mutations(of: try Zstd.compress(plain), count: 3_000, seed: 44) {
            _ = try? Zstd.decompressFrames(bytes, maxSize: 1 << 20)
        }
        // zlib's own stream, as `deflate` bodies carry it: a stored (uncompressed) block.
        var zlib: [UInt8] = [0x78, 0x01, 0x01, UInt8(plain.count & 0xFF), UInt8(plain.count >> 8),
                             ~UInt8(plain.count & 0xFF), ~UInt8(plain.count >> 8)]
        zlib += plain
        var adler = (a: UInt32(1), b: UInt32(0))
        for byte in plain {
            adler.a = (adler.a + UInt32(byte)) % 65521
            adler.b = (adler.b + adler.a) % 65521
        }
        let checksum = adler.b << 16 | adler.a
        zlib += [UInt8(checksum >> 24), UInt8(truncatingIfNeeded: checksum >> 16), UInt8(truncatingIfNeeded: checksum >> 8), UInt8(truncatingIfNeeded: checksum)]
        XCTAssertEqual(try Inflate.decompress(zlib, maxSize: 1 << 20), plain)
        for bytes in mutations(of: zlib, count: 3_000, seed: 45) {
            _ = try? Inflate.decompress(bytes, maxSize: 1 << 20)
        }
    }
}
