import CZlib

/// Decompression of `gzip` and `deflate` (zlib) HTTP bodies, over the system zlib.
public enum Inflate {
    /// Decompresses a gzip or zlib stream (the header tells which), including gzip
    /// files of several members, stopping with `exceedsLimit` once the output would
    /// pass `maxSize` bytes, so a small body cannot expand without bound.
    public static func decompress(_ input: [UInt8], maxSize: Int) throws(CompressionError) -> [UInt8] {
        var stream = z_stream()
        // 15 window bits, +32: detect a gzip or zlib header.
        guard inflateInit2_(&stream, 15 + 32, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw .corrupt(codec: "gzip", reason: "zlib could not start")
        }
        defer { inflateEnd(&stream) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        var consumed = 0
        while true {
            let remaining = input.count - consumed
            let (status, read, produced) = input.withUnsafeBufferPointer { source in
                chunk.withUnsafeMutableBufferPointer { destination in
                    stream.next_in = UnsafeMutablePointer(mutating: source.baseAddress.map { $0 + consumed })
                    stream.avail_in = UInt32(min(remaining, Int(UInt32.max)))
                    stream.next_out = destination.baseAddress
                    stream.avail_out = UInt32(destination.count)
                    let status = inflate(&stream, Z_NO_FLUSH)
                    return (status, min(remaining, Int(UInt32.max)) - Int(stream.avail_in), destination.count - Int(stream.avail_out))
                }
            }
            consumed += read
            guard output.count + produced <= maxSize else { throw .exceedsLimit(codec: "gzip", limit: maxSize) }
            output.append(contentsOf: chunk[0..<produced])
            switch status {
            case Z_STREAM_END:
                // Another gzip member may follow.
                guard consumed < input.count else { return output }
                guard inflateReset(&stream) == Z_OK else { throw .corrupt(codec: "gzip", reason: "zlib could not restart") }
            case Z_OK:
                if read == 0 && produced == 0 { throw .corrupt(codec: "gzip", reason: "stream is truncated") }
            case Z_BUF_ERROR:
                guard produced > 0 || read > 0 else { throw .corrupt(codec: "gzip", reason: "stream is truncated") }
            default:
                let message = stream.msg.map { String(cString: $0) } ?? "error \(status)"
                throw .corrupt(codec: "gzip", reason: message)
            }
        }
    }
}
