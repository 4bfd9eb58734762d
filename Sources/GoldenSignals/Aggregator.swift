import Foundation
import MeshCore
import OTLPWire

/// Golden signals from spans, before any sampling: RED per operation and per edge in
/// time buckets, and the pairing of CLIENT and SERVER spans into edges. Not
/// thread-safe; `GoldenSignals` guards it.
struct Aggregator {
    struct Settings {
        /// Bucket width, nanoseconds.
        var bucketNanos: UInt64 = 10_000_000_000
        var pairing = EdgePairer.Settings()
    }

    let settings: Settings
    private var workloadTable = Interner<Workload>()
    private var peerIDs: [String: Int32] = [:]
    private var seriesTable = Interner<SeriesKey>()
    /// Workloads by id.
    var workloads: [Workload] { workloadTable.values }
    /// Series by id.
    var series: [SeriesKey] { seriesTable.values }
    private var operationIDs: [OperationCacheKey: Int32] = [:]
    /// What each span looks up, by `byteHash` of the name and what goes with it:
    /// the id, and the name it stands for (checked on every hit, so two names whose
    /// bits collide fall back to the dictionaries above).
    private var operationsByBits = IDMap<UInt64, (id: Int32, workload: Int32, kind: SpanKind, name: String)>()
    private var peersByBits = IDMap<UInt64, (id: Int32, name: String)>()
    private var edgeIDs = IDMap<EdgeCacheKey, Int32>()
    /// Signals counted since the last checkpoint, by bucket start and series id.
    private(set) var delta = BucketedSignals()
    /// Everything counted since the process started, for Prometheus, by series id.
    private(set) var totals: [PrometheusTotals] = []

    struct BucketSeriesID: Hashable, IDMapKey {
        var bucket: UInt64
        var series: Int32

        static var zero: BucketSeriesID { BucketSeriesID(bucket: 0, series: 0) }

        var mixedBits: UInt64 {
            (bucket ^ UInt64(UInt32(bitPattern: series)) &* 0xC2B2_AE3D_27D4_EB4F) &* 0x9E37_79B9_7F4A_7C15
        }
    }
    private(set) var pairer: EdgePairer
    /// Operation ids by the bits of span names, across batches.
    private var operations = OperationMemo()
    /// Proxies' OTLP metrics, folded into `.reported` series.
    var metrics: ProxyMetricsFolder

    init(settings: Settings = Settings(), collectingSince: UInt64 = 0) {
        self.settings = settings
        pairer = EdgePairer(settings: settings.pairing)
        metrics = ProxyMetricsFolder(collectingSince: collectingSince)
        // Virtual workloads have fixed ids.
        _ = workloadID(.user)
        _ = workloadID(.unknown)
    }

    private struct OperationCacheKey: Hashable {
        var workload: Int32
        var kind: SpanKind
        var name: String
    }

    private struct EdgeCacheKey: IDMapKey {
        var client: Int32
        var server: Int32
        var connection: ConnectionType

        static var zero: EdgeCacheKey { EdgeCacheKey(client: 0, server: 0, connection: .unset) }

        var mixedBits: UInt64 {
            let pair = UInt64(UInt32(bitPattern: client)) << 32 | UInt64(UInt32(bitPattern: server))
            return (pair ^ UInt64(connection.rawValue) &* 0xC2B2_AE3D_27D4_EB4F).mixedBits
        }
    }

    /// The virtual workload a peer name stands for.
    private mutating func peerID(_ name: String) -> Int32 {
        if let id = peerIDs[name] { return id }
        let id = workloadID(Workload(service: name))
        peerIDs[name] = id
        return id
    }

