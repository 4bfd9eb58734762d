import Compression
import Foundation
import MeshCore
import OTLPWire
import Synchronization

/// The span store of one data directory: a write-ahead log, an in-memory head
/// block, and sealed segments.
///
/// Spans are acknowledged only once their WAL record is synced (fdatasync). The head block is
/// sealed into a segment when it reaches `maxHeadSpans` or `maxHeadAge`, or when
/// asked (at shutdown). A crash at any instant leaves a store that reopens with
/// every acknowledged span exactly once: a segment records the last WAL file it
/// covers, and reopening replays only the WAL files after it.
public final class SpanStore: Sendable {
    /// How the store is laid out and when it seals.
    public struct Configuration: Sendable {
        /// The data directory; `wal/` and `segments/` live inside it.
        public var dataDirectory: String
        /// Seal the head block once it holds this many spans.
        public var maxHeadSpans: Int = 200_000
        /// Seal the head block once its oldest span arrived this long ago.
        public var maxHeadAge: Duration = .seconds(300)
        /// zstd level for column chunks.
        public var compressionLevel: Int32 = Zstd.defaultLevel
        /// Spans per segment block: a trace lookup decodes up to one block.
        public var blockSpans: Int = SegmentWriter.defaultBlockSpans
        /// The least time between the starts of two WAL syncs. Zero syncs as soon as a
        /// request waits (each sync covering every request written meanwhile); more
        /// makes fewer syncs, and requests wait up to this long more for their answer.
        public var walSyncInterval: Duration = .zero
        /// Open without writing anything (for `meshtrace … --data-dir` next to a running collector).
        public var readOnly: Bool = false
        /// Delete segments whose newest span ended longer ago than this; nil keeps them.
        public var retention: Duration?
        /// Delete the oldest segments while all segments together exceed this many bytes; nil for no limit.
        public var maxSegmentBytes: Int?
        /// Segments with fewer spans than this are merged by compaction.
        public var compactionTargetSpans: Int = 400_000
        /// The most spans one compaction reads into memory at once (about 400 bytes each).
        public var compactionMaxSpans: Int = 800_000

        public init(dataDirectory: String) {
            self.dataDirectory = dataDirectory
        }
    }

    /// Something found wrong while opening the store; the rest stays usable.
    public struct Problem: Sendable, CustomStringConvertible {
        public var file: String
        public var reason: String
        public var description: String { "\(file): \(reason)" }
    }

    /// What queries read: the head block, blocks being sealed, and sealed segments.
    public struct Snapshot: Sendable {
        /// Spans not yet in a segment.
        public var unsealed: [SpanBatch]
        public var segments: [SegmentReader]
    }

    public let configuration: Configuration
    /// Problems found when the store was opened.
    public let problems: [Problem]
    /// Fed every logged record and checkpointed at each seal.
    private let follower: (any WALFollower)?
    /// Decides which logged spans reach the head block; without one, all do.
    private let admission: (any SpanAdmission)?

    private struct State: Sendable {
        var head = SpanBatch()
        /// When the first record of the current WAL file (spans for the head block, or metrics) arrived.
        var headSince: ContinuousClock.Instant?
        /// Blocks taken from the head whose segment is being written.
        var sealing: [SpanBatch] = []
        var segments: [SegmentReader] = []
    }

    private let state: Mutex<State>
    /// Held shared by requests from their WAL record until their spans are in the head
    /// block (or the sampler), alone by a seal.
    private let gate = IngestGate()
    /// The log.
    private let wal: Mutex<WriteAheadLog?>
    private let commit: GroupCommit
    /// Held while a seal runs, so seals never overlap.
    private let sealLock = Mutex(())
    /// Held while a compaction runs.
    private let compactionLock = Mutex(())

    /// Attribute and extras bytes reserved per span of a new head block (MeshSim's
    /// Envoy-like spans carry about 400 bytes of attributes).
    static let reservedBytesPerSpan = 512
    /// The most spans a new head block reserves room for (128 MiB of attributes),
    /// whatever `maxHeadSpans` says.
    static let maxReservedSpans = 1 << 18

