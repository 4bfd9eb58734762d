/// Variable-length byte strings, one per row, kept end to end in one buffer: a
/// column of a `SpanBatch` costs no allocation per row.
public struct ByteColumn: Sendable, Equatable, RandomAccessCollection {
    /// Every row's bytes, end to end.
    public private(set) var bytes: [UInt8] = []
    /// Where each row ends in `bytes`.
    @usableFromInline private(set) var ends: [Int] = []

    public init() {}

    /// A column holding `values`, in order.
    public init(_ values: some Sequence<[UInt8]>) {
        for value in values { append(value) }
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { ends.count }

    /// The bytes of row `index`.
    @inlinable
    public subscript(index: Int) -> ArraySlice<UInt8> {
        bytes[start(of: index)..<end(of: index)]
    }

    /// Where row `index` lies in `bytes`.
    @inlinable
    public func range(of index: Int) -> Range<Int> { start(of: index)..<end(of: index) }

    @inlinable
    func start(of index: Int) -> Int { index == 0 ? 0 : ends[index - 1] }

    @inlinable
    func end(of index: Int) -> Int { ends[index] }

    public mutating func append(_ value: some Collection<UInt8>) {
        bytes.append(contentsOf: value)
        ends.append(bytes.count)
    }

    /// Adds `value` to the open row: the bytes appended since the last row ended, which
    /// `closeRow()` makes a row and `discardOpenRow()` drops. A row is built this way
    /// when its bytes come in pieces (a decoder copying fields as it validates them);
    /// the other appends must wait until it is closed.
    public mutating func appendToOpenRow(_ value: some Collection<UInt8>) {
        bytes.append(contentsOf: value)
    }

    /// Adds `value` to the open row, then lets `adjust` change the bytes just added.
    public mutating func appendToOpenRow(_ value: UnsafeBufferPointer<UInt8>, adjusting adjust: (UnsafeMutableBufferPointer<UInt8>) -> Void) {
        let start = bytes.count
        bytes.append(contentsOf: value)
        bytes.withUnsafeMutableBufferPointer { stored in
            adjust(UnsafeMutableBufferPointer(rebasing: stored[start...]))
        }
    }

    /// Ends the open row: its bytes become the last row.
    public mutating func closeRow() {
        ends.append(bytes.count)
    }

    /// Drops the open row's bytes.
    public mutating func discardOpenRow() {
        bytes.removeSubrange((ends.last ?? 0)...)
    }

    /// Appends every row of `other`.
    public mutating func append(contentsOf other: ByteColumn) {
        let base = bytes.count
        bytes += other.bytes
        ends += other.ends.lazy.map { $0 + base }
    }

    /// Reserves room for `rows` more rows of `bytes` more bytes in all.
    public mutating func reserveCapacity(rows: Int, bytes byteCount: Int) {
        ends.reserveCapacity(ends.count + rows)
        bytes.reserveCapacity(bytes.count + byteCount)
    }
}
