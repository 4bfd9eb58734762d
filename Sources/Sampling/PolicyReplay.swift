import Foundation
import MeshCore
import SegmentStore

/// Latency histograms per edge, from which `slow_for_edge` bounds are read.
public struct EdgeLatencyHistograms: Sendable {
    public var server: [EdgeName: ExponentialHistogram] = [:]
    public var client: [EdgeName: ExponentialHistogram] = [:]

    public init() {}

    /// The calls of every trace in `batches` (a trace's spans may be spread over several).
    public static func from(_ batches: [SpanBatch]) -> EdgeLatencyHistograms {
        var all = SpanBatch()
        for batch in batches { all.append(contentsOf: batch) }
        var histograms = EdgeLatencyHistograms()
        for rows in all.rowsByTrace().values { histograms.record(TraceView(batch: all, rows: rows)) }
        return histograms
    }

    /// Counts every call of a trace.
    mutating func record(_ trace: TraceView) {
        for call in trace.calls {
            if call.serverSide {
                server[trace.edge(of: call), default: ExponentialHistogram()].record(Double(call.duration))
            } else {
                client[trace.edge(of: call), default: ExponentialHistogram()].record(Double(call.duration))
            }
        }
    }

    /// Each edge's latency at each quantile, read conservatively: the estimate less
    /// its relative error, which is never above the exact value of that rank. Edges
    /// with fewer than `minimumRequests` calls on a side get no bound on that side.
    public func knowledge(quantiles: Set<Double>, minimumRequests: UInt64) -> EdgeKnowledge {
        func bound(_ histogram: ExponentialHistogram?, _ quantile: Double) -> UInt64? {
            guard let histogram, histogram.count >= minimumRequests, let estimate = histogram.quantile(quantile) else { return nil }
            return UInt64(max(0, estimate * (1 - histogram.relativeError)))
        }
        var knowledge = EdgeKnowledge()
        for quantile in quantiles {
            var table: [EdgeName: EdgeLatency] = [:]
            for edge in Set(server.keys).union(client.keys) {
                let latency = EdgeLatency(server: bound(server[edge], quantile), client: bound(client[edge], quantile))
                if latency.server != nil || latency.client != nil { table[edge] = latency }
            }
            knowledge.quantiles[quantile] = table
        }
        return knowledge
    }
}

/// Replays recorded or simulated traffic through a policy file and reports what it
/// would keep: `meshtrace policy test`.
public struct PolicyReplay {
    /// What a policy file kept of some traffic.
    public struct Report: Sendable {
        public var traces = 0
        public var spans = 0
        public var keptTraces = 0
        public var keptSpans = 0
        /// Bytes the kept spans take in a segment file.
        public var storedBytes = 0
        /// Traces with a span of status ERROR or an HTTP status of 500 or more.
        public var errorTraces = 0
        public var errorTracesKept = 0
        /// Traces whose entry call was slower than the exact p99 of its edge.
        public var slowTraces = 0
        public var slowTracesKept = 0
        /// Kept traces missing some of their spans.
        public var partialTraces = 0
        /// Requests (traces) estimated from the kept spans alone, each kept trace counted by
        /// its adjusted count; and error traces likewise.
        public var estimatedTraces = 0.0
        public var estimatedErrorTraces = 0.0
        /// Per top-level policy, in file order: the traces and spans it kept.
        public var policies: [(name: String, traces: Int, spans: Int)] = []
        public var statistics = TailSampler.Statistics()

        /// Bytes stored per 1,000 requests (traces).
        public func bytesPerThousand(spans: Int) -> Double {
            traces == 0 || keptSpans == 0 ? 0 : Double(storedBytes) * Double(spans) / Double(keptSpans) * 1000 / Double(traces)
        }
    }

    /// Feeds `traffic` (batches with the monotonic nanosecond each arrives at) through
    /// `policy`. `slow_for_edge` bounds come from the traffic itself, as live golden
    /// signals would give them once warmed up.
    public static func run(policy: PolicyFile, traffic: [(batch: SpanBatch, at: UInt64)]) throws -> Report {
        var all = SpanBatch()
        for (batch, _) in traffic { all.append(contentsOf: batch) }
        let byTrace = all.rowsByTrace()

        var histograms = EdgeLatencyHistograms()
        var entryDurations: [EdgeName: [UInt64]] = [:]
        for rows in byTrace.values {
            let view = TraceView(batch: all, rows: rows)
            histograms.record(view)
            if let entry = view.entryCall { entryDurations[view.edge(of: entry), default: []].append(entry.duration) }
        }
        var exactP99: [EdgeName: UInt64] = [:]
        for (edge, durations) in entryDurations {
            let sorted = durations.sorted()
            exactP99[edge] = sorted[max(0, Int((0.99 * Double(sorted.count)).rounded(.up)) - 1)]
        }

        let sampler = TailSampler(policy: policy)
        sampler.update(edges: histograms.knowledge(quantiles: sampler.edgeQuantiles, minimumRequests: 100))
        var kept = SpanBatch()
        var last: UInt64 = 0
        for (batch, at) in traffic {
            sampler.admit(batch, now: at, into: &kept)
            last = max(last, at)
        }
        sampler.release(now: last &+ 3_600_000_000_000, into: &kept)
        sampler.releaseAll(now: last &+ 3_600_000_000_000, into: &kept)

        var report = Report()
        report.traces = byTrace.count
        report.spans = all.count
        report.keptSpans = kept.count
        report.statistics = sampler.statistics
        var keptRows: [TraceID: Int] = [:]
        var weights: [TraceID: Double] = [:]
        for row in 0..<kept.count {
            keptRows[kept.traceIDs[row], default: 0] += 1
            if weights[kept.traceIDs[row]] == nil { weights[kept.traceIDs[row]] = AdjustedCount.of(extras: kept.extras[row]) }
        }
        report.estimatedTraces = weights.values.reduce(0, +)
        report.keptTraces = keptRows.count
        for (traceID, rows) in byTrace {
            let view = TraceView(batch: all, rows: rows)
            let keptCount = keptRows[traceID] ?? 0
            if keptCount > 0 && keptCount < rows.count { report.partialTraces += 1 }
            if view.hasStatus(mask: 1 << StatusCode.error.rawValue) || view.httpStatus(in: 500...599) {
                report.errorTraces += 1
                report.estimatedErrorTraces += weights[traceID] ?? 0
                if keptCount == rows.count { report.errorTracesKept += 1 }
            }
            if let entry = view.entryCall, let bound = exactP99[view.edge(of: entry)], entry.duration > bound {
                report.slowTraces += 1
                if keptCount == rows.count { report.slowTracesKept += 1 }
            }
        }
        report.policies = policy.policies.map { policy in
            (policy.name, Int(report.statistics.keptByPolicy[policy.name] ?? 0), Int(report.statistics.spansKeptByPolicy[policy.name] ?? 0))
        }
        if !kept.isEmpty { report.storedBytes = try SegmentWriter.encode(kept.sortedByTrace(), walSequence: 0).count }
        return report
    }
}

extension SpanBatch {
    /// The rows of each trace.
    func rowsByTrace() -> [TraceID: [Int]] {
        var byTrace: [TraceID: [Int]] = [:]
        for row in 0..<count { byTrace[traceIDs[row], default: []].append(row) }
        return byTrace
    }
}