    private var walDirectory: String { configuration.dataDirectory + "/wal" }
    private var segmentDirectory: String { configuration.dataDirectory + "/segments" }

    /// Opens (or creates) the store, replaying the WAL into the head block (through
    /// `admission`, when given) and into `follower` (the files after those it covers).
    public init(
        configuration: Configuration, follower: (any WALFollower)? = nil, admission: (any SpanAdmission)? = nil
    ) throws(StoreError) {
        self.configuration = configuration
        self.follower = follower
        self.admission = admission
        commit = GroupCommit(minimumInterval: configuration.walSyncInterval)
        let walDirectory = configuration.dataDirectory + "/wal"
        let segmentDirectory = configuration.dataDirectory + "/segments"
        if !configuration.readOnly {
            try FileIO.makeDirectory(walDirectory)
            try FileIO.makeDirectory(segmentDirectory)
        }
        var problems: [Problem] = []
        var state = State()

        var coveredSequence: UInt64 = 0
        if FileIO.exists(segmentDirectory) {
            for name in try FileIO.list(segmentDirectory) {
                let path = segmentDirectory + "/" + name
                if name.hasSuffix(".tmp") {
                    if !configuration.readOnly { try FileIO.remove(path) }
                    continue
                }
                guard name.hasSuffix(SegmentFile.fileExtension) else {
                    problems.append(Problem(file: path, reason: "not a segment file; ignored"))
                    continue
                }
                do {
                    let reader = try SegmentReader(path: path)
                    coveredSequence = max(coveredSequence, reader.footer.walSequence)
                    state.segments.append(reader)
                } catch {
                    if configuration.readOnly {
                        problems.append(Problem(file: path, reason: "\(error); skipped"))
                    } else {
                        try Self.moveToQuarantine(path, dataDirectory: configuration.dataDirectory)
                        problems.append(Problem(file: path, reason: "\(error); moved to quarantine/"))
                    }
                }
            }
        }

        // A compaction that renamed its output but crashed before deleting its inputs
        // left them behind: the output's footer names them.
        let replaced = Set(state.segments.flatMap(\.footer.replaces))
        for segment in state.segments where replaced.contains(Self.fileName(segment.path)) {
            if !configuration.readOnly { try FileIO.remove(segment.path) }
        }
        state.segments.removeAll { replaced.contains(Self.fileName($0.path)) }

        let followerCovered = follower?.coveredSequence ?? UInt64.max
        // A new WAL file must come after every file a segment or the follower covers.
        var lastSequence = max(coveredSequence, followerCovered == .max ? 0 : followerCovered)
        if FileIO.exists(walDirectory) {
            for name in try FileIO.list(walDirectory).sorted() {
                guard let sequence = WriteAheadLog.sequence(fromFileName: name) else { continue }
                let path = walDirectory + "/" + name
                lastSequence = max(lastSequence, sequence)
                let toHead = sequence > coveredSequence
                let toFollower = sequence > followerCovered
                if !toHead && !toFollower {
                    // Without a follower the store cannot tell whether one still needs the
                    // file (a tool opened the directory): it stays for the collector.
                    if !configuration.readOnly && follower != nil { try FileIO.remove(path) }
                    continue
                }
                let replay = try WriteAheadLog.replay(path: path)
                for record in replay.records {
                    switch record.type {
                    case .traceExport, .heldSpans:
                        guard let export = try? DecodedTraceExport(protobuf: Array(record.body)) else {
                            problems.append(Problem(file: path, reason: "a record holds an undecodable request; skipped"))
                            continue
                        }
                        if toHead { Self.admit(export, through: admission, into: &state.head) }
                        if toFollower && record.type == .traceExport { follower?.follow(export) }
                    case .metricsExport:
                        guard toFollower, let follower else { continue }
                        guard let request = try? ExportMetricsServiceRequest(serializedBytes: Array(record.body)) else {
                            problems.append(Problem(file: path, reason: "a record holds an undecodable metrics request; skipped"))
                            continue
                        }
                        follower.follow(metrics: request)
                    }
                }
                if let damage = replay.damage {
                    problems.append(Problem(file: path, reason: "\(damage); \(replay.damagedTailBytes) trailing bytes ignored"))
                    if !configuration.readOnly { try FileIO.truncate(path, to: replay.validLength) }
                }
            }
        }
        if !state.head.isEmpty { state.headSince = .now }
        self.state = Mutex(state)
        self.problems = problems
        if configuration.readOnly {
            wal = Mutex(nil)
        } else {
            wal = Mutex(try WriteAheadLog(directory: walDirectory, sequence: lastSequence + 1))
        }
    }

