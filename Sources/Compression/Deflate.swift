import CZlib

/// Compression of HTTP bodies as `gzip`, over the system zlib.
public enum Deflate {
    /// `input` as one gzip member (zlib's default level unless told otherwise).
    public static func gzip(_ input: [UInt8], level: Int32 = Z_DEFAULT_COMPRESSION) throws(CompressionError) -> [UInt8] {
        var stream = z_stream()
        // 15 window bits, +16: write a gzip header and trailer.
        guard deflateInit2_(&stream, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw .corrupt(codec: "gzip", reason: "zlib could not start")
        }
        defer { deflateEnd(&stream) }
        let bound = Int(deflateBound(&stream, UInt(input.count)))
        var output = [UInt8](repeating: 0, count: bound)
        let (status, produced) = input.withUnsafeBufferPointer { source in
            output.withUnsafeMutableBufferPointer { destination in
                stream.next_in = UnsafeMutablePointer(mutating: source.baseAddress)
                stream.avail_in = UInt32(source.count)
                stream.next_out = destination.baseAddress
                stream.avail_out = UInt32(destination.count)
                let status = deflate(&stream, Z_FINISH)
                return (status, destination.count - Int(stream.avail_out))
            }
        }
        guard status == Z_STREAM_END else { throw .corrupt(codec: "gzip", reason: "zlib stopped with \(status)") }
        output.removeSubrange(produced...)
        return output
    }
}
