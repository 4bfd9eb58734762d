import Foundation
import MeshCore

/// A call between two workloads, named by `service.name`. The entry call has the
/// caller `user`; a caller outside the trace is `unknown`; a callee without a
/// sidecar is named from the CLIENT span's peer attributes.
public struct EdgeName: Hashable, Sendable, CustomStringConvertible {
    public var caller: String
    public var callee: String

    public init(caller: String, callee: String) {
        self.caller = caller
        self.callee = callee
    }

    public var description: String { "\(caller) → \(callee)" }

    /// A 64-bit key for the edge, from keys of its two names: what the sampler's
    /// tables are keyed by, so a trace's edges are found without hashing strings.
    var key: UInt64 { Self.key(caller: Self.key(of: caller), callee: Self.key(of: callee)) }

    static func key(caller: UInt64, callee: UInt64) -> UInt64 {
        (caller &* 0x9E37_79B9_7F4A_7C15) ^ (callee &+ 0x632B_E59B_D9B4_E019)
    }

    /// FNV-1a of a name's UTF-8 bytes.
    static func key(of name: String) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in name.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return hash
    }
}

/// The live latency quantile of an edge, as seen from each side.
public struct EdgeLatency: Sendable, Equatable {
    /// Nanoseconds: the SERVER span's duration, for calls whose callee reported one.
    public var server: UInt64?
    /// Nanoseconds: the CLIENT span's duration, for calls to an uninstrumented callee.
    public var client: UInt64?

    public init(server: UInt64? = nil, client: UInt64? = nil) {
        self.server = server
        self.client = client
    }
}

/// One call found in a trace.
struct Call {
    /// The calling and the called side, named only when a policy asks (`TraceView.edge(of:)`).
    var caller: Party
    var callee: Party
    /// The key of the edge's names, found from keys each batch keeps for its services.
    var key: UInt64
    /// The duration to compare with the edge's quantile, and which side measured it.
    var duration: UInt64
    var serverSide: Bool
}

/// A side of a call: a name known already (`user`, `unknown`, a peer the CLIENT span
/// names), or the service of a span, read from its resource when asked.
enum Party {
    case named(String)
    case service(of: SpanRef)
}

/// One span of a trace: a row of one of the trace view's batches.
struct SpanRef: Hashable {
    var part: Int
    var row: Int
}

/// A batch of spans shared by reference: a trace view lists the batches its spans
/// lie in without copying each batch's columns.
final class SharedBatch: @unchecked Sendable {
    let batch: SpanBatch
    /// The key of each resource's `service.name` (`EdgeName.key(of:)`).
    let serviceKeys: [UInt64]
    /// Row by row, whether the span's traffic went without TLS, as its request facts
    /// say (the golden signals read the same); empty when no facts were given.
    let plaintext: [Bool]
    /// False when no span of the batch has a `trace_state`: a decision then reads none
    /// (a batch held for seconds is out of cache, and each read would wait on memory).
    let carriesTraceState: Bool

    /// `traceStateRows`, the rows a decision will read, have their extras looked
    /// through now, while they are likely in cache; without them, every span is taken
    /// to carry a `trace_state`.
    init(_ batch: SpanBatch, plaintext: [Bool] = [], traceStateRows: [Int]? = nil) {
        self.batch = batch
        serviceKeys = batch.resources.map { EdgeName.key(of: $0.serviceName) }
        self.plaintext = plaintext
        carriesTraceState = traceStateRows.map { TraceStateField.anySet(in: batch.extras, rows: $0) } ?? true
    }

    /// Asks the CPU to start loading what a decision reads of span `row`.
    func prefetch(row: Int) {
        batch.prefetchColumns(row: row)
    }