    /// Makes the valid spans of a decoded export request durable and queryable; its
    /// protobuf bytes are what the WAL logs.
    ///
    /// - Returns: how many spans were accepted and refused. Nothing is logged when
    ///   every span is refused.
    public func append(_ export: DecodedTraceExport) throws(StoreError) -> IngestOutcome {
        let outcome = export.outcome
        guard outcome.accepted > 0 else { return outcome }
        // Logged under the log's lock, then counted and sampled beside other requests
        // (the follower and the sampler shard their work by trace id); queryable once in
        // the head block, and acknowledged once synced, in a group with the requests
        // written meanwhile.
        let ticket = try gate.shared { () throws(StoreError) -> UInt64 in
            let ticket = try wal.withLock { (log: inout WriteAheadLog?) throws(StoreError) -> UInt64 in
                guard let log else { throw .readOnly }
                return try log.write(type: .traceExport, body: export.encoded)
            }
            follower?.follow(export)
            if let admission {
                var kept = SpanBatch()
                admission.admit(export.spans, facts: export.facts, now: Self.monotonicNow(), into: &kept)
                addToHead(kept, logged: true)
            } else {
                addToHead(export.spans, logged: true)
            }
            return ticket
        }
        try waitUntilDurable(ticket)
        return outcome
    }

    /// Puts spans into the head block; `logged` when a WAL record came with them, which
    /// starts the head block's age.
    private func addToHead(_ spans: SpanBatch, logged: Bool) {
        state.withLock { state in
            if logged { state.headSince = state.headSince ?? .now }
            guard !spans.isEmpty else { return }
            if state.head.isEmpty {
                // Room for a full head block up front: growing its columns by doubling
                // would copy them, and fault their pages in, again and again. Pages
                // reserved but not written cost no memory.
                state.head.reserveCapacity(
                    min(configuration.maxHeadSpans, Self.maxReservedSpans), bytesPerSpan: Self.reservedBytesPerSpan)
            }
            state.head.append(contentsOf: spans)
        }
    }

    /// Makes an OTLP metrics export request durable in the WAL; `encoded` is its
    /// protobuf bytes, which the WAL logs.
    public func appendMetrics(_ request: ExportMetricsServiceRequest, encoded: [UInt8]) throws(StoreError) {
        let ticket = try gate.shared { () throws(StoreError) -> UInt64 in
            let ticket = try wal.withLock { (log: inout WriteAheadLog?) throws(StoreError) -> UInt64 in
                guard let log else { throw .readOnly }
                return try log.write(type: .metricsExport, body: encoded)
            }
            follower?.follow(metrics: request)
            addToHead(SpanBatch(), logged: true)
            return ticket
        }
        try waitUntilDurable(ticket)
    }

    /// Monotonic nanoseconds, the clock a sampler's waits run on.
    public static func monotonicNow() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    private static func admit(_ export: DecodedTraceExport, through admission: (any SpanAdmission)?, into head: inout SpanBatch) {
        if let admission {
            admission.admit(export.spans, facts: export.facts, now: monotonicNow(), into: &head)
        } else {
            head.append(contentsOf: export.spans)
        }
    }

