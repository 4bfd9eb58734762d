import Compression
import MeshCore
import MeshSim
import XCTest

final class CompressionTests: XCTestCase {
    private let sample: [UInt8] = Array((0..<50_000).map { UInt8(truncatingIfNeeded: $0 * 7 % 251) })

    func testZstdRoundTripsAndShrinksRepetitiveData() throws {
        let compressed = try Zstd.compress(sample)
        XCTAssertLessThan(compressed.count, sample.count / 10)
        XCTAssertEqual(try Zstd.decompress(compressed), sample)
        XCTAssertEqual(try Zstd.decompress(try Zstd.compress([])), [])
    }

    func testOneZstdCompressorWritesEachBufferAsItsOwnFrame() throws {
        // A segment's chunks go through one context, large and small, empty and not:
        // each frame must stand alone, exactly as a fresh context would write it.
        let compressor = try Zstd.Compressor(level: 3)
        let buffers: [[UInt8]] = [sample, [], Array(sample.prefix(100)), Array(sample.reversed()), [42]]
        for buffer in buffers {
            let frame = try compressor.compress(buffer)
            XCTAssertEqual(frame, try Zstd.compress(buffer, level: 3))
            XCTAssertEqual(try Zstd.decompress(frame), buffer)
        }
    }

    func testZstdReportsCorruptAndTruncatedFrames() throws {
        let compressed = try Zstd.compress(sample)
        XCTAssertThrowsError(try Zstd.decompress(Array(compressed.prefix(compressed.count / 2)))) { error in
            guard case CompressionError.corrupt(codec: "zstd", _) = error else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try Zstd.decompress(Array("not zstd at all".utf8))) { error in
            guard case CompressionError.corrupt = error else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try Zstd.decompress(compressed, maxSize: 100)) { error in
            guard case CompressionError.tooLarge(codec: "zstd", declared: 50_000, limit: 100) = error else { return XCTFail("\(error)") }
        }
    }

    func testZstdFramesOfABodyAreJoinedAndHeldToTheLimit() throws {
        let body = try Zstd.compress(sample) + (try Zstd.compress(Array(sample.reversed())))
        XCTAssertEqual(try Zstd.decompressFrames(body, maxSize: 100_000), sample + sample.reversed())
        XCTAssertThrowsError(try Zstd.decompressFrames(body, maxSize: 99_999)) { error in
            XCTAssertEqual(error as? CompressionError, .exceedsLimit(codec: "zstd", limit: 99_999))
        }
        XCTAssertThrowsError(try Zstd.decompressFrames(Array(body.dropLast(3)), maxSize: 100_000)) { error in
            guard case CompressionError.corrupt(codec: "zstd", _) = error else { return XCTFail("\(error)") }
        }
    }

    func testLZ4FrameRoundTripsAndDetectsDamage() throws {
        let compressed = try LZ4Frame.compress(sample)
        XCTAssertEqual(try LZ4Frame.decompress(compressed), sample)
        XCTAssertEqual(try LZ4Frame.decompress(try LZ4Frame.compress([1])), [1])

        XCTAssertThrowsError(try LZ4Frame.decompress(Array(compressed.dropLast(3)))) { error in
            guard case CompressionError.corrupt(codec: "lz4", _) = error else { return XCTFail("\(error)") }
        }
        var flipped = compressed
        flipped[flipped.count / 2] ^= 0x40
        XCTAssertThrowsError(try LZ4Frame.decompress(flipped))
        XCTAssertThrowsError(try LZ4Frame.decompress([]))
        XCTAssertThrowsError(try LZ4Frame.decompress(compressed + [0]))
    }