    /// Where each resource and scope of the batch was last interned into an output
    /// batch (`UInt32.max` for none): a hint, compared with the output's entry before
    /// use, since the output may be another batch by then. Used under the lock of the
    /// shard that holds this batch, which keeps accesses apart (not checked at run
    /// time: each check would cost a kept span more than the lookup it guards).
    @exclusivity(unchecked) private var resourcesInOutput: [UInt32] = []
    @exclusivity(unchecked) private var scopesInOutput: [UInt32] = []

    /// The index in `output`'s resource table of resource `row` of this batch, interned
    /// there if new. Traces kept from one batch mostly name its same few resources, each
    /// then found with one comparison instead of a table lookup.
    func resourceIndex(of row: UInt32, in output: inout SpanBatch) -> UInt32 {
        let row = Int(row)
        return Self.index(of: row, hints: &resourcesInOutput, count: batch.resources.count,
                          matches: { hint in Self.same(output.resources, hint, batch.resources, row) },
                          intern: { output.intern(resource: batch.resources[row]) })
    }

    /// The index in `output`'s scope table of scope `row` of this batch, interned there if new.
    func scopeIndex(of row: UInt32, in output: inout SpanBatch) -> UInt32 {
        let row = Int(row)
        return Self.index(of: row, hints: &scopesInOutput, count: batch.scopes.count,
                          matches: { hint in Self.same(output.scopes, hint, batch.scopes, row) },
                          intern: { output.intern(scope: batch.scopes[row]) })
    }

    /// Whether `table[index]` (when there is one) equals `other[row]`, both compared
    /// where they lie: entries read out of their arrays would be copied, retaining
    /// and releasing what each holds.
    @inline(__always)
    private static func same<Entry: Equatable>(_ table: [Entry], _ index: Int, _ other: [Entry], _ row: Int) -> Bool {
        table.withUnsafeBufferPointer { table in
            other.withUnsafeBufferPointer { other in index < table.count && table[index] == other[row] }
        }
    }

    /// Entry `row`'s index in an output table: its hint when `matches` says the output
    /// holds the same entry there, else `intern`'s, which becomes the hint.
    private static func index(
        of row: Int, hints: inout [UInt32], count: Int, matches: (Int) -> Bool, intern: () -> UInt32
    ) -> UInt32 {
        if hints.isEmpty { hints = Array(repeating: .max, count: count) }
        if matches(Int(hints[row])) { return hints[row] }
        let index = intern()
        hints[row] = index
        return index
    }
}

/// The spans of one trace, read where they lie: rows of the batches they arrived in.
struct TraceView {
    /// The batches, kept alive by the view.
    let shared: [SharedBatch]
    let spans: [SpanRef]

    init(parts: [SharedBatch], spans: [SpanRef]) {
        shared = parts
        self.spans = spans
    }

    /// Rows of one batch.
    init(batch: SpanBatch, rows: [Int]) {
        self.init(parts: [SharedBatch(batch)], spans: rows.map { SpanRef(part: 0, row: $0) })
    }

    /// `body` on the batch `span` lies in, without retaining it (`shared` does): the
    /// policies read a trace span by span, and each read of `shared[part]` would
    /// retain and release its batch.
    @inline(__always)
    func reading<Result>(_ span: SpanRef, _ body: (SharedBatch) -> Result) -> Result {
        shared.withUnsafeBufferPointer { Unmanaged.passUnretained($0[span.part]) }._withUnsafeGuaranteedRef(body)
    }

    var spanCount: Int { spans.count }

    @inline(__always) func kind(_ span: SpanRef) -> SpanKind { reading(span) { $0.batch.kinds[span.row] } }
    @inline(__always) func spanID(_ span: SpanRef) -> SpanID { reading(span) { $0.batch.spanIDs[span.row] } }
    @inline(__always) func parentID(_ span: SpanRef) -> SpanID { reading(span) { $0.batch.parentSpanIDs[span.row] } }
    @inline(__always) func traceID(_ span: SpanRef) -> TraceID { reading(span) { $0.batch.traceIDs[span.row] } }
    // Read field by field: calling a SpanBatch method here would copy the batch.
    @inline(__always) func service(_ span: SpanRef) -> String {
        reading(span) { $0.batch.resources[Int($0.batch.resourceIndices[span.row])].serviceName }
    }