    /// Moves the spans of traces whose sampling decision came due into the head block.
    public func releaseDecided() {
        guard let admission else { return }
        // Inside the gate: a seal must not fall between the sampler letting spans go
        // and the head block taking them, or neither would hand them on.
        gate.shared {
            var kept = SpanBatch()
            admission.release(now: Self.monotonicNow(), into: &kept)
            addToHead(kept, logged: false)
        }
    }

    private func waitUntilDurable(_ ticket: UInt64) throws(StoreError) {
        try commit.waitUntilDurable(ticket) { () throws(StoreError) -> UInt64 in
            let target = try wal.withLock { (log: inout WriteAheadLog?) throws(StoreError) in
                guard let log else { throw StoreError.readOnly }
                return try log.syncTarget()
            }
            defer { close(target.fd) }
            try FileIO.syncData(fd: target.fd, path: target.path)
            return target.upTo
        }
    }

    /// What the WAL has done since the store opened: records and bytes appended,
    /// syncs run and the seconds spent in them.
    public var walStatistics: (records: UInt64, bytes: UInt64, syncs: Int, syncSeconds: Double) {
        let (records, bytes) = wal.withLock { log in (log?.recordsWritten ?? 0, log?.bytesWritten ?? 0) }
        let (syncs, time) = commit.statistics
        return (records, bytes, syncs, Double(time.components.seconds) + Double(time.components.attoseconds) * 1e-18)
    }

    /// Whether the head block has reached its size or age limit (or, with no spans,
    /// the WAL has held metrics that long).
    public var headIsDue: Bool {
        state.withLock { state in
            guard let since = state.headSince else { return false }
            return state.head.count >= configuration.maxHeadSpans || since.duration(to: .now) >= configuration.maxHeadAge
        }
    }

    /// Seals whatever the head block holds into a new segment, checkpoints the WAL
    /// follower, then drops the WAL files both cover. Does nothing when the current
    /// WAL file holds no records. Spans the sampler still holds are logged again in
    /// the new WAL file first — or, with `decidingHeld` (at shutdown), decided now.
    public func seal(decidingHeld: Bool = false) throws {
        try sealLock.withLock { _ in
            typealias Taken = (batch: SpanBatch, sequence: UInt64, checkpoint: (@Sendable () throws -> Void)?, carried: Bool)
            // With the gate held alone, every record in the WAL has been followed and sampled.
            let taken: Taken? = try gate.exclusive { () throws -> Taken? in try wal.withLock { (log: inout WriteAheadLog?) throws -> Taken? in
                guard let log else { throw StoreError.readOnly }
                return try state.withLock { (state: inout State) throws -> Taken? in
                    if decidingHeld { admission?.releaseAll(now: Self.monotonicNow(), into: &state.head) }
                    guard !state.head.isEmpty || log.fileSize > WriteAheadLog.fileMagic.count else { return nil }
                    let sequence = log.sequence
                    try log.rotate()
                    commit.markDurable(upTo: log.recordsWritten)
                    let batch = state.head
                    state.head = SpanBatch()
                    state.headSince = nil
                    if !batch.isEmpty { state.sealing.append(batch) }
                    let carried = try carryHeldSpans(into: log)
                    if carried { state.headSince = .now }
                    return (batch, sequence, follower?.checkpoint(upTo: sequence), carried)
                }
            } }
            guard let (batch, sequence, checkpoint, carried) = taken else { return }
            if carried {
                // The carried spans must be durable before the file they came from goes.
                let target = try wal.withLock { (log: inout WriteAheadLog?) throws(StoreError) in
                    guard let log else { throw StoreError.readOnly }
                    return try log.syncTarget()
                }
                defer { close(target.fd) }
                try FileIO.syncData(fd: target.fd, path: target.path)
            }
            // The follower's checkpoint stands on its own: when the segment fails, the
            // WAL file stays and a restart replays it into the head block alone.
            var segmentError: (any Error)?
            if !batch.isEmpty {
                do { try writeSegment(batch, sequence: sequence) } catch { segmentError = error }
            }
            try checkpoint?()
            if let segmentError { throw segmentError }
            for file in try FileIO.list(walDirectory) {
                if let walSequence = WriteAheadLog.sequence(fromFileName: file), walSequence <= sequence {
                    try FileIO.remove(walDirectory + "/" + file)
                }
            }
        }
    }