    /// The virtual workload the peer name at `bytes[range]` stands for.
    private mutating func peerID(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> Int32 {
        let name = UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: bytes[range]))
        let bits = byteHash(name)
        if let cached = peersByBits[bits], Self.equal(cached.name, name) { return cached.id }
        let text = String(bytes, range)
        let id = peerID(text)
        if peersByBits[bits] == nil { peersByBits[bits] = (id, text) }
        return id
    }

    private static func equal(_ text: String, _ bytes: UnsafeRawBufferPointer) -> Bool {
        text.utf8.withContiguousStorageIfAvailable { utf8 in
            utf8.count == bytes.count && (bytes.isEmpty || memcmp(utf8.baseAddress!, bytes.baseAddress!, bytes.count) == 0)
        } ?? text.utf8.elementsEqual(bytes)
    }

    mutating func workloadID(_ workload: Workload) -> Int32 { workloadTable.id(workload) }

    mutating func seriesID(_ key: SeriesKey) -> Int32 { seriesTable.id(key) }

    private mutating func operationID(workload: Int32, kind: SpanKind, name: String) -> Int32 {
        let seed = UInt64(UInt32(bitPattern: workload)) << 8 | UInt64(kind.rawValue)
        let bits = name.utf8.withContiguousStorageIfAvailable { byteHash(UnsafeRawBufferPointer($0), seed: seed) }
        if let bits, let cached = operationsByBits[bits], cached.workload == workload, cached.kind == kind, cached.name == name {
            return cached.id
        }
        let cacheKey = OperationCacheKey(workload: workload, kind: kind, name: name)
        let id: Int32
        if let known = operationIDs[cacheKey] {
            id = known
        } else {
            id = seriesID(.operation(workloads[Int(workload)], kind: kind, name: name))
            operationIDs[cacheKey] = id
        }
        if let bits, operationsByBits[bits] == nil { operationsByBits[bits] = (id, workload, kind, name) }
        return id
    }

    private mutating func edgeID(client: Int32, server: Int32, connection: ConnectionType) -> Int32 {
        let cacheKey = EdgeCacheKey(client: client, server: server, connection: connection)
        if let id = edgeIDs[cacheKey] { return id }
        let id = seriesID(.edge(client: workloads[Int(client)], server: workloads[Int(server)], connection: connection))
        edgeIDs[cacheKey] = id
        return id
    }

    /// Counts every span of `batch`, whose facts are `facts` (row for row); `now` is
    /// a monotonic clock in nanoseconds that times the pairing window.
    mutating func ingest(_ batch: SpanBatch, facts: [RequestFacts], now: UInt64) {
        ingest(batch, facts: facts, rows: 0..<batch.count, now: now)
    }

    /// Counts the spans of `batch` at `rows`.
    mutating func ingest<Rows: RandomAccessCollection<Int>>(
        _ batch: SpanBatch, facts: [RequestFacts], rows: Rows, now: UInt64
    ) where Rows.Index == Int {
        precondition(facts.count == batch.count, "one RequestFacts per span")
        let resourceWorkloads = batch.resources.map { workloadID(ResourceFacts.workload(of: $0)) }
        let bucketNanos = settings.bucketNanos
        /// Where the span at `row` waits for its partner: a CLIENT span under its own
        /// id, a SERVER span under its parent's; nil for a root or an internal span.
        func pairingKey(_ row: Int) -> EdgePairer.Key? {
            switch batch.kinds[row] {
            case .client, .producer: return EdgePairer.Key(trace: batch.traceIDs[row], span: batch.spanIDs[row])
            case .server, .consumer:
                let parent = batch.parentSpanIDs[row]
                return parent == .zero ? nil : EdgePairer.Key(trace: batch.traceIDs[row], span: parent)
            case .internal, .unspecified: return nil
            }
        }
        // The pairing room outgrows the cache when partners arrive far apart (each
        // proxy batches its own spans): its slots are fetched a few spans ahead.
        let lookahead = 8
        // The memo is taken out while the batch is counted: a miss looks the operation
        // up through `self`.
        var operations = OperationMemo()
        swap(&operations, &self.operations)
        defer { swap(&operations, &self.operations) }
        let first = rows.startIndex
        let end = rows.endIndex
        for index in first..<min(first + lookahead, end) {
            if let key = pairingKey(rows[index]) { pairer.prefetch(key) }
        }
        batch.attributes.bytes.withUnsafeBufferPointer { attributeBytes in
            for index in first..<end {
                let row = rows[index]
                if index + lookahead < end, let key = pairingKey(rows[index + lookahead]) { pairer.prefetch(key) }
                let workload = resourceWorkloads[Int(batch.resourceIndices[row])]
                let kind = batch.kinds[row]
                let facts = facts[row]
                let http = batch.httpStatusCodes[row]
                let failed = batch.statusCodes[row] == .error || http >= 500
                let duration = Signals.Latency(nanoseconds: batch.duration(at: row))
                let end = batch.endTimes[row]
                let request = Signals.Request(
                    failed: failed, clientError: !failed && http >= 400 && http < 500,
                    requestBytes: facts.requestBytes, responseBytes: facts.responseBytes, security: facts.security,
                    duration: duration, serverDuration: nil)
                let operation = operations.id(ofRow: row, in: batch.names, workload: workload, kind: kind) {
                    operationID(workload: workload, kind: kind, name: batch.names[row])
                }
                count(request, series: operation, bucket: end / bucketNanos * bucketNanos)

                switch kind {
                case .client, .producer:
                    let attributesStart = batch.attributes.range(of: row).lowerBound
                    let peer = facts.peer.map { peerID(attributeBytes, $0.lowerBound + attributesStart..<$0.upperBound + attributesStart) } ?? -1
                    let connection: ConnectionType =
                        kind == .producer || facts.messaging ? .messagingSystem : facts.database ? .database : .virtualNode
                    let half = EdgePairer.Half(
                        isClient: true, workload: workload, peer: peer, connection: connection, request: request, end: end)
                    offer(half, key: pairingKey(row)!, now: now)
                case .server, .consumer:
                    let parent = batch.parentSpanIDs[row]
                    let half = EdgePairer.Half(
                        isClient: false, isRoot: parent == .zero, workload: workload, peer: -1,
                        connection: kind == .consumer ? .messagingSystem : .virtualNode, request: request, end: end)
                    if let key = pairingKey(row) {
                        offer(half, key: key, now: now)
                    } else {
                        // The entry of the mesh: its caller is the user, and no CLIENT span will come.
                        pairer.statistics.roots += 1
                        observe(client: nil, server: half)
                    }
                case .internal, .unspecified:
                    break
                }
            }
        }
        expire(now: now)
    }

    private mutating func offer(_ half: EdgePairer.Half, key: EdgePairer.Key, now: UInt64) {
        var other = half
        switch pairer.offer(half, key: key, now: now, other: &other) {
        case .pending, .late:
            break
        case .paired:
            if other.isClient { observe(client: other, server: half) } else { observe(client: half, server: other) }
        case .evicted:
            observe(expired: other)
        }
    }

    /// Counts what a proxy's OTLP metrics report.
    mutating func ingest(metrics request: ExportMetricsServiceRequest) {
        for reported in metrics.fold(request) {
            let id = seriesID(reported.key)
            let bucket = reported.bucketTime / settings.bucketNanos * settings.bucketNanos
            delta.modify(bucket: bucket, series: id) { $0.merge(reported.signals) }
        }
    }

    /// Counts the halves whose pairing window has passed as edges to or from a virtual workload.
    mutating func expire(now: UInt64) {
        while let half = pairer.popExpired(now: now) { observe(expired: half) }
    }

    private mutating func observe(expired half: EdgePairer.Half) {
        if half.isClient {
            observe(client: half, server: nil)
        } else {
            observe(client: nil, server: half)
        }
    }

    /// One request over an edge; a missing side is a virtual workload.
    private mutating func observe(client: EdgePairer.Half?, server: EdgePairer.Half?) {
        let clientID: Int32
        let serverID: Int32
        var connection: ConnectionType
        var request: Signals.Request
        let end: UInt64
        switch (client, server) {
        case let (client?, server?):
            clientID = client.workload
            serverID = server.workload
            connection = client.connection == .messagingSystem || server.connection == .messagingSystem ? .messagingSystem : .unset
            request = client.request
            request.failed = client.request.failed || server.request.failed
            request.clientError = !request.failed && (client.request.clientError || server.request.clientError)
            if request.requestBytes == 0 { request.requestBytes = server.request.requestBytes }
            if request.responseBytes == 0 { request.responseBytes = server.request.responseBytes }
            if server.request.security != .unknown { request.security = server.request.security }
            request.serverDuration = server.request.duration
            end = client.end
        case let (client?, nil):
            clientID = client.workload
            serverID = client.peer >= 0 ? client.peer : workloadID(.unknown)
            connection = client.connection
            request = client.request
            end = client.end
        case let (nil, server?):
            clientID = workloadID(pairerRootCaller(server))
            serverID = server.workload
            connection = server.connection
            request = server.request
            request.serverDuration = server.request.duration
            request.duration = nil
            end = server.end
        case (nil, nil):
            return
        }
        if connection == .unset, client == nil || server == nil { connection = .virtualNode }
        let edge = edgeID(client: clientID, server: serverID, connection: connection)
        count(request, series: edge, bucket: end / settings.bucketNanos * settings.bucketNanos)
    }

    /// The caller of an unpaired SERVER span: `user` at the entry (it has no parent), `unknown` otherwise.
    private func pairerRootCaller(_ server: EdgePairer.Half) -> Workload {
        server.isRoot ? .user : .unknown
    }

    private mutating func count(_ request: Signals.Request, series: Int32, bucket: UInt64) {
        delta.modify(bucket: bucket, series: series) { $0.count(request) }
        let index = Int(series)
        if index >= totals.count { totals.append(contentsOf: repeatElement(PrometheusTotals(), count: index + 1 - totals.count)) }
        totals[index].count(request)
    }

    /// Takes the signals counted since the last call, leaving none.
    mutating func takeDelta() -> [BucketedSeries: Signals] {
        var taken: [BucketedSeries: Signals] = [:]
        taken.reserveCapacity(delta.count)
        delta.forEach { key, signals in taken[BucketedSeries(bucket: key.bucket, series: series[Int(key.series)])] = signals }
        delta = BucketedSignals()
        return taken
    }

    /// Puts back signals taken by `takeDelta` (a checkpoint that failed).
    mutating func restore(_ taken: [BucketedSeries: Signals]) {
        for (key, signals) in taken {
            let id = seriesID(key.series)
            delta.modify(bucket: key.bucket, series: id) { $0.merge(signals) }
        }
    }

    /// The halves waiting for their partner, with workloads spelled out, for a checkpoint.
    func pendingHalves(now: UInt64) -> [PendingHalf] {
        pairer.pending.entries.map { key, half in
            PendingHalf(
                key: key, workload: workloads[Int(half.workload)],
                peer: half.peer >= 0 ? workloads[Int(half.peer)].service : "", half: half,
                age: now >= half.arrival ? now - half.arrival : 0,
                remaining: half.deadline > now ? half.deadline - now : 0)
        }
    }

    /// Takes back halves a checkpoint saved.
    mutating func restorePending(_ halves: [PendingHalf], now: UInt64) {
        for saved in halves {
            var half = saved.half
            half.workload = workloadID(saved.workload)
            half.peer = saved.peer.isEmpty ? -1 : peerID(saved.peer)
            half.arrival = now >= saved.age ? now - saved.age : 0
            half.deadline = now + saved.remaining
            pairer.restore(half, key: saved.key)
        }
    }
}