    @inline(__always) func serviceKey(_ span: SpanRef) -> UInt64 {
        reading(span) { $0.serviceKeys[Int($0.batch.resourceIndices[span.row])] }
    }

    @inline(__always) func duration(_ span: SpanRef) -> UInt64 {
        reading(span) { part in
            let start = part.batch.startTimes[span.row]
            let end = part.batch.endTimes[span.row]
            return end > start ? end - start : 0
        }
    }
    @inline(__always) func attributes(_ span: SpanRef) -> ArraySlice<UInt8> { reading(span) { $0.batch.attributes[span.row] } }
    @inline(__always) func extras(_ span: SpanRef) -> ArraySlice<UInt8> { reading(span) { $0.batch.extras[span.row] } }
    /// The span's `trace_state`, read in place.
    @inline(__always) func traceState(_ span: SpanRef) -> String? {
        reading(span) { $0.carriesTraceState ? TraceStateField.read($0.batch.extras, row: span.row) : nil }
    }

    /// From the first span's start to the last span's end.
    var duration: UInt64 {
        var first = UInt64.max
        var last: UInt64 = 0
        for span in spans {
            reading(span) { part in
                first = min(first, part.batch.startTimes[span.row])
                last = max(last, part.batch.endTimes[span.row])
            }
        }
        return last > first ? last - first : 0
    }

    /// Whether a span's status code is in `mask`, a bit `1 << code` for each code.
    func hasStatus(mask: UInt8) -> Bool {
        spans.contains { span in reading(span) { mask & (1 << $0.batch.statusCodes[span.row].rawValue) != 0 } }
    }

    /// Whether any span's (or its resource's) attribute `key` satisfies `test`.
    func anyAttribute(_ key: [UInt8], _ test: (AttributeValue) -> Bool) -> Bool {
        var resourcesSeen: Set<SpanRef> = []
        for span in spans {
            if AttributeValue.find(key, in: attributes(span), test) { return true }
            let resource = reading(span) { Int($0.batch.resourceIndices[span.row]) }
            if resourcesSeen.insert(SpanRef(part: span.part, row: resource)).inserted,
               reading(span, { AttributeValue.find(key, inResourceSpans: $0.batch.resources[resource].encoded, test) }) { return true }
        }
        return false
    }

    /// The HTTP status codes the decoder took from the spans' attributes (0 when none).
    func httpStatus(in range: ClosedRange<Int64>) -> Bool {
        spans.contains { span in
            let code = reading(span) { $0.batch.httpStatusCodes[span.row] }
            return code != 0 && range.contains(Int64(code))
        }
    }

    /// Whether a span's traffic went without TLS, as the decoder read it from the span's
    /// attributes (`RequestFacts.security`): Istio's `connection_security_policy` of
    /// `none`, or `tls.established` false where nothing says mutual TLS.
    var hasPlaintext: Bool {
        spans.contains { span in
            reading(span) { part in
                if !part.plaintext.isEmpty { return part.plaintext[span.row] }
                return part.batch.attributes.bytes.withUnsafeBufferPointer { bytes in
                    RequestFacts(attributes: bytes, part.batch.attributes.range(of: span.row)).security == .plaintext
                }
            }
        }
    }

    /// The `tracestate` of each span, where it has one.
    var traceStates: [String] {
        spans.compactMap { TraceStateField.read(extras($0)) }.filter { !$0.isEmpty }
    }

    /// The trace's root span: the first without a parent.
    var root: SpanRef? { spans.first { parentID($0) == .zero } }

    /// The call the request entered by: the root span, as a call from `user` (or, for a
    /// CLIENT root, to what it names).
    var entryCall: Call? {
        guard let root else { return nil }
        return call(kind(root) == .client ? .unanswered(client: root) : .entry(server: root))
    }