    /// Logs the spans the sampler holds into the (new) WAL file, in records of at most
    /// `heldSpansPerRecord` spans. Returns whether there were any.
    private func carryHeldSpans(into log: WriteAheadLog) throws -> Bool {
        guard let held = admission?.held(), !held.isEmpty else { return false }
        var start = 0
        while start < held.count {
            let rows = Array(start..<min(held.count, start + Self.heldSpansPerRecord))
            _ = try log.write(type: .heldSpans, body: try held.exportRequestBytes(rows: rows))
            start += rows.count
        }
        return true
    }

    /// Spans per carried-forward WAL record (about 10 MiB of MeshSim spans).
    static let heldSpansPerRecord = 20_000

    private func writeSegment(_ batch: SpanBatch, sequence: UInt64) throws {
        let path = segmentDirectory + "/" + Self.segmentFileName(prefix: "seg", sequence: sequence)
        do {
            try SegmentWriter.write(
                batch, walSequence: sequence, to: path, level: configuration.compressionLevel, blockSpans: configuration.blockSpans)
            let reader = try SegmentReader(path: path)
            state.withLock { state in
                state.sealing.removeFirst()
                state.segments.append(reader)
            }
        } catch {
            // The WAL still holds these spans; put them back so they stay
            // queryable and are sealed with the next block.
            state.withLock { state in
                state.sealing.removeFirst()
                var restored = batch
                restored.append(contentsOf: state.head)
                state.head = restored
                state.headSince = state.headSince ?? .now
            }
            throw error
        }
    }

    /// Deletes the segments that retention no longer keeps: those that ended before
    /// `now − retention`, then the oldest while the total exceeds `maxSegmentBytes`.
    /// A segment leaves the query path before its file is deleted, so a crash at any
    /// point leaves it either whole or gone.
    ///
    /// - Parameter now: nanoseconds since the Unix epoch.
    /// - Returns: the paths deleted.
    @discardableResult
    public func enforceRetention(now: UInt64) throws(StoreError) -> [String] {
        guard !configuration.readOnly else { throw .readOnly }
        let expired: [SegmentReader] = state.withLock { state in
            var byAge = state.segments.sorted { $0.footer.maxEndTime < $1.footer.maxEndTime }
            var doomed: [SegmentReader] = []
            if let retention = configuration.retention {
                let keep = UInt64(max(0, retention.components.seconds)) * 1_000_000_000
                    + UInt64(max(0, retention.components.attoseconds) / 1_000_000_000)
                let cutoff = now > keep ? now - keep : 0
                while let oldest = byAge.first, oldest.footer.maxEndTime < cutoff {
                    doomed.append(byAge.removeFirst())
                }
            }
            if let limit = configuration.maxSegmentBytes {
                var total = byAge.reduce(0) { $0 + $1.fileSize }
                while total > limit, !byAge.isEmpty {
                    let oldest = byAge.removeFirst()
                    total -= oldest.fileSize
                    doomed.append(oldest)
                }
            }
            let paths = Set(doomed.map(\.path))
            state.segments.removeAll { paths.contains($0.path) }
            return doomed
        }
        for segment in expired { try FileIO.remove(segment.path) }
        if !expired.isEmpty { try FileIO.syncDirectory(segmentDirectory) }
        return expired.map(\.path)
    }

