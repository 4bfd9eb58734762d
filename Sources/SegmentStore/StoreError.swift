/// Why the store could not do what was asked.
public enum StoreError: Error, CustomStringConvertible {
    /// A system call failed on `path`.
    case io(path: String, operation: String, errno: Int32)
    /// A segment file is not a valid meshtrace segment.
    case corruptSegment(file: String, reason: String)
    /// A column chunk's checksum or encoding is wrong.
    case corruptColumn(file: String, column: String, reason: String)
    /// The segment was written by a format version this build cannot read.
    case unsupportedVersion(file: String, version: UInt16)
    /// The store was opened read-only and was asked to write.
    case readOnly

    public var description: String {
        switch self {
        case .io(let path, let operation, let errno):
            return "\(operation) \(path): \(String(cString: strerror(errno)))"
        case .corruptSegment(let file, let reason):
            return "corrupt segment \(file): \(reason)"
        case .corruptColumn(let file, let column, let reason):
            return "corrupt column \(column) in segment \(file): \(reason)"
        case .unsupportedVersion(let file, let version):
            return "segment \(file) has format version \(version), which this build cannot read"
        case .readOnly:
            return "the store is open read-only"
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
