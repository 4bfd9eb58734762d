/// Why a buffer could not be compressed or decompressed.
public enum CompressionError: Error, Equatable, CustomStringConvertible {
    /// The input is not a valid frame of the codec, or is truncated.
    case corrupt(codec: String, reason: String)
    /// The frame declares a decompressed size above the caller's limit, in bytes.
    case tooLarge(codec: String, declared: UInt64, limit: Int)
    /// The library refused to compress (out of memory, bad parameters).
    case compressionFailed(codec: String, reason: String)
    /// Decompressing produced more than the caller's limit, in bytes, and was stopped there.
    case exceedsLimit(codec: String, limit: Int)

    public var description: String {
        switch self {
        case .corrupt(let codec, let reason):
            return "corrupt \(codec) data: \(reason)"
        case .tooLarge(let codec, let declared, let limit):
            return "\(codec) frame declares \(declared) bytes, more than the limit of \(limit)"
        case .compressionFailed(let codec, let reason):
            return "\(codec) compression failed: \(reason)"
        case .exceedsLimit(let codec, let limit):
            return "\(codec) data decompresses to more than the limit of \(limit) bytes"
        }
    }
}
