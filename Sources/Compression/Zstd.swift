import CZstd

/// zstd compression of whole buffers, over the system libzstd.
public enum Zstd {
    /// The default compression level used by meshtrace's segment writer.
    public static let defaultLevel: Int32 = 3

    /// Compresses `input` into a single zstd frame that records its decompressed size.
    public static func compress(_ input: [UInt8], level: Int32 = defaultLevel) throws -> [UInt8] {
        try Compressor(level: level).compress(input)
    }

    /// A compression context kept from one buffer to the next. Compressing many small
    /// buffers (a segment's column chunks) through one context sets up zstd's working
    /// memory once instead of once per buffer. Not for use by two threads at once.
    public final class Compressor {
        private let context: OpaquePointer
        public let level: Int32

        public init(level: Int32 = defaultLevel) throws {
            guard let context = ZSTD_createCCtx() else {
                throw CompressionError.compressionFailed(codec: "zstd", reason: "cannot allocate a context")
            }
            self.context = context
            self.level = level
        }

        deinit { ZSTD_freeCCtx(context) }

        /// Compresses `input` into a single zstd frame that records its decompressed size.
        public func compress(_ input: [UInt8]) throws -> [UInt8] {
            try input.withUnsafeBytes { (source: UnsafeRawBufferPointer) throws -> [UInt8] in
                let bound = ZSTD_compressBound(source.count)
                var written = 0
                // zstd writes every byte it reports, so the buffer needs no zeroing first.
                let output = [UInt8](unsafeUninitializedCapacity: bound) { destination, initialized in
                    written = ZSTD_compressCCtx(context, destination.baseAddress, bound, source.baseAddress, source.count, level)
                    initialized = ZSTD_isError(written) != 0 ? 0 : written
                }
                if ZSTD_isError(written) != 0 {
                    throw CompressionError.compressionFailed(codec: "zstd", reason: String(cString: ZSTD_getErrorName(written)))
                }
                return output
            }
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

    /// Decompresses one or more zstd frames whether or not they record their size (as
    /// streaming compressors write them), stopping with `exceedsLimit` once the output
    /// would pass `maxSize` bytes.
    public static func decompressFrames(_ input: [UInt8], maxSize: Int) throws(CompressionError) -> [UInt8] {
        guard let context = ZSTD_createDCtx() else { throw .corrupt(codec: "zstd", reason: "cannot allocate a context") }
        defer { ZSTD_freeDCtx(context) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: ZSTD_DStreamOutSize())
        var consumed = 0
        var frameEnded = true
        while consumed < input.count || !frameEnded {
            let (result, read, produced) = input.withUnsafeBytes { source in
                chunk.withUnsafeMutableBytes { destination in
                    var inBuffer = ZSTD_inBuffer(src: source.baseAddress, size: source.count, pos: consumed)
                    var outBuffer = ZSTD_outBuffer(dst: destination.baseAddress, size: destination.count, pos: 0)
                    let result = ZSTD_decompressStream(context, &outBuffer, &inBuffer)
                    return (result, inBuffer.pos - consumed, outBuffer.pos)
                }
            }
            if ZSTD_isError(result) != 0 {
                throw .corrupt(codec: "zstd", reason: String(cString: ZSTD_getErrorName(result)))
            }
            guard output.count + produced <= maxSize else { throw .exceedsLimit(codec: "zstd", limit: maxSize) }
            output.append(contentsOf: chunk[0..<produced])
            consumed += read
            frameEnded = result == 0
            if !frameEnded && read == 0 && produced == 0 {
                throw .corrupt(codec: "zstd", reason: "frame is truncated")
            }
        }
        return output
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
