import MeshCore
import OTLPWire

/// State derived from everything the WAL logs (golden signals, say), kept in step
/// with the head block so that it is exact across crashes.
///
/// The store feeds it each record under the log's lock, in log order, and replays
/// it the WAL files its own files do not cover. When a WAL file closes (at a seal)
/// the store asks it for a checkpoint of the state up to that file, and runs that
/// checkpoint before it deletes the file. So every logged record is in the
/// follower's files or in a WAL file it will be replayed from: never in neither,
/// never in both.
public protocol WALFollower: AnyObject, Sendable {
    /// The last WAL file sequence the follower's own files cover.
    var coveredSequence: UInt64 { get }
    /// Spans just logged, or replayed from the WAL, with their facts (row for row).
    func follow(spans: SpanBatch, facts: [RequestFacts])
    /// An OTLP metrics export request just logged, or replayed.
    func follow(metrics: ExportMetricsServiceRequest)
    /// Called under the log's lock as WAL file `sequence` closes: captures the state
    /// up to it and returns the work that makes that durable. The store runs it
    /// before deleting the file; when it throws, the file stays.
    func checkpoint(upTo sequence: UInt64) -> @Sendable () throws -> Void
}

extension WALFollower {
    /// The spans of a decoded export request, just logged or replayed.
    public func follow(_ export: DecodedTraceExport) { follow(spans: export.spans, facts: export.facts) }
}

/// Decides which logged spans the head block keeps: a sampler. The store calls it
/// under its lock, in log order, with monotonic nanoseconds for `now`; spans it
/// holds undecided when a WAL file closes are logged again in the next file, so a
/// crash loses none of them.
public protocol SpanAdmission: AnyObject, Sendable {
    /// Takes spans just logged (or replayed), with the facts the decoder read from each;
    /// appends to `kept` the spans decided to be kept.
    func admit(_ batch: SpanBatch, facts: [RequestFacts], now: UInt64, into kept: inout SpanBatch)
    /// Appends to `kept` the spans of every trace whose decision came due.
    func release(now: UInt64, into kept: inout SpanBatch)
    /// Decides everything held, now (at shutdown).
    func releaseAll(now: UInt64, into kept: inout SpanBatch)
    /// The spans held undecided.
    func held() -> SpanBatch
}
