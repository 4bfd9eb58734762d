import Compression
import Foundation
import MeshCore
import OTLPWire
import SegmentStore
import Synchronization

/// Exact golden signals and the service graph from every span the collector
/// logs, before any sampling: rate, errors (4xx apart) and latency histograms per
/// operation and per edge, in 10-second buckets.
///
/// It follows the WAL (`WALFollower`): spans are counted as they are logged, and
/// each seal writes the buckets counted since the last one to a series file in
/// `series/` before the WAL files they came from are deleted. After a crash the
/// WAL replays what no series file holds, so every span is counted exactly once.
public final class GoldenSignals: WALFollower {
    public struct Configuration: Sendable {
        /// Where series files live (`<data-dir>/series`).
        public var directory: String
        /// Bucket widths, finest first (each a multiple of the one before), and how long
        /// each is kept. Series files hold the finest; older ones are rolled up.
        public var resolutions: [Resolution] = [
            Resolution(width: .seconds(10), retention: .seconds(6 * 3600)),
            Resolution(width: .seconds(60), retention: .seconds(7 * 86400)),
            Resolution(width: .seconds(3600), retention: .seconds(90 * 86400)),
        ]
        /// The least and most a half waits for its partner (the window adapts in between).
        public var minimumPairingWindow: Duration = .seconds(10)
        public var maximumPairingWindow: Duration = .seconds(600)
        /// Halves that may wait for their partner at once.
        public var maxPendingHalves: Int = 200_000
        /// zstd level of series files.
        public var compressionLevel: Int32 = Zstd.defaultLevel
        /// Open without writing (for the CLI next to a running collector).
        public var readOnly = false
        /// Shards spans are counted in, by trace id (each with its share of the pairing
        /// room), so that requests are counted on several cores at once.
        public var shards: Int = Shards.defaultCount

        public init(directory: String) {
            self.directory = directory
        }

        /// Width of the finest bucket.
        public var bucket: Duration { resolutions[0].width }
    }

    /// One bucket width and how long buckets of it are kept.
    public struct Resolution: Sendable {
        public var width: Duration
        public var retention: Duration

        public init(width: Duration, retention: Duration) {
            self.width = width
            self.retention = retention
        }
    }

    public let configuration: Configuration
    public let coveredSequence: UInt64
    /// Series files found damaged when opening, and what was done with them.
    public let problems: [String]

    struct State {
        /// Counts proxies' OTLP metrics, and numbers every series for the tiers and
        /// queries (the span shards number theirs on their own).
        var aggregator: Aggregator
        /// Per span shard: the id in `aggregator` of each of the shard's series.
        var shardSeries: [[Int32]]
        /// Signals in series files, at every resolution.
        var tiers: Tiers
        /// Signals taken by a checkpoint whose file is being written.
        var writing: [Aggregator.BucketSeriesID: Signals] = [:]
        /// The series files: resolution, newest bucket and WAL sequence of each, by name.
        var files: [String: FileSummary] = [:]
    }

    struct FileSummary {
        var resolution: UInt64
        var newestBucket: UInt64?
        var walSequence: UInt64
    }

    let state: Mutex<State>
    /// Where spans are counted, sharded by trace id. Locked after `state`, never before.
    let spanShards: Sharded<Aggregator>
    private let origin = ContinuousClock.now
    /// Held while series files are rolled up, so roll-ups never overlap.
    private let rollUpLock = Mutex(())

