import CZstd

/// zstd compression of whole buffers, over the system libzstd.
public enum Zstd {
    /// The default compression level used by meshtrace's segment writer.
    public static let defaultLevel: Int32 = 3

    /// Compresses `input` into a single zstd frame that records its decompressed size.
    public static func compress(_ input: [UInt8], level: Int32 = defaultLevel) throws -> [UInt8] {
        try input.withUnsafeBytes { (source: UnsafeRawBufferPointer) throws -> [UInt8] in
            let bound = ZSTD_compressBound(source.count)
            var output = [UInt8](repeating: 0, count: bound)
            let written = output.withUnsafeMutableBytes { destination in
                ZSTD_compress(destination.baseAddress, bound, source.baseAddress, source.count, level)
            }
            if ZSTD_isError(written) != 0 {
                throw CompressionError.compressionFailed(codec: "zstd", reason: String(cString: ZSTD_getErrorName(written)))
            }
            output.removeSubrange(written...)
            return output
        }
    }

    /// Decompresses one zstd frame.
    ///
    /// - Parameter maxSize: the largest decompressed size accepted, in bytes; a frame
    ///   claiming more is refused before any memory is allocated for it.
    public static func decompress(_ input: [UInt8], maxSize: Int = 1 << 30) throws -> [UInt8] {
        try input.withUnsafeBytes { try decompress($0, maxSize: maxSize) }
    }

    /// Decompresses one zstd frame held in part of a larger buffer.
    public static func decompress(_ input: ArraySlice<UInt8>, maxSize: Int = 1 << 30) throws -> [UInt8] {
        try input.withUnsafeBytes { try decompress($0, maxSize: maxSize) }
    }

    private static func decompress(_ source: UnsafeRawBufferPointer, maxSize: Int) throws -> [UInt8] {
        let declared = ZSTD_getFrameContentSize(source.baseAddress, source.count)
        if declared == ZSTD_CONTENTSIZE_ERROR {
            throw CompressionError.corrupt(codec: "zstd", reason: "not a zstd frame")
        }
        if declared == ZSTD_CONTENTSIZE_UNKNOWN {
            throw CompressionError.corrupt(codec: "zstd", reason: "frame does not record its decompressed size")
        }
        guard declared <= UInt64(maxSize) else {
            throw CompressionError.tooLarge(codec: "zstd", declared: declared, limit: maxSize)
        }
        let size = Int(declared)
        var produced = 0
        // zstd writes every byte it reports, so the buffer needs no zeroing first.
        let output = [UInt8](unsafeUninitializedCapacity: size) { destination, initialized in
            produced = ZSTD_decompress(destination.baseAddress, size, source.baseAddress, source.count)
            initialized = ZSTD_isError(produced) != 0 ? 0 : min(produced, size)
        }
        if ZSTD_isError(produced) != 0 {
            throw CompressionError.corrupt(codec: "zstd", reason: String(cString: ZSTD_getErrorName(produced)))
        }
        guard produced == size else {
            throw CompressionError.corrupt(codec: "zstd", reason: "frame decompressed to \(produced) bytes, header said \(size)")
        }
        return output
    }
}
