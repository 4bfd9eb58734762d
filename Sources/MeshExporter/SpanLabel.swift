import Synchronization

/// A string the exporter holds once — an operation name, a method, an upstream
/// cluster, a peer service, a user agent: what a proxy's routes and clusters repeat
/// on every span — so that a span names it by a 16-bit handle instead of having its
/// bytes copied. `MeshExporter.label(_:)` makes one; `RequestSpan.labels` uses it.
public struct SpanLabel: Sendable, Hashable {
    let index: UInt16
}

/// The labels of a span's repeated strings. A field's label, when set, is exported in
/// place of the span's string for that field, which is then neither read nor copied.
public struct SpanLabels: Sendable {
    public var name: SpanLabel?
    public var method: SpanLabel?
    public var peerService: SpanLabel?
    public var upstreamCluster: SpanLabel?
    public var responseFlags: SpanLabel?
    public var userAgent: SpanLabel?

    public init(
        name: SpanLabel? = nil, method: SpanLabel? = nil, peerService: SpanLabel? = nil, upstreamCluster: SpanLabel? = nil,
        responseFlags: SpanLabel? = nil, userAgent: SpanLabel? = nil
    ) {
        self.name = name
        self.method = method
        self.peerService = peerService
        self.upstreamCluster = upstreamCluster
        self.responseFlags = responseFlags
        self.userAgent = userAgent
    }
}

/// The labels' bytes: a fixed block allocated once, appended to and never moved, so
/// that the export loop reads a label without a lock (a slot names a label only after
/// `label(_:)` has written it and returned). Each label is stored as its index (two
/// bytes), its UTF-8 and a NUL: C callers pass the text's address back, and
/// `label(at:)` knows it for a label.
final class LabelTable: @unchecked Sendable {
    /// Labels the table holds at most.
    static let capacity = 4096
    /// Bytes of all labels together.
    static let byteCapacity = 64 << 10
    /// The longest label.
    static let maxLength = 1024

    private let bytes: UnsafeMutableRawPointer
    private let entries: UnsafeMutablePointer<(offset: Int32, length: Int32)>
    private struct Index {
        var used = 0
        var labels: [String: SpanLabel] = [:]
    }
    private let index = Mutex(Index())
    /// Labels written, stored after their bytes: what the export loop may read.
    private let published = Atomic<Int>(0)

    /// Bytes the table takes from the exporter's memory limit.
    static var footprint: Int { byteCapacity + capacity * MemoryLayout<(Int32, Int32)>.stride }

    init() {
        bytes = .allocate(byteCount: Self.byteCapacity, alignment: 8)
        entries = .allocate(capacity: Self.capacity)
    }

    deinit {
        bytes.deallocate()
        entries.deallocate()
    }

    /// The label of `text`, the same for the same text; nil when `text` is longer than
    /// `maxLength` or the table is full.
    func label(_ text: String) -> SpanLabel? {
        index.withLock { index -> SpanLabel? in
            if let known = index.labels[text] { return known }
            let count = index.labels.count
            let length = text.utf8.count
            guard length <= Self.maxLength, count < Self.capacity, index.used + 2 + length + 1 <= Self.byteCapacity else { return nil }
            let start = bytes + index.used + 2
            (start - 2).storeBytes(of: UInt16(count), as: UInt16.self)
            var copy = text
            copy.withUTF8 { utf8 in
                if let base = utf8.baseAddress { start.copyMemory(from: base, byteCount: length) }
            }
            start.storeBytes(of: 0, toByteOffset: length, as: UInt8.self)
            entries[count] = (Int32(index.used + 2), Int32(length))
            index.used += 2 + length + 1
            let label = SpanLabel(index: UInt16(count))
            index.labels[text] = label
            published.store(count + 1, ordering: .releasing)
            return label
        }
    }

    /// The label whose text starts at `pointer` (as `text(of:)` gave it), or nil.
    @inline(__always)
    func label(at pointer: UnsafeRawPointer) -> SpanLabel? {
        guard pointer >= UnsafeRawPointer(bytes) + 2, pointer < UnsafeRawPointer(bytes) + Self.byteCapacity else { return nil }
        let candidate = Int((pointer - 2).loadUnaligned(as: UInt16.self))
        guard candidate < published.load(ordering: .acquiring),
              UnsafeRawPointer(bytes) + Int(entries[candidate].offset) == pointer else { return nil }
        return SpanLabel(index: UInt16(candidate))
    }

    /// The NUL-terminated text of `label`, valid as long as the table.
    func text(of label: SpanLabel) -> UnsafePointer<CChar> {
        UnsafePointer((bytes + Int(entries[Int(label.index)].offset)).assumingMemoryBound(to: CChar.self))
    }

    /// The bytes of `label`; empty for a label this table did not make (another exporter's).
    func bytes(of label: Int) -> UnsafeRawBufferPointer {
        guard label < published.load(ordering: .acquiring) else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        let entry = entries[label]
        return UnsafeRawBufferPointer(start: bytes + Int(entry.offset), count: Int(entry.length))
    }
}