    /// Opens the series files in `configuration.directory`, creating it if needed.
    public init(configuration: Configuration) throws {
        self.configuration = configuration
        guard !configuration.resolutions.isEmpty,
              zip(configuration.resolutions, configuration.resolutions.dropFirst()).allSatisfy({ finer, coarser in
                  let (f, c) = (Self.nanoseconds(finer.width), Self.nanoseconds(coarser.width))
                  return f > 0 && c >= f && c % f == 0
              }), Self.nanoseconds(configuration.resolutions[0].width) > 0
        else { throw ConfigurationError(message: "golden-signal resolutions must be finest first, each a multiple of the one before") }
        if !configuration.readOnly { try FileIO.makeDirectory(configuration.directory) }
        var settings = Aggregator.Settings()
        settings.bucketNanos = Self.nanoseconds(configuration.bucket)
        settings.pairing.minimumWindow = Self.nanoseconds(configuration.minimumPairingWindow)
        settings.pairing.maximumWindow = max(settings.pairing.minimumWindow, Self.nanoseconds(configuration.maximumPairingWindow))
        settings.pairing.maxPending = max(1, configuration.maxPendingHalves)
        let collectingSince = try Self.collectingSince(directory: configuration.directory, readOnly: configuration.readOnly)
        let tiers = Tiers(resolutions: configuration.resolutions.map { (Self.nanoseconds($0.width), Self.nanoseconds($0.retention)) })
        var state = State(
            aggregator: Aggregator(settings: settings, collectingSince: collectingSince),
            shardSeries: Array(repeating: [], count: max(1, configuration.shards)), tiers: tiers)
        var shardSettings = settings
        shardSettings.pairing.maxPending = max(1, settings.pairing.maxPending / max(1, configuration.shards))
        let spanShards = Sharded(count: configuration.shards) { _ in Aggregator(settings: shardSettings) }
        var covered: UInt64 = 0
        var latestPending: (sequence: UInt64, resolution: UInt64, halves: [PendingHalf], streams: [String: ProxyMetricsFolder.StreamPoint])?
        var problems: [String] = []
        var files: [(name: String, file: RollupFile)] = []
        if FileIO.exists(configuration.directory) {
            for name in try FileIO.list(configuration.directory).sorted() {
                let path = configuration.directory + "/" + name
                if name.hasSuffix(".tmp") {
                    if !configuration.readOnly { try FileIO.remove(path) }
                    continue
                }
                guard name.hasSuffix(RollupFile.fileExtension) else { continue }
                do {
                    files.append((name, try RollupFile(bytes: try FileIO.readAll(path))))
                } catch {
                    problems.append("\(path): \(error); ignored")
                }
            }
        }
        // A roll-up that crashed before deleting its inputs left them behind: its file names them.
        let replaced = Set(files.flatMap(\.file.replaces))
        for (name, _) in files where replaced.contains(name) && !configuration.readOnly {
            try FileIO.remove(configuration.directory + "/" + name)
        }
        let now = Self.wallClock()
        for (name, file) in files where !replaced.contains(name) {
            covered = max(covered, file.walSequence)
            for (key, signals) in file.rows {
                let id = state.aggregator.seriesID(key.series)
                state.tiers.add(signals, series: id, bucket: key.bucket, resolution: file.resolution, now: now)
            }
            state.files[name] = FileSummary(resolution: file.resolution, newestBucket: file.newestBucket, walSequence: file.walSequence)
            // The newest file holds the halves still waiting and the metric streams' last points.
            if latestPending.map({ file.walSequence > $0.sequence || file.walSequence == $0.sequence && file.resolution < $0.resolution }) ?? true {
                latestPending = (file.walSequence, file.resolution, file.pending, file.streams)
            }
        }
        if let latestPending {
            var byShard = [[PendingHalf]](repeating: [], count: spanShards.count)
            for half in latestPending.halves { byShard[half.key.trace.shard(of: spanShards.count)].append(half) }
            for (index, halves) in byShard.enumerated() {
                spanShards.withLock(index) { $0.restorePending(halves, now: 0) }
            }
            state.aggregator.metrics.streams = latestPending.streams
        }
        coveredSequence = covered
        self.problems = problems
        self.state = Mutex(state)
        self.spanShards = spanShards
    }