    /// Merges the oldest segments smaller than `compactionTargetSpans` — at most
    /// `compactionMaxSpans` spans in all — into one. The output is written to a
    /// temporary file, fsynced and renamed; its footer names the inputs, which are
    /// then deleted. A crash before the rename leaves the inputs; after it, opening
    /// the store deletes any input still present. No span is lost or stored twice.
    ///
    /// - Returns: the inputs merged, or an empty list when fewer than two qualify.
    @discardableResult
    public func compact() throws -> [String] {
        guard !configuration.readOnly else { throw StoreError.readOnly }
        return try compactionLock.withLock { _ in
            let candidates = state.withLock { state in
                state.segments.filter { $0.footer.spanCount < configuration.compactionTargetSpans }
                    .sorted { $0.footer.minStartTime < $1.footer.minStartTime }
            }
            var inputs: [SegmentReader] = []
            var spans = 0
            for candidate in candidates where spans + candidate.footer.spanCount <= configuration.compactionMaxSpans {
                inputs.append(candidate)
                spans += candidate.footer.spanCount
            }
            guard inputs.count >= 2 else { return [] }

            var merged = SpanBatch()
            merged.reserveCapacity(spans)
            for input in inputs { merged.append(contentsOf: try input.readBatch()) }
            let sequence = inputs.map(\.footer.walSequence).max() ?? 0
            let names = inputs.map { Self.fileName($0.path) }
            let suffix = String(UInt32.random(in: 0...UInt32.max), radix: 16)
            let output = segmentDirectory + "/" + Self.segmentFileName(prefix: "cmp", sequence: sequence, tag: suffix)
            try SegmentWriter.write(
                merged, walSequence: sequence, replaces: names, to: output, level: configuration.compressionLevel,
                blockSpans: configuration.blockSpans)
            let reader = try SegmentReader(path: output)
            let inputPaths = Set(inputs.map(\.path))
            state.withLock { state in
                state.segments.removeAll { inputPaths.contains($0.path) }
                state.segments.append(reader)
            }
            for input in inputs { try FileIO.remove(input.path) }
            try FileIO.syncDirectory(segmentDirectory)
            return inputs.map(\.path)
        }
    }

    /// Whether enough small segments have gathered for a compaction to be worth it.
    public var compactionIsDue: Bool {
        state.withLock { state in
            state.segments.filter { $0.footer.spanCount < configuration.compactionTargetSpans }.count >= 4
        }
    }

    /// `<prefix>-<16 hex digits of the WAL sequence>[-<tag>].mts`.
    private static func segmentFileName(prefix: String, sequence: UInt64, tag: String? = nil) -> String {
        let hex = String(sequence, radix: 16)
        return prefix + "-" + String(repeating: "0", count: max(0, 16 - hex.count)) + hex
            + (tag.map { "-" + $0 } ?? "") + SegmentFile.fileExtension
    }

    private static func fileName(_ path: String) -> String {
        path.split(separator: "/").last.map(String.init) ?? path
    }

    /// Takes a segment found damaged out of service: queries stop reading it, and
    /// (unless read-only) the file moves to `quarantine/` for inspection.
    public func quarantine(_ path: String) throws(StoreError) {
        let removed = state.withLock { state in
            let before = state.segments.count
            state.segments.removeAll { $0.path == path }
            return state.segments.count < before
        }
        if removed && !configuration.readOnly {
            try Self.moveToQuarantine(path, dataDirectory: configuration.dataDirectory)
        }
    }

    private static func moveToQuarantine(_ path: String, dataDirectory: String) throws(StoreError) {
        let folder = dataDirectory + "/quarantine"
        try FileIO.makeDirectory(folder)
        try FileIO.move(path, to: folder + "/" + fileName(path))
    }

    /// The current head, blocks being sealed, and segments, for a query to read.
    public func snapshot() -> Snapshot {
        state.withLock { state in
            Snapshot(unsealed: state.sealing + (state.head.isEmpty ? [] : [state.head]), segments: state.segments)
        }
    }

    /// The sealed segments, without sharing the head block (which a later append would then copy).
    public var sealedSegments: [SegmentReader] {
        state.withLock { $0.segments }
    }

    /// Number of spans in the head block and blocks being sealed.
    public var unsealedSpanCount: Int {
        state.withLock { state in state.head.count + state.sealing.reduce(0) { $0 + $1.count } }
    }
}
