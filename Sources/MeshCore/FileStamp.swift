#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What identifies one version of a file on disk: its modification time, size and
/// inode. A file replaced by rename (as certificates and policies are rotated) gets
/// a new stamp even within one clock tick.
public struct FileStamp: Equatable, Sendable {
    public let modified: Int
    public let size: Int
    public let inode: UInt64

    /// Nil when the file cannot be examined (missing, unreadable directory).
    public init?(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        #if canImport(Darwin)
        modified = Int(info.st_mtimespec.tv_sec) * 1_000_000_000 + Int(info.st_mtimespec.tv_nsec)
        #else
        modified = Int(info.st_mtim.tv_sec) * 1_000_000_000 + Int(info.st_mtim.tv_nsec)
        #endif
        size = Int(info.st_size)
        inode = UInt64(info.st_ino)
    }

    /// Stamps of several files, nil where one cannot be examined.
    public static func of(_ paths: [String]) -> [FileStamp?] { paths.map { FileStamp(path: $0) } }
}