    /// Every call in the trace: each SERVER span (its caller is the CLIENT span it is a
    /// child of, when that is in the trace), and each CLIENT span no SERVER span answered.
    var calls: [Call] {
        var result: [Call] = []
        result.reserveCapacity(spans.count)
        forEachCall { result.append(call($0)) }
        return result
    }

    /// `body` on the edge key of each call in the trace (`calls`), each key once: no
    /// call is built, and the keys are gathered in temporary room (on the stack but
    /// for large traces).
    func withEdgeKeys<Result>(_ body: (UnsafeBufferPointer<UInt64>) -> Result) -> Result {
        withUnsafeTemporaryAllocation(of: UInt64.self, capacity: max(1, spans.count)) { keys in
            var count = 0
            forEachCall { sides in
                let key = key(of: sides)
                if !keys[..<count].contains(key) {
                    keys.initializeElement(at: count, to: key)
                    count += 1
                }
            }
            return body(UnsafeBufferPointer(rebasing: keys[..<count]))
        }
    }

    /// How a call was found in a trace: the spans that say who called whom.
    enum CallSides {
        /// A root span: the request entered the mesh by it, called by `user`.
        case entry(server: SpanRef)
        /// A SERVER span whose parent, the CLIENT span `client`, is in the trace.
        case answered(server: SpanRef, client: SpanRef)
        /// A SERVER span whose parent is not a CLIENT span of the trace: its caller is `unknown`.
        case fromOutside(server: SpanRef)
        /// A CLIENT span no SERVER span of the trace answered: the callee is what it names.
        case unanswered(client: SpanRef)
    }

    /// `body` on each call of the trace: first each SERVER span's, in span order, then
    /// each CLIENT span's that no SERVER span answered.
    func forEachCall(_ body: (CallSides) -> Void) {
        let count = spans.count
        // The SERVER spans' positions and the CLIENT spans' ids, gathered in one pass that
        // writes each span to both lists and keeps it in the one of its kind: each SERVER
        // span's parent is then looked for among the CLIENT spans only, by a scan in small
        // traces and by a table in large ones.
        withUnsafeTemporaryAllocation(of: Int.self, capacity: count + 1) { servers in
            withUnsafeTemporaryAllocation(of: (id: SpanID, position: Int, answered: Bool).self, capacity: count + 1) { clients in
                var serverCount = 0
                var clientCount = 0
                for (position, span) in spans.enumerated() {
                    let kind = kind(span)
                    (servers.baseAddress! + serverCount).initialize(to: position)
                    (clients.baseAddress! + clientCount).initialize(to: (spanID(span), position, false))
                    serverCount += kind == .server ? 1 : 0
                    clientCount += kind == .client ? 1 : 0
                }
                var byID: [SpanID: Int] = [:]
                if clientCount > 48 {
                    byID.reserveCapacity(clientCount)
                    for client in 0..<clientCount { byID[clients[client].id] = client }
                }
                for server in 0..<serverCount {
                    let span = spans[servers[server]]
                    let parentID = parentID(span)
                    if parentID == .zero {
                        body(.entry(server: span))
                        continue
                    }
                    if let parent = byID.isEmpty ? (0..<clientCount).first(where: { clients[$0].id == parentID }) : byID[parentID] {
                        clients[parent].answered = true
                        body(.answered(server: span, client: spans[clients[parent].position]))
                    } else {
                        body(.fromOutside(server: span))
                    }
                }
                for client in 0..<clientCount where !clients[client].answered {
                    body(.unanswered(client: spans[clients[client].position]))
                }
            }
        }
    }