/// A half waiting for its partner, as a checkpoint stores it.
struct PendingHalf {
    var key: EdgePairer.Key
    var workload: Workload
    /// The peer's name (empty for none).
    var peer: String
    var half: EdgePairer.Half
    /// Nanoseconds since it arrived, and left until its window closes.
    var age: UInt64
    var remaining: UInt64
}

/// The operation ids of spans, found by the bits of the span name's `String` value.
/// The decoder gives the spans that share a name one string, request after request
/// (`SpanNames`), and a short name is held in those bits whole, so most spans find
/// their operation without hashing or comparing the name's text. Equal bits mean
/// equal strings only while the string lives: each entry holds its string, so the
/// memory its bits point to cannot be freed and reused for another, and the memo
/// lasts as long as the aggregator (whose operation ids never change).
struct OperationMemo {
    private struct Entry {
        var first: UInt64 = 0
        var second: UInt64 = 0
        var workload: Int32 = 0
        var kind: SpanKind = .unspecified
        /// -1 for an empty entry.
        var id: Int32 = -1
        /// Held, never read: it keeps `first` and `second` this string's alone.
        var name = ""
    }

    /// The memo holds 2^slotBits entries, one per slot the key's top bits choose.
    private static let slotBits: UInt64 = 6
    private static let bitsAreTheValue = MemoryLayout<String>.size == 16 && MemoryLayout<String>.stride == 16
    /// Empty until the first lookup, so that an unused memo costs nothing.
    private var entries: [Entry] = []