    func testCRC32CInstructionAgreesWithTheTables() throws {
        try XCTSkipUnless(CRC32C.hardwareAvailable, "this CPU has no CRC-32C instruction")
        var random = SeededGenerator(seed: 5)
        let bytes = (0..<4096).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        bytes.withUnsafeBytes { all in
            // Every length up to 80 at every alignment up to 8, and longer runs, continued from a prior value.
            for start in 0..<8 {
                for length in Array(0...80) + [511, 4000] where start + length <= all.count {
                    let part = UnsafeRawBufferPointer(rebasing: all[start..<start + length])
                    XCTAssertEqual(CRC32C.checksum(part), CRC32C.tableChecksum(part), "start \(start), length \(length)")
                    XCTAssertEqual(CRC32C.checksum(part, continuing: 0xDEAD_BEEF), CRC32C.tableChecksum(part, continuing: 0xDEAD_BEEF))
                }
            }
        }
    }

    func testCRC32CMatchesTheCastagnoliCheckValue() {
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        let whole = CRC32C.checksum(sample)
        let split = CRC32C.checksum(Array(sample[1000...]), continuing: CRC32C.checksum(Array(sample[..<1000])))
        XCTAssertEqual(whole, split)
    }

    func testVarintsAndBoundsChecks() throws {
        var writer = ByteWriter()
        let values: [UInt64] = [0, 1, 127, 128, 300, UInt64(UInt32.max), UInt64.max]
        for value in values { writer.writeVarint(value) }
        writer.writeSignedVarint(-1)
        writer.writeSignedVarint(Int64.min)
        writer.write(string: "mesh")
        var reader = ByteReader(writer.bytes)
        for value in values { XCTAssertEqual(try reader.readVarint(), value) }
        XCTAssertEqual(try reader.readSignedVarint(), -1)
        XCTAssertEqual(try reader.readSignedVarint(), Int64.min)
        XCTAssertEqual(try reader.readString(), "mesh")
        XCTAssertTrue(reader.isAtEnd)
        XCTAssertThrowsError(try reader.readUInt8())

        var overlong = ByteReader([UInt8](repeating: 0xFF, count: 11))
        XCTAssertThrowsError(try overlong.readVarint())
        var lying = ByteReader([0x05, 0x41])
        XCTAssertThrowsError(try lying.readLengthPrefixed())
    }

    func testIdentifiersParseAndPrintHex() {
        let trace = TraceID(hex: "4bf92f3577b34da6a3ce929d0e0e4736")!
        XCTAssertEqual(trace.hex, "4bf92f3577b34da6a3ce929d0e0e4736")
        XCTAssertEqual(TraceID(bytes: trace.bytes), trace)
        XCTAssertEqual(TraceID(hex: "a3ce929d0e0e4736"), TraceID(high: 0, low: 0xa3ce929d0e0e4736))
        XCTAssertNil(TraceID(hex: "xyz"))
        XCTAssertNil(TraceID(hex: "4bf92f3577b34da6a3ce929d0e0e473g"))
        XCTAssertEqual(SpanID(hex: "00f067aa0ba902b7")?.bytes, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        XCTAssertEqual(SpanID(bytes: []), .zero)
        XCTAssertNil(SpanID(bytes: [1, 2, 3]))
        XCTAssertLessThan(TraceID(high: 1, low: 0), TraceID(high: 1, low: 1))
    }

    func testDurationTextParsesRelativeWindows() {
        XCTAssertEqual(DurationText.nanoseconds("15m"), 900_000_000_000)
        XCTAssertEqual(DurationText.nanoseconds("1h30m"), 5_400_000_000_000)
        XCTAssertEqual(DurationText.nanoseconds("250ms"), 250_000_000)
        XCTAssertEqual(DurationText.nanoseconds("2d"), 172_800_000_000_000)
        XCTAssertNil(DurationText.nanoseconds("15"))
        XCTAssertNil(DurationText.nanoseconds("fifteen minutes"))
        XCTAssertNil(DurationText.nanoseconds(""))
        // Beyond Int64 nanoseconds, in one part or summed over several.
        XCTAssertNil(DurationText.nanoseconds("106752d"))
        XCTAssertNil(DurationText.nanoseconds("100000d100000d100000d"))
        XCTAssertEqual(DurationText.format(nanoseconds: 1_234_567), "1.23ms")
        XCTAssertEqual(DurationText.format(nanoseconds: 850_000), "850µs")
    }
}
