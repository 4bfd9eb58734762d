import CCacheHints

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

    /// Calls `body` with the bytes of row `index`, in place: unlike the subscript's
    /// slice, no reference to the column's storage is taken.
    @inlinable
    public func withUnsafeBytes<Result>(ofRow index: Int, _ body: (UnsafeBufferPointer<UInt8>) throws -> Result) rethrows -> Result {
        let range = range(of: index)
        return try bytes.withUnsafeBufferPointer { try body(UnsafeBufferPointer(rebasing: $0[range])) }
    }

    /// Where row `index` lies in `bytes`.
    @inlinable
    public func range(of index: Int) -> Range<Int> { start(of: index)..<end(of: index) }

    /// Asks the CPU to start loading row `index`'s bytes (up to `limit` of them) into
    /// its cache without waiting: a reader visiting rows out of order asks for a row a
    /// few visits ahead, so it is there when the reader arrives. A hint; it never faults.
    public func prefetch(row index: Int, limit: Int = 1024) {
        let range = self.range(of: index)
        bytes.withUnsafeBufferPointer { stored in
            guard let base = stored.baseAddress, !range.isEmpty else { return }
            // Every cache line the row touches, from the one its first byte is in.
            var line = UInt(bitPattern: base + range.lowerBound) & ~63
            let end = UInt(bitPattern: base + Swift.min(range.upperBound, range.lowerBound + limit))
            while line < end {
                meshtrace_prefetch_for_read(UnsafeRawPointer(bitPattern: line))
                line += 64
            }
        }
    }

    /// Asks the CPU to start loading where row `index` starts and ends (what
    /// `prefetch(row:)` reads first), without waiting.
    public func prefetchEnd(of index: Int) {
        ends.withUnsafeBufferPointer { if index < $0.count { meshtrace_prefetch_for_read($0.baseAddress! + Swift.max(0, index - 1)) } }
    }

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

    /// Ends open rows at `rowEnds`, offsets in `bytes` in increasing order: as
    /// `closeRow()` called as each row's last byte was appended would have.
    public mutating func closeRows(endingAt rowEnds: some Collection<Int>) {
        guard let first = rowEnds.first else { return }
        let before = ends.count
        ends.append(contentsOf: rowEnds)
        precondition(first >= (before == 0 ? 0 : ends[before - 1]) && ends[ends.count - 1] <= bytes.count,
                     "row ends outside the column's bytes")
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