    /// The operation of the span at `row`, whose name is `names[row]`; `find` looks
    /// it up when the memo does not hold it.
    mutating func id(
        ofRow row: Int, in names: [String], workload: Int32, kind: SpanKind, orFind find: () -> Int32
    ) -> Int32 {
        guard Self.bitsAreTheValue else { return find() }
        if entries.isEmpty { entries = [Entry](repeating: Entry(), count: 1 << OperationMemo.slotBits) }
        let (first, second) = names.withUnsafeBytes { $0.load(fromByteOffset: row * 16, as: (UInt64, UInt64).self) }
        let mixed = (first ^ second &* 0xC2B2_AE3D_27D4_EB4F ^ UInt64(UInt32(bitPattern: workload)) << 8 ^ UInt64(kind.rawValue))
            &* 0x9E37_79B9_7F4A_7C15
        let slot = Int(truncatingIfNeeded: mixed >> (64 - Self.slotBits))
        // Read in place: a copy of the entry would retain and release its name.
        let held: Int32 = entries.withUnsafeBufferPointer { entries in
            let entry = UnsafePointer(entries.baseAddress! + slot)
            guard entry.pointee.id >= 0, entry.pointee.first == first, entry.pointee.second == second,
                  entry.pointee.workload == workload, entry.pointee.kind == kind else { return -1 }
            return entry.pointee.id
        }
        if held >= 0 { return held }
        let id = find()
        entries[slot] = Entry(first: first, second: second, workload: workload, kind: kind, id: id, name: names[row])
        return id
    }
}