    /// The call `sides` found, its sides named only when asked (`edge(of:)`).
    func call(_ sides: CallSides) -> Call {
        switch sides {
        case .entry(let server):
            return Call(caller: .named("user"), callee: .service(of: server), key: key(of: sides), duration: duration(server), serverSide: true)
        case .answered(let server, let client):
            return Call(caller: .service(of: client), callee: .service(of: server), key: key(of: sides), duration: duration(server), serverSide: true)
        case .fromOutside(let server):
            return Call(caller: .named("unknown"), callee: .service(of: server), key: key(of: sides), duration: duration(server), serverSide: true)
        case .unanswered(let client):
            let peer = peerName(client)
            return Call(caller: .service(of: client), callee: .named(peer), key: EdgeName.key(caller: serviceKey(client), callee: EdgeName.key(of: peer)),
                        duration: duration(client), serverSide: false)
        }
    }

    /// The edge key of the call `sides` found, from the keys each batch keeps for its services.
    func key(of sides: CallSides) -> UInt64 {
        switch sides {
        case .entry(let server): EdgeName.key(caller: Self.userKey, callee: serviceKey(server))
        case .answered(let server, let client): EdgeName.key(caller: serviceKey(client), callee: serviceKey(server))
        case .fromOutside(let server): EdgeName.key(caller: Self.unknownKey, callee: serviceKey(server))
        case .unanswered(let client): EdgeName.key(caller: serviceKey(client), callee: EdgeName.key(of: peerName(client)))
        }
    }

    /// The name of one side of a call.
    func name(_ party: Party) -> String {
        switch party {
        case .named(let name): name
        case .service(let span): service(span)
        }
    }

    /// The names of a call's two sides.
    func edge(of call: Call) -> EdgeName {
        EdgeName(caller: name(call.caller), callee: name(call.callee))
    }

    /// The callee a CLIENT span names: `peer.service`, `db.namespace`/`db.name`,
    /// `db.system`, `server.address`, `net.peer.name`, or Envoy's `upstream_cluster` host.
    func peerName(_ span: SpanRef) -> String {
        for key in Self.peerKeys {
            var found: String?
            _ = AttributeValue.find(key, in: attributes(span)) { value in
                found = value.string
                return found != nil && !found!.isEmpty
            }
            guard var name = found, !name.isEmpty else { continue }
            if key == Self.upstreamClusterKey {
                // `outbound|80||cart.shop.svc.cluster.local`: the host, without its domain.
                guard let host = name.split(separator: "|", omittingEmptySubsequences: false).last, !host.isEmpty else { continue }
                name = String(host.split(separator: ".").first ?? host)
            }
            return name
        }
        return "unknown"
    }

    private static let upstreamClusterKey = Array("upstream_cluster".utf8)
    private static let userKey = EdgeName.key(of: "user")
    private static let unknownKey = EdgeName.key(of: "unknown")
    private static let peerKeys: [[UInt8]] = [
        "peer.service", "db.namespace", "db.name", "db.system", "server.address", "net.peer.name", "upstream_cluster",
    ].map { Array($0.utf8) }
}

/// Reads and replaces field 3 (`trace_state`) of a span's extras: protobuf bytes of
/// an OTLP `Span` holding the fields the columns do not.
enum TraceStateField {
    static func read(_ extras: ArraySlice<UInt8>) -> String? {
        extras.withUnsafeBufferPointer { read($0, 0..<$0.count) }
    }

    /// The `trace_state` of row `row` of an extras column, read in place.
    static func read(_ column: ByteColumn, row: Int) -> String? {
        let range = column.range(of: row)
        return column.bytes.withUnsafeBufferPointer { read($0, range) }
    }

