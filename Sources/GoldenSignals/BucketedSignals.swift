import MeshCore

/// Signals by time bucket and series id, as an aggregator counts them between
/// checkpoints. The latest few buckets each have a row that holds each series'
/// signals at its id: a span nearly always ends in the bucket the span before it
/// ended in, so counting a request compares one bucket start and indexes a row; no
/// key is hashed. When time moves past them the oldest row's signals move to a map
/// keyed by bucket and series, where spans from older buckets (late, replayed or
/// skewed ones) are counted too: memory is a few rows of series plus what that map
/// holds, however spread the spans' end times are.
struct BucketedSignals: Sendable {
    private struct Cell: Sendable {
        var signals = Signals()
        /// Whether anything was counted here; the rest of a row is room.
        var counted = false
    }

    private struct Row: Sendable {
        var bucket: UInt64
        var cells: [Cell] = []
        /// The ids of the cells counted, in the order they were first counted.
        var counted: [Int32] = []
    }

    /// Buckets with a row of their own, at most this many.
    static let rowLimit = 4

    private var rows: [Row] = []
    /// The row the last request was counted in.
    private var lastRow = 0
    private var beyondRows = IDMap<Aggregator.BucketSeriesID, Signals>()
    /// Bucket-series pairs counted in rows.
    private var countedInRows = 0

    /// Bucket-series pairs counted.
    var count: Int { countedInRows + beyondRows.count }

    /// Calls `body` with the signals of `series` in the bucket starting at `bucket`,
    /// empty ones if none were counted there yet.
    mutating func modify<Result>(bucket: UInt64, series: Int32, _ body: (inout Signals) -> Result) -> Result {
        guard let row = row(of: bucket) else {
            return beyondRows.modify(Aggregator.BucketSeriesID(bucket: bucket, series: series), default: Signals(), body)
        }
        let index = Int(series)
        if index >= rows[row].cells.count {
            let room = Swift.max(index + 1, rows[row].cells.count * 2)
            rows[row].cells.append(contentsOf: repeatElement(Cell(), count: room - rows[row].cells.count))
        }
        let counted = rows[row].cells.withUnsafeMutableBufferPointer { cells in
            defer { cells[index].counted = true }
            return cells[index].counted
        }
        if !counted {
            rows[row].counted.append(series)
            countedInRows += 1
        }
        return rows[row].cells.withUnsafeMutableBufferPointer { body(&$0[index].signals) }
    }

    /// The row of `bucket`: made while there is room for another, or taken from the
    /// oldest bucket for one later than all; nil for an earlier bucket without one.
    private mutating func row(of bucket: UInt64) -> Int? {
        if lastRow < rows.count, rows[lastRow].bucket == bucket { return lastRow }
        if let row = rows.firstIndex(where: { $0.bucket == bucket }) {
            lastRow = row
            return row
        }
        if rows.count < Self.rowLimit {
            rows.append(Row(bucket: bucket))
            lastRow = rows.count - 1
            return lastRow
        }
        guard rows.allSatisfy({ $0.bucket < bucket }) else { return nil }
        let oldest = rows.indices.min { rows[$0].bucket < rows[$1].bucket }!
        spill(oldest)
        rows[oldest].bucket = bucket
        lastRow = oldest
        return oldest
    }

    /// Moves the signals of a row into the map and empties it; the cost is that of
    /// the cells counted there, each of which was counted at least once.
    private mutating func spill(_ row: Int) {
        let spilled = rows[row]
        rows[row].counted.removeAll(keepingCapacity: true)
        for series in spilled.counted {
            let signals = spilled.cells[Int(series)].signals
            let key = Aggregator.BucketSeriesID(bucket: spilled.bucket, series: series)
            let position = beyondRows.position(of: key)
            if position.found {
                var merged = beyondRows.value(at: position)
                merged.merge(signals)
                beyondRows.setValue(merged, at: position)
            } else {
                beyondRows.insert(signals, for: key, at: position)
            }
            rows[row].cells[Int(series)] = Cell()
        }
        countedInRows -= spilled.counted.count
    }

    /// Calls `body` with every bucket and series counted, and its signals.
    func forEach(_ body: (Aggregator.BucketSeriesID, Signals) throws -> Void) rethrows {
        for row in rows {
            for series in row.counted {
                try body(Aggregator.BucketSeriesID(bucket: row.bucket, series: series), row.cells[Int(series)].signals)
            }
        }
        try beyondRows.forEach(body)
    }
}