/// Per series since the process started, in the shape Prometheus histograms take.
struct PrometheusTotals {
    /// Upper bounds in seconds: those of Tempo's service graph and span metrics.
    static let bounds: [Double] = [0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1, 1.4, 2, 5, 10, 15]

    var requests: UInt64 = 0
    var failed: UInt64 = 0
    var latency = Buckets()
    var serverLatency = Buckets()

    struct Buckets {
        /// Non-cumulative counts per bound, and one more for +Inf: held in line, so
        /// counting a request in a series' totals touches no other allocation.
        var counts = InlineArray<17, UInt64>(repeating: 0)
        /// Summed in nanoseconds: no division waits in each request's count.
        var nanoseconds: Double = 0
        var count: UInt64 = 0

        /// Seconds in all.
        var sum: Double { nanoseconds / 1e9 }

        mutating func record(_ duration: Signals.Latency) {
            counts[Int(duration.prometheusBucket)] += 1
            nanoseconds += Double(duration.nanoseconds)
            count += 1
        }
    }

    /// The bucket a duration falls in: the first whose bound it does not exceed, or
    /// `bounds.count` (+Inf) past them all. Found from the duration's octave, which
    /// holds at most two bounds, without a division or a search.
    static func bucket(ofNanoseconds nanoseconds: UInt64) -> Int {
        let octave = octaves[Int(truncatingIfNeeded: UInt64.bitWidth - nanoseconds.leadingZeroBitCount)]
        return Int(octave.below) + (nanoseconds > octave.first ? 1 : 0) + (nanoseconds > octave.second ? 1 : 0)
    }

    /// Each bound as the most nanoseconds that do not exceed it (`Double(n) / 1e9 <= bound`).
    static let boundNanoseconds: [UInt64] = {
        precondition(bounds.count + 1 == Buckets().counts.count, "a count per bound and one for +Inf")
        return bounds.map { bound in
            var nanoseconds = UInt64((bound * 1e9).rounded(.down))
            while Double(nanoseconds + 1) / 1e9 <= bound { nanoseconds += 1 }
            while nanoseconds > 0 && Double(nanoseconds) / 1e9 > bound { nanoseconds -= 1 }
            return nanoseconds
        }
    }()

    /// By bit length of a duration in nanoseconds (0 through 64): the bounds below the
    /// octave, and the ones within it (`UInt64.max` for none).
    private static let octaves: [(below: UInt8, first: UInt64, second: UInt64)] = (0...UInt64.bitWidth).map { length in
        let low: UInt64 = length == 0 ? 0 : 1 << (length - 1)
        let high: UInt64 = length == 0 ? 0 : length == UInt64.bitWidth ? .max : 1 << length - 1
        let within = boundNanoseconds.filter { $0 >= low && $0 < high }
        precondition(within.count <= 2, "at most two Prometheus bounds in an octave")
        return (UInt8(boundNanoseconds.filter { $0 < low }.count), within.first ?? .max, within.dropFirst().first ?? .max)
    }

    mutating func count(_ request: Signals.Request) {
        requests += 1
        if request.failed { failed += 1 }
        if let duration = request.duration { latency.record(duration) }
        if let duration = request.serverDuration { serverLatency.record(duration) }
    }
}

/// Values numbered from 0 in the order they are first seen.
struct Interner<Value: Hashable> {
    private(set) var values: [Value] = []
    private var ids: [Value: Int32] = [:]

    mutating func id(_ value: Value) -> Int32 {
        if let id = ids[value] { return id }
        let id = Int32(values.count)
        values.append(value)
        ids[value] = id
        return id
    }
}
