#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Thin POSIX file helpers with typed errors; the store needs fsync and rename
/// semantics that Foundation does not promise.
public enum FileIO {
    public static func makeDirectory(_ path: String) throws(StoreError) {
        var components: [String] = []
        for part in path.split(separator: "/", omittingEmptySubsequences: false) {
            components.append(String(part))
            let prefix = components.joined(separator: "/")
            if prefix.isEmpty { continue }
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                throw .io(path: prefix, operation: "mkdir", errno: errno)
            }
        }
    }

    public static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    /// Names of the entries in `directory`, sorted.
    public static func list(_ directory: String) throws(StoreError) -> [String] {
        guard let handle = opendir(directory) else {
            throw .io(path: directory, operation: "opendir", errno: errno)
        }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: Int(NAME_MAX) + 1) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    public static func readAll(_ path: String) throws(StoreError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path: path, operation: "open", errno: errno) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .io(path: path, operation: "stat", errno: errno) }
        return try read(fd: fd, path: path, offset: 0, count: Int(info.st_size))
    }

    public static func size(_ path: String) throws(StoreError) -> Int {
        var info = stat()
        guard stat(path, &info) == 0 else { throw .io(path: path, operation: "stat", errno: errno) }
        return Int(info.st_size)
    }

    public static func read(fd: Int32, path: String, offset: Int, count: Int) throws(StoreError) -> [UInt8] {
        var failure: Int32 = 0
        // Only the bytes read count as initialized, so the buffer needs no zeroing first.
        let buffer = [UInt8](unsafeUninitializedCapacity: count) { raw, done in
            done = 0
            while done < count {
                let got = pread(fd, raw.baseAddress! + done, count - done, off_t(offset + done))
                if got < 0 {
                    if errno == EINTR { continue }
                    failure = errno
                    return
                }
                if got == 0 { break }
                done += got
            }
        }
        if failure != 0 { throw .io(path: path, operation: "read", errno: failure) }
        return buffer
    }

    public static func readRange(_ path: String, offset: Int, count: Int) throws(StoreError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path: path, operation: "open", errno: errno) }
        defer { close(fd) }
        return try read(fd: fd, path: path, offset: offset, count: count)
    }

    /// Writes `bytes` at `offset` (the start of the file unless given), whatever the
    /// file's position.
    public static func writeAll(fd: Int32, path: String, _ bytes: [UInt8], at offset: Int = 0) throws(StoreError) {
        let failure = bytes.withUnsafeBytes { write(fd: fd, $0, at: offset) }
        if failure != 0 { throw .io(path: path, operation: "write", errno: failure) }
    }

    /// Writes zero bytes over `range` of the file, growing it if the range ends past its end.
    public static func writeZeros(fd: Int32, path: String, range: Range<Int>) throws(StoreError) {
        var offset = range.lowerBound
        while offset < range.upperBound {
            let count = min(zeros.count, range.upperBound - offset)
            let failure = zeros.withUnsafeBytes { write(fd: fd, UnsafeRawBufferPointer(rebasing: $0[..<count]), at: offset) }
            if failure != 0 { throw .io(path: path, operation: "write", errno: failure) }
            offset += count
        }
    }

    private static let zeros = [UInt8](repeating: 0, count: 64 << 10)

    /// Writes all of `bytes` at `offset`; returns 0, or the errno of the write that failed.
    private static func write(fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int32 {
        var done = 0
        while done < bytes.count {
            let wrote = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
            if wrote < 0 {
                if errno == EINTR { continue }
                return errno
            }
            done += wrote
        }
        return 0
    }

    public static func sync(fd: Int32, path: String) throws(StoreError) {
        guard fsync(fd) == 0 else { throw .io(path: path, operation: "fsync", errno: errno) }
    }

    /// Makes a file's data durable with only the metadata needed to read it back
    /// (`fdatasync`): its size when that changed, not its times.
    public static func syncData(fd: Int32, path: String) throws(StoreError) {
        #if os(Linux)
        guard fdatasync(fd) == 0 else { throw .io(path: path, operation: "fdatasync", errno: errno) }
        #else
        try sync(fd: fd, path: path)
        #endif
    }

    public static func syncDirectory(_ path: String) throws(StoreError) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path: path, operation: "open", errno: errno) }
        defer { close(fd) }
        try sync(fd: fd, path: path)
    }

    /// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the folder.
    public static func writeAtomically(_ bytes: [UInt8], to path: String) throws(StoreError) {
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .io(path: temporary, operation: "create", errno: errno) }
        do {
            try writeAll(fd: fd, path: temporary, bytes)
            try sync(fd: fd, path: temporary)
        } catch {
            close(fd)
            unlink(temporary)
            throw error
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            let code = errno
            unlink(temporary)
            throw .io(path: path, operation: "rename", errno: code)
        }
        try syncDirectory(directory(of: path))
    }

    public static func remove(_ path: String) throws(StoreError) {
        if unlink(path) != 0 && errno != ENOENT { throw .io(path: path, operation: "unlink", errno: errno) }
    }

    public static func move(_ from: String, to: String) throws(StoreError) {
        guard rename(from, to) == 0 else { throw .io(path: from, operation: "rename", errno: errno) }
    }

    public static func truncate(_ path: String, to length: Int) throws(StoreError) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path: path, operation: "open", errno: errno) }
        defer { close(fd) }
        guard ftruncate(fd, off_t(length)) == 0 else { throw .io(path: path, operation: "truncate", errno: errno) }
        try sync(fd: fd, path: path)
    }

    public static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}

/// A file kept open for reading while its owner lives, so reads need no path
/// lookup and a file deleted meanwhile (by compaction or retention) stays readable
/// for whoever still holds it. When the process is out of descriptors it opens the
/// file for each read instead.
final class ReadHandle: Sendable {
    let path: String
    /// nil when no descriptor was left at open.
    private let descriptor: Int32?

    init(path: String) throws(StoreError) {
        self.path = path
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        if descriptor >= 0 {
            self.descriptor = descriptor
        } else if errno == EMFILE || errno == ENFILE {
            self.descriptor = nil
        } else {
            throw .io(path: path, operation: "open", errno: errno)
        }
    }

    deinit {
        if let descriptor { close(descriptor) }
    }

    /// Up to `count` bytes at `offset` (fewer at the end of the file).
    func read(offset: Int, count: Int) throws(StoreError) -> [UInt8] {
        guard let descriptor else { return try FileIO.readRange(path, offset: offset, count: count) }
        return try FileIO.read(fd: descriptor, path: path, offset: offset, count: count)
    }
}
