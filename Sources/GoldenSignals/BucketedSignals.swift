/// Signals by time bucket and series id, as an aggregator counts them between
/// checkpoints: one row per bucket, holding each series' signals at its id. A span
/// nearly always ends in the bucket the span before it ended in, so counting a
/// request compares one bucket start and indexes a row; no key is hashed.
struct BucketedSignals: Sendable {
    private struct Cell: Sendable {
        var signals = Signals()
        /// Whether anything was counted here; the rest of a row is room.
        var counted = false
    }

    private var bucketStarts: [UInt64] = []
    private var rows: [[Cell]] = []
    /// Rows by bucket start, for a span out of step with the one before.
    private var rowsByBucket: [UInt64: Int] = [:]
    /// The row the last request was counted in.
    private var lastRow = 0
    /// The series of a new row are given room up to this many ids at once.
    private var seriesHint: Int
    /// Bucket-series pairs counted.
    private(set) var count = 0

    /// Empty, expecting about `seriesPerBucket` series in each bucket.
    init(seriesPerBucket: Int = 0) {
        seriesHint = seriesPerBucket
    }

    /// Calls `body` with the signals of `series` in the bucket starting at `bucket`,
    /// empty ones if none were counted there yet.
    mutating func modify<Result>(bucket: UInt64, series: Int32, _ body: (inout Signals) -> Result) -> Result {
        let row = self.row(of: bucket)
        let index = Int(series)
        if index >= rows[row].count {
            let room = Swift.max(index + 1, seriesHint, rows[row].count * 2)
            seriesHint = Swift.max(seriesHint, index + 1)
            rows[row].append(contentsOf: repeatElement(Cell(), count: room - rows[row].count))
        }
        let counted = rows[row].withUnsafeMutableBufferPointer { cells in
            defer { cells[index].counted = true }
            return cells[index].counted
        }
        if !counted { count += 1 }
        return rows[row].withUnsafeMutableBufferPointer { body(&$0[index].signals) }
    }

    private mutating func row(of bucket: UInt64) -> Int {
        if lastRow < bucketStarts.count, bucketStarts[lastRow] == bucket { return lastRow }
        if let row = rowsByBucket[bucket] {
            lastRow = row
            return row
        }
        lastRow = rows.count
        rowsByBucket[bucket] = lastRow
        bucketStarts.append(bucket)
        rows.append([])
        return lastRow
    }

    /// Calls `body` with every bucket and series counted, and its signals.
    func forEach(_ body: (Aggregator.BucketSeriesID, Signals) throws -> Void) rethrows {
        for (row, cells) in rows.enumerated() {
            for (series, cell) in cells.enumerated() where cell.counted {
                try body(Aggregator.BucketSeriesID(bucket: bucketStarts[row], series: Int32(series)), cell.signals)
            }
        }
    }

    /// Empty, with room for as many series per bucket as this one has.
    var emptied: BucketedSignals { BucketedSignals(seriesPerBucket: seriesHint) }
}