    /// When this directory began collecting (wall-clock nanoseconds), from its
    /// `created` file, written the first time.
    private static func collectingSince(directory: String, readOnly: Bool) throws -> UInt64 {
        let path = directory + "/created"
        if FileIO.exists(path), let text = String(bytes: try FileIO.readAll(path), encoding: .utf8),
           let since = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            return since
        }
        let now = UInt64(max(0, Date().timeIntervalSince1970 * 1e9))
        if !readOnly { try FileIO.writeAtomically(Array("\(now)\n".utf8), to: path) }
        return now
    }

    /// A configuration the store cannot run with.
    public struct ConfigurationError: Error, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    /// Wall-clock nanoseconds since the epoch.
    public static func wallClock() -> UInt64 { UInt64(max(0, Date().timeIntervalSince1970 * 1e9)) }

    static func nanoseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return UInt64(max(0, seconds)) * 1_000_000_000 + UInt64(max(0, attoseconds) / 1_000_000_000)
    }

    /// Monotonic nanoseconds since this object was made: the pairing windows' clock.
    private var now: UInt64 { Self.nanoseconds(origin.duration(to: .now)) }

    // MARK: WALFollower

    public func follow(spans: SpanBatch, facts: [RequestFacts]) {
        let now = self.now
        spanShards.forEach(spans.rowsByShard(spanShards.count), isEmpty: \.isEmpty) { _, rows, aggregator in
            aggregator.ingest(spans, facts: facts, rows: rows, now: now)
        }
    }

    public func follow(metrics request: ExportMetricsServiceRequest) {
        state.withLock { $0.aggregator.ingest(metrics: request) }
    }

    public func checkpoint(upTo sequence: UInt64) -> @Sendable () throws -> Void {
        let now = self.now
        let (rows, pending, streams) = state.withLock { state in
            var rows = state.aggregator.takeDelta()
            var pending: [PendingHalf] = []
            for index in 0..<spanShards.count {
                let (taken, halves) = spanShards.withLock(index) { shard in (shard.takeDelta(), shard.pendingHalves(now: now)) }
                rows.merge(taken) { var sum = $0; sum.merge($1); return sum }
                pending += halves
            }
            for (key, signals) in rows {
                let id = state.aggregator.seriesID(key.series)
                state.writing[Aggregator.BucketSeriesID(bucket: key.bucket, series: id), default: Signals()].merge(signals)
            }
            return (rows, pending, state.aggregator.metrics.streams)
        }
        let configuration = self.configuration
        let resolution = Self.nanoseconds(configuration.bucket)
        let file = RollupFile(walSequence: sequence, resolution: resolution, rows: rows, pending: pending, streams: streams)
        return { [self] in
            do {
                let name = RollupFile.fileName(sequence: sequence)
                try FileIO.writeAtomically(try file.encoded(level: configuration.compressionLevel), to: configuration.directory + "/" + name)
                let now = Self.wallClock()
                state.withLock { state in
                    for (key, signals) in rows {
                        let id = state.aggregator.seriesID(key.series)
                        state.tiers.add(signals, series: id, bucket: key.bucket, resolution: resolution, now: now)
                    }
                    state.files[name] = FileSummary(resolution: resolution, newestBucket: file.newestBucket, walSequence: sequence)
                    state.writing = [:]
                }
            } catch {
                // The WAL file stays; the next checkpoint writes these signals again.
                state.withLock { state in
                    state.aggregator.restore(rows)
                    state.writing = [:]
                }
                throw error
            }
        }
    }

    /// Counts the halves whose pairing window has closed (the collector calls this
    /// every second, so unpaired edges show up while traffic is idle).
    public func expirePairs() {
        let now = self.now
        for index in 0..<spanShards.count { spanShards.withLock(index) { $0.expire(now: now) } }
    }

    // MARK: Resolutions and retention

    /// Rolls series files whose newest bucket is past their resolution's retention
    /// into one file of the next coarser resolution, deletes what the coarsest one no
    /// longer keeps, and drops expired buckets from memory.
    ///
    /// Crash-safe like segment compaction: the coarser file is written (temporary
    /// file, fsync, rename) and names its inputs, which are deleted after; opening
    /// deletes any input still there.
    ///
    /// - Parameter now: wall-clock nanoseconds since the epoch.
    /// - Returns: how many files were rolled up, and how many deleted as expired.
    @discardableResult
    public func rollUp(now: UInt64 = GoldenSignals.wallClock()) throws -> (rolledUp: Int, expired: Int) {
        guard !configuration.readOnly else { return (0, 0) }
        return try rollUpLock.withLock { _ in
            let resolutions = configuration.resolutions.map { (width: Self.nanoseconds($0.width), retention: Self.nanoseconds($0.retention)) }
            var rolledUp = 0
            var expired = 0
            for (index, resolution) in resolutions.enumerated() {
                let files = state.withLock { $0.files }
                let due = files.filter { _, summary in
                    summary.resolution == resolution.width
                        && (summary.newestBucket.map { $0 + resolution.width + resolution.retention <= now } ?? false)
                }.keys.sorted()
                guard !due.isEmpty else { continue }
                if index == resolutions.count - 1 {
                    for name in due { try FileIO.remove(configuration.directory + "/" + name) }
                    state.withLock { state in for name in due { state.files[name] = nil } }
                    expired += due.count
                    continue
                }
                let coarser = resolutions[index + 1].width
                var rows: [BucketedSeries: Signals] = [:]
                var newest: RollupFile?
                for name in due {
                    let file = try RollupFile(bytes: try FileIO.readAll(configuration.directory + "/" + name))
                    for (key, signals) in file.rows {
                        rows[BucketedSeries(bucket: key.bucket / coarser * coarser, series: key.series), default: Signals()].merge(signals)
                    }
                    if file.walSequence >= (newest?.walSequence ?? 0) { newest = file }
                }
                guard let newest else { continue }
                // The newest input's waiting halves and metric streams travel with it.
                let output = RollupFile(
                    walSequence: newest.walSequence, resolution: coarser, rows: rows, pending: newest.pending,
                    streams: newest.streams, replaces: due)
                let tag = String(UInt32.random(in: 0...UInt32.max), radix: 16)
                let name = RollupFile.fileName(sequence: newest.walSequence, rollup: (coarser / 1_000_000_000, tag))
                try FileIO.writeAtomically(try output.encoded(level: configuration.compressionLevel), to: configuration.directory + "/" + name)
                for input in due { try FileIO.remove(configuration.directory + "/" + input) }
                try FileIO.syncDirectory(configuration.directory)
                state.withLock { state in
                    for input in due { state.files[input] = nil }
                    state.files[name] = FileSummary(resolution: coarser, newestBucket: output.newestBucket, walSequence: output.walSequence)
                }
                rolledUp += due.count
            }
            state.withLock { state in
                state.tiers.prune(now: now)
                // Buckets whose time passed long enough ago (spans that pair late land in
                // them for up to the longest pairing window) are packed for queries.
                let settled = Self.nanoseconds(configuration.maximumPairingWindow)
                state.tiers.pack(endedBefore: now > settled ? now - settled : 0)
            }
            return (rolledUp, expired)
        }
    }

    /// Series-buckets held in memory per resolution (bucket width in nanoseconds).
    public var bucketsHeld: [(width: UInt64, count: Int)] {
        state.withLock { state in
            state.tiers.tiers.map { tier in (tier.width, tier.buckets.values.reduce(0) { $0 + $1.count }) }
        }
    }

    /// The series files on disk, by resolution (nanoseconds): how many, for `/metrics` and tests.
    public var seriesFiles: [UInt64: Int] {
        state.withLock { state in state.files.values.reduce(into: [:]) { $0[$1.resolution, default: 0] += 1 } }
    }

    // MARK: Queries

    /// The width of the finest buckets, in nanoseconds.
    public var bucketNanoseconds: UInt64 { Self.nanoseconds(configuration.bucket) }

    /// The signals of every series in the buckets that overlap `window`
    /// (nanoseconds since the epoch), merged over the window.
    public func signals(in window: ClosedRange<UInt64>) -> [SeriesKey: Signals] {
        let snapshot = self.snapshot()
        return snapshot.keyed(snapshot.merged(in: window, operations: true))
    }

    /// The series with signals in the buckets that overlap `window`, without merging them.
    public func series(in window: ClosedRange<UInt64>) -> [SeriesKey] {
        let snapshot = self.snapshot()
        return snapshot.present(in: window).map { snapshot.series[Int($0)] }
    }

    /// The service graph of `window`: every workload that sent spans, the virtual
    /// ones at the far end of edges, and every edge with its signals. Operations are
    /// only looked up, not merged.
    public func serviceGraph(in window: ClosedRange<UInt64>) -> ServiceGraph {
        let snapshot = self.snapshot()
        var nodes: Set<Workload> = []
        for id in snapshot.present(in: window) {
            if case let .operation(workload, _, _) = snapshot.series[Int(id)] { nodes.insert(workload) }
        }
        let merged = snapshot.merged(in: window, operations: false)
        var edges: [ServiceGraph.Edge] = []
        edges.reserveCapacity(merged.count)
        var reported: [ServiceGraph.ReportedEdge] = []
        for (id, signals) in merged {
            switch snapshot.series[Int(id)] {
            case let .reported(client, server, reporter):
                reported.append(ServiceGraph.ReportedEdge(client: client, server: server, reporter: reporter, signals: signals))
            case let .edge(client, server, connection):
                edges.append(ServiceGraph.Edge(client: client, server: server, connection: connection, signals: signals))
            case .operation:
                break
            }
        }
        let named = Set(nodes.map(\.service))
        var virtual: Set<String> = []
        for edge in edges {
            if !named.contains(edge.client.service) { virtual.insert(edge.client.service) }
            if !named.contains(edge.server.service) { virtual.insert(edge.server.service) }
        }
        // Edges in no particular order: sorting a thousand by their names' strings costs
        // more than merging them; renderers sort what they print.
        return ServiceGraph(window: window, nodes: nodes.sorted(), virtualNodes: virtual.sorted(), edges: edges, reported: reported)
    }

    /// What a query reads, taken under the lock and read outside it (the tiers and
    /// the buckets being counted are shared, not copied, unless written meanwhile).
    private struct Snapshot {
        var tiers: Tiers
        var writing: [Aggregator.BucketSeriesID: Signals]
        /// Signals counted since the last checkpoint: the metrics' and each span
        /// shard's, with the shard's series ids mapped to `series`.
        var deltas: [(delta: BucketedSignals, ids: [Int32]?)]
        var series: [SeriesKey]
        var bucketNanos: UInt64

        func merged(in window: ClosedRange<UInt64>, operations: Bool) -> [Int32: Signals] {
            let isOperation: [Bool] = operations ? [] : series.map { key -> Bool in
                if case .operation = key { return true } else { return false }
            }
            let include: (Int32) -> Bool = operations ? { _ in true } : { !isOperation[Int($0)] }
            var merged = tiers.signals(in: window, including: include)
            let firstBucket = window.lowerBound / bucketNanos * bucketNanos
            func add(_ key: Aggregator.BucketSeriesID, _ signals: Signals) {
                guard key.bucket >= firstBucket && key.bucket <= window.upperBound && include(key.series) else { return }
                merged[key.series, default: Signals()].merge(signals)
            }
            for (key, signals) in writing { add(key, signals) }
            forEachDelta(add)
            return merged
        }

        func present(in window: ClosedRange<UInt64>) -> Set<Int32> {
            var present = tiers.present(in: window)
            let firstBucket = window.lowerBound / bucketNanos * bucketNanos
            func add(_ key: Aggregator.BucketSeriesID, _: Signals) {
                if key.bucket >= firstBucket && key.bucket <= window.upperBound { present.insert(key.series) }
            }
            for (key, signals) in writing { add(key, signals) }
            forEachDelta(add)
            return present
        }

        /// Every bucket counted since the last checkpoint, by ids of `series`.
        func forEachDelta(_ body: (Aggregator.BucketSeriesID, Signals) -> Void) {
            for (delta, ids) in deltas {
                if let ids {
                    delta.forEach { key, signals in body(Aggregator.BucketSeriesID(bucket: key.bucket, series: ids[Int(key.series)]), signals) }
                } else {
                    delta.forEach(body)
                }
            }
        }

        func keyed(_ merged: [Int32: Signals]) -> [SeriesKey: Signals] {
            var keyed: [SeriesKey: Signals] = [:]
            keyed.reserveCapacity(merged.count)
            for (id, signals) in merged { keyed[series[Int(id)]] = signals }
            return keyed
        }
    }

    private func snapshot() -> Snapshot {
        let bucketNanos = Self.nanoseconds(configuration.bucket)
        return state.withLock { state in
            var deltas = [(state.aggregator.delta, ids: [Int32]?.none)]
            for index in 0..<spanShards.count {
                let (delta, series) = spanShards.withLock(index) { shard in
                    (shard.delta, shard.series[state.shardSeries[index].count...])
                }
                for key in series { state.shardSeries[index].append(state.aggregator.seriesID(key)) }
                deltas.append((delta, state.shardSeries[index]))
            }
            return Snapshot(tiers: state.tiers, writing: state.writing, deltas: deltas, series: state.aggregator.series,
                            bucketNanos: bucketNanos)
        }
    }

    /// How pairing has gone since the process started.
    public var pairingStatistics: PairingStatistics {
        let (statistics, pending) = pairing
        return PairingStatistics(
            paired: statistics.paired, roots: statistics.roots, unpairedClients: statistics.expiredClients,
            unpairedServers: statistics.expiredServers, evicted: statistics.evicted, late: statistics.late,
            pending: pending, series: snapshot().series.count)
    }

    /// Pairing's counters summed over the span shards, and the halves waiting in all of them.
    var pairing: (statistics: EdgePairer.Statistics, pending: Int) {
        var total = EdgePairer.Statistics()
        var pending = 0
        for index in 0..<spanShards.count {
            let (statistics, waiting) = spanShards.withLock(index) { ($0.pairer.statistics, $0.pairer.pending.count) }
            total.add(statistics)
            pending += waiting
        }
        return (total, pending)
    }
}

