import CLZ4

/// LZ4 frame-format compression of whole buffers, over the system liblz4.
///
/// Frames record their content size and, unless asked not to, carry LZ4's own
/// content checksum, so a truncated or altered frame is detected on decompression.
public enum LZ4Frame {
    /// Compresses `input` into one LZ4 frame. `acceleration` above 1 trades ratio for
    /// speed (LZ4's fast modes); `contentChecksum` adds LZ4's checksum of the content,
    /// which a reader verifies (leave it off where the frame sits under a checksum of
    /// its own).
    public static func compress(_ input: [UInt8], acceleration: Int32 = 1, contentChecksum: Bool = true) throws -> [UInt8] {
        try input.withUnsafeBytes { (source: UnsafeRawBufferPointer) throws -> [UInt8] in
            var preferences = LZ4F_preferences_t()
            preferences.frameInfo.contentSize = UInt64(source.count)
            preferences.frameInfo.contentChecksumFlag = contentChecksum ? LZ4F_contentChecksumEnabled : LZ4F_noContentChecksum
            preferences.compressionLevel = acceleration > 1 ? -acceleration : 0
            let bound = LZ4F_compressFrameBound(source.count, &preferences)
            // Written into room left uninitialized: zeroing it first would cost a pass
            // over as many bytes as the input.
            var written = 0
            let output = [UInt8](unsafeUninitializedCapacity: bound) { destination, count in
                written = LZ4F_compressFrame(destination.baseAddress, bound, source.baseAddress, source.count, &preferences)
                count = LZ4F_isError(written) != 0 ? 0 : written
            }
            if LZ4F_isError(written) != 0 {
                throw CompressionError.compressionFailed(codec: "lz4", reason: String(cString: LZ4F_getErrorName(written)))
            }
            return output
        }
    }

    /// Decompresses one LZ4 frame that records its content size.
    ///
    /// - Parameter maxSize: the largest decompressed size accepted, in bytes.
    public static func decompress(_ input: [UInt8], maxSize: Int = 1 << 30) throws -> [UInt8] {
        var context: OpaquePointer?
        let created = LZ4F_createDecompressionContext(&context, UInt32(LZ4F_VERSION))
        guard LZ4F_isError(created) == 0, let context else {
            throw CompressionError.compressionFailed(codec: "lz4", reason: "cannot create a decompression context")
        }
        defer { LZ4F_freeDecompressionContext(context) }

        return try input.withUnsafeBytes { (source: UnsafeRawBufferPointer) throws -> [UInt8] in
            guard let base = source.baseAddress, !source.isEmpty else {
                throw CompressionError.corrupt(codec: "lz4", reason: "empty input")
            }
            var info = LZ4F_frameInfo_t()
            var consumed = source.count
            let hint = LZ4F_getFrameInfo(context, &info, base, &consumed)
            if LZ4F_isError(hint) != 0 {
                throw CompressionError.corrupt(codec: "lz4", reason: String(cString: LZ4F_getErrorName(hint)))
            }
            guard info.contentSize <= UInt64(maxSize) else {
                throw CompressionError.tooLarge(codec: "lz4", declared: info.contentSize, limit: maxSize)
            }
            let size = Int(info.contentSize)
            var output = [UInt8](repeating: 0, count: size)
            var position = consumed
            var produced = 0
            var remainingHint = hint
            try output.withUnsafeMutableBytes { (destination: UnsafeMutableRawBufferPointer) throws in
                while remainingHint != 0 {
                    guard position < source.count else {
                        throw CompressionError.corrupt(codec: "lz4", reason: "frame is truncated")
                    }
                    var sourceSize = source.count - position
                    var destinationSize = size - produced
                    remainingHint = LZ4F_decompress(
                        context, destination.baseAddress.map { $0 + produced }, &destinationSize,
                        base + position, &sourceSize, nil)
                    if LZ4F_isError(remainingHint) != 0 {
                        throw CompressionError.corrupt(codec: "lz4", reason: String(cString: LZ4F_getErrorName(remainingHint)))
                    }
                    position += sourceSize
                    produced += destinationSize
                    if sourceSize == 0 && destinationSize == 0 {
                        throw CompressionError.corrupt(codec: "lz4", reason: "frame holds more than its recorded content size")
                    }
                }
            }
            guard produced == size else {
                throw CompressionError.corrupt(codec: "lz4", reason: "frame decompressed to \(produced) bytes, header said \(size)")
            }
            guard position == source.count else {
                throw CompressionError.corrupt(codec: "lz4", reason: "\(source.count - position) bytes follow the frame")
            }
            return output
        }
    }
}