    /// The `trace_state` of the extras at `buffer[range]`; the last one when there are several.
    static func read(_ buffer: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> String? {
        valueRange(buffer, range).map { String(decoding: UnsafeBufferPointer(rebasing: buffer[$0]), as: UTF8.self) }
    }

    /// Whether any of `rows` of an extras column has a `trace_state` (as `read` finds
    /// it) that is not empty.
    static func anySet(in column: ByteColumn, rows: [Int]) -> Bool {
        guard maybeSet(in: column) else { return false }
        return column.bytes.withUnsafeBufferPointer { buffer in
            rows.contains { valueRange(buffer, column.range(of: $0))?.isEmpty == false }
        }
    }

    /// False when no row of an extras column can have a `trace_state`, told without
    /// walking the rows: the field begins with its tag, 0x1A in one byte (0x9A when
    /// written in more), and a column that holds neither byte anywhere (spans without
    /// events, links or trace state carry a few bytes of flags) holds no such field.
    static func maybeSet(in column: ByteColumn) -> Bool {
        column.bytes.withUnsafeBufferPointer { buffer in
            guard let base = buffer.baseAddress else { return false }
            return memchr(base, 0x1A, buffer.count) != nil || memchr(base, 0x9A, buffer.count) != nil
        }
    }

    /// Where the value of the last `trace_state` field of the extras at `buffer[range]` lies.
    private static func valueRange(_ buffer: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> Range<Int>? {
        var reader = WireReader(buffer, range)
        var found: Range<Int>?
        while let (field, wireType) = reader.tag() {
            if field == 3, wireType == 2, let value = reader.lengthDelimited() {
                found = value
            } else if !reader.skip(wireType: wireType) {
                return found
            }
        }
        return found
    }

    /// The bytes of the `trace_state` of `extras` as `read` finds it; empty when it has none.
    static func valueBytes(_ extras: UnsafeBufferPointer<UInt8>) -> UnsafeBufferPointer<UInt8> {
        guard let range = valueRange(extras, 0..<extras.count) else { return UnsafeBufferPointer(rebasing: extras[0..<0]) }
        return UnsafeBufferPointer(rebasing: extras[range])
    }

    /// `extras` with every `trace_state` field removed and `traceState` written in their place.
    static func replace(in extras: UnsafeBufferPointer<UInt8>, with traceState: some Collection<UInt8>, into output: inout [UInt8]) {
        output.removeAll(keepingCapacity: true)
        var reader = WireReader(extras, 0..<extras.count)
        var start = reader.position
        while let (field, wireType) = reader.tag() {
            if field == 3, wireType == 2 {
                guard reader.lengthDelimited() != nil else { break }
            } else {
                guard reader.skip(wireType: wireType) else { break }
                output.append(contentsOf: extras[start..<reader.position])
            }
            start = reader.position
        }
        // Anything the reader could not walk stays as it was.
        if start < extras.count { output.append(contentsOf: extras[start...]) }
        output.append(0x1A)  // field 3, length-delimited
        var length = UInt64(traceState.count)
        while length >= 0x80 {
            output.append(UInt8(length & 0x7F) | 0x80)
            length >>= 7
        }
        output.append(UInt8(length))
        output.append(contentsOf: traceState)
    }
}

/// The `tracestate` a kept span's threshold makes of the one it came with, remembered
/// for the last pair asked about: a trace's spans mostly carry the same `tracestate`
/// (most often none) and share a threshold, so parsing and writing it happen about
/// once per trace instead of once per span.
struct ThresholdedTraceState {
    private var value: [UInt8] = []
    private var threshold: Threshold?
    private var rewritten: [UInt8]?

    /// The `tracestate` value (`value`, the bytes of the one a span came with, empty
    /// for none) with its `ot` entry's threshold set to `threshold`; nil when the
    /// value says that threshold already (none says probability 1), and stays as it is.
    mutating func rewrite(_ value: UnsafeBufferPointer<UInt8>, to threshold: Threshold) -> [UInt8]? {
        if threshold == self.threshold && value.elementsEqual(self.value) { return rewritten }
        let text = String(decoding: value, as: UTF8.self)
        var ot = OTelTraceState(traceState: text)
        if (ot.threshold ?? .always) == threshold {
            rewritten = nil
        } else {
            ot.threshold = threshold
            rewritten = Array(ot.applied(to: text).utf8)
        }
        self.value = Array(value)
        self.threshold = threshold
        return rewritten
    }
}