/// Counters of CLIENT/SERVER pairing.
public struct PairingStatistics: Sendable, Equatable {
    public var paired: UInt64
    /// Root SERVER spans, counted as edges from `user`.
    public var roots: UInt64
    /// CLIENT spans whose SERVER span never came: edges to an uninstrumented callee.
    public var unpairedClients: UInt64
    /// SERVER spans whose CLIENT span never came: edges from an unknown caller.
    public var unpairedServers: UInt64
    /// Halves that left early because the pairing room was full (counted unpaired as well).
    public var evicted: UInt64
    /// Partners that arrived after their half had left unpaired (not counted again).
    public var late: UInt64
    /// Halves waiting now.
    public var pending: Int
    /// Distinct series counted since the process started.
    public var series: Int
}

/// Workloads and the edges between them over a window.
public struct ServiceGraph: Sendable {
    public struct Edge: Sendable, Comparable {
        public var client: Workload
        public var server: Workload
        public var connection: ConnectionType
        public var signals: Signals

        public static func < (lhs: Edge, rhs: Edge) -> Bool {
            (lhs.client, lhs.server, lhs.connection) < (rhs.client, rhs.server, rhs.connection)
        }

        public static func == (lhs: Edge, rhs: Edge) -> Bool {
            lhs.client == rhs.client && lhs.server == rhs.server && lhs.connection == rhs.connection && lhs.signals == rhs.signals
        }
    }

    public var window: ClosedRange<UInt64>
    /// Workloads that sent spans, sorted.
    public var nodes: [Workload]
    /// Services that only appear at the far end of an edge: `user`, `unknown`, and
    /// callees without a sidecar named from their peer attributes.
    public var virtualNodes: [String]
    /// In no particular order.
    public var edges: [Edge]

    /// Requests over an edge as proxies' OTLP metrics report them.
    public struct ReportedEdge: Sendable {
        public var client: Workload
        public var server: Workload
        /// Which proxy reported: `source` or `destination` (Istio's `reporter`).
        public var reporter: String
        public var signals: Signals
    }

    public var reported: [ReportedEdge] = []
}
