import Foundation
import MeshCore
import OTLPWire
import Synchronization

/// The exporter a mesh proxy embeds: it records a span per request at the cost of a
/// copy into a fixed buffer, and sends spans and RED metrics to the collector as
/// OTLP in the background.
///
/// - Recording never allocates and never blocks on the network. Spans wait in a
///   ring of fixed slots (sharded by trace id, a lock per shard) whose size comes
///   from `Configuration.memoryLimit`; a span that finds its shard full is dropped
///   and counted (`droppedBufferFull`) — the newest are dropped, what waits is kept.
/// - Every recorded request counts in the RED metrics, whether or not the head
///   sampler keeps its span.
/// - One export request is in flight at a time. A refused request is retried with
///   exponential backoff and jitter, no sooner than the collector's `Retry-After`
///   or `RetryInfo` asks; a request the collector refuses for good, or that still
///   fails after `RetryPolicy.maxElapsed`, is dropped and its spans counted
///   (`droppedExportFailed`). A `partial_success` is never resent: its rejected
///   spans are counted (`rejectedByCollector`).
/// - While the collector is unreachable the exporter keeps recording into its
///   ring, within its bound, and carries on when the collector is back.
public final class MeshExporter: Sendable {
    public struct Configuration: Sendable {
        public enum Transport: Sendable { case http, grpc }
        public enum Compression: Sendable { case none, gzip, zstd }

        /// `http://host:4318` for OTLP/HTTP; `host:4317` (or `http://host:4317`) for OTLP/gRPC.
        public var endpoint: String
        public var transport: Transport
        /// Over gRPC, zstd is sent as gzip (gRPC has no zstd).
        public var compression: Compression = .gzip
        /// `service.name` of the proxied workload: the resource of every span and metric.
        public var serviceName: String
        /// Further resource attributes (`k8s.namespace.name`, `k8s.pod.name`, `service.version`, …).
        public var resourceAttributes: [(String, String)] = []
        /// Bytes the exporter may hold: the span ring takes three quarters, the request in flight the rest.
        public var memoryLimit = 4 << 20
        /// Spans per export request (fewer when the memory limit allows fewer).
        public var maxBatchSpans = 512
        /// Spans wait at most this long before they are sent.
        public var flushInterval: Duration = .seconds(1)
        /// RED metrics are sent this often.
        public var metricsInterval: Duration = .seconds(10)
        /// Head sampling: the probability a trace that starts here is exported.
        public var samplingProbability = 1.0
        public var retry = RetryPolicy()
        public var requestTimeout: Duration = .seconds(10)
        /// Sent with every request (`authorization`, say).
        public var headers: [(String, String)] = []
        /// TLS (or mTLS, with a client certificate) to the collector; nil is plaintext.
        public var tls: ClientTLS?

        public init(endpoint: String, transport: Transport = .http, serviceName: String) {
            self.endpoint = endpoint
            self.transport = transport
            self.serviceName = serviceName
        }
    }

    /// Backoff between attempts: `initial`, then × `multiplier` up to `maximum`, each
    /// with ±50 % jitter, for at most `maxElapsed` (the OpenTelemetry Collector's defaults
    /// are 5 s, 1.5, 30 s, 300 s).
    public struct RetryPolicy: Sendable {
        public var initial: Duration = .seconds(1)
        public var multiplier = 1.5
        public var maximum: Duration = .seconds(30)
        public var maxElapsed: Duration = .seconds(300)

        public init() {}
    }

    /// Counts since the exporter started.
    public struct Statistics: Sendable, Equatable {
        /// Spans recorded: kept in the ring (exported or not).
        public var recorded: UInt64 = 0
        /// Recorded spans the head sampler left out of the export (still counted in RED metrics).
        public var sampledOut: UInt64 = 0
        /// Spans the collector accepted.
        public var exported: UInt64 = 0
        /// Spans dropped because the ring was full.
        public var droppedBufferFull: UInt64 = 0
        /// Spans dropped with a request the collector refused for good, or that failed past the retry limit.
        public var droppedExportFailed: UInt64 = 0
        /// Spans the collector rejected one by one (`partial_success`).
        public var rejectedByCollector: UInt64 = 0
        /// Spans whose strings were cut to fit a slot.
        public var truncated: UInt64 = 0
        /// Export requests sent, attempts included.
        public var requests: UInt64 = 0
        /// Attempts that were retried.
        public var retries: UInt64 = 0
        /// Metric export requests the collector accepted.
        public var metricExports: UInt64 = 0
        /// What the last failed attempt said.
        public var lastError: String?
    }

    public let configuration: Configuration
    public let sampler: HeadSampler
    private let ring: SpanRing
    private let labels = LabelTable()
    private let batchSpans: Int
    private let transport: any ExportTransport
    private let state = Mutex(Control())
    private let counters = Mutex(Statistics())
    private let worker = Mutex<Task<Void, Never>?>(nil)

    private struct Control {
        var stopping = false
        var flushRequested = 0
        var flushCompleted = 0
    }

    /// Starts the exporter. Fails only on an endpoint that cannot be parsed.
    public init(configuration: Configuration) throws {
        self.configuration = configuration
        sampler = HeadSampler(probability: configuration.samplingProbability)
        // The labels' fixed block comes out of the ring's share.
        let ringBudget = max(0, configuration.memoryLimit * 3 / 4 - LabelTable.footprint)
        ring = SpanRing(byteBudget: ringBudget, shards: ProcessInfo.processInfo.activeProcessorCount * 2)
        // An encoded span takes at most its slot's strings and about 400 bytes of keys and framing.
        let encodedSpan = ring.stringBytes + 400
        batchSpans = max(1, min(configuration.maxBatchSpans, (configuration.memoryLimit - ringBudget) / encodedSpan))
        let make: @Sendable (ClientTLS.Material?) throws -> any ExportTransport
        switch configuration.transport {
        case .http:
            var base = configuration.endpoint
            if !base.hasPrefix("http://") && !base.hasPrefix("https://") { base = (configuration.tls == nil ? "http://" : "https://") + base }
            while base.hasSuffix("/") { base.removeLast() }
            if configuration.tls != nil && base.hasPrefix("http://") { base = "https://" + base.dropFirst("http://".count) }
            make = { [base] tls in
                try HTTPExportTransport(baseURL: base, compression: configuration.compression, headers: configuration.headers, tls: tls)
            }
        case .grpc:
            var target = Substring(configuration.endpoint)
            if let scheme = target.range(of: "://") { target = target[scheme.upperBound...] }
            while target.hasSuffix("/") { target = target.dropLast() }
            guard let colon = target.lastIndex(of: ":"), let port = Int(target[target.index(after: colon)...]) else {
                throw MeshExporterError.badEndpoint(configuration.endpoint)
            }
            let host = String(target[..<colon])
            make = { tls in
                try GRPCExportTransport(host: host, port: port, compression: configuration.compression, headers: configuration.headers, tls: tls)
            }
        }
        if let tls = configuration.tls {
            transport = try ReloadingTransport(tls: tls, make: make)
        } else {
            transport = try make(nil)
        }
        let task = Task.detached { [self] in await self.run() }
        worker.withLock { $0 = task }
    }

    /// Records one request's span. Does not allocate, does not wait on the network;
    /// when the ring is full the span is dropped, counted, and false returned.
    /// - Parameter exported: whether the span is sent (the head sampler's decision,
    ///   `decide`); unsent spans still count in the RED metrics.
    @discardableResult
    public func record(_ span: borrowing RequestSpan, exported: Bool = true) -> Bool {
        ring.push(span, bits: exported ? SlotHeader.exportBit : 0)
    }

    /// Records a span whose strings are NUL-terminated UTF-8, as the C interface passes
    /// them (`strings` gives each in `SlotString` order, nil for none; they are copied
    /// before this returns, or recorded as the label whose text they point at).
    @_spi(CABI) @discardableResult
    public func record(_ fields: RawSpanFields, exported: Bool, strings: (SlotString) -> UnsafePointer<CChar>?) -> Bool {
        let header = SlotHeader(
            traceHigh: fields.traceID.high, traceLow: fields.traceID.low, spanID: fields.spanID.value,
            parentSpanID: fields.parentSpanID.value, startTime: fields.startTime, endTime: fields.endTime,
            requestBytes: fields.requestBytes, responseBytes: fields.responseBytes, httpStatus: fields.httpStatus,
            kind: fields.kind.rawValue,
            bits: (exported ? SlotHeader.exportBit : 0) | SpanRing.bits(failed: fields.failed, mutualTLS: fields.mutualTLS))
        return ring.push(header, labels: labels, strings: strings)
    }

    /// The text of `label(text)`, NUL-terminated and as long-lived as the exporter: a C
    /// caller that passes this address in a span records the label. Nil as `label` is.
    @_spi(CABI)
    public func labelText(_ text: String) -> UnsafePointer<CChar>? {
        labels.label(text).map(labels.text(of:))
    }

    /// The label of `text` (the same label for the same text, from any thread), for
    /// `RequestSpan.labels`: register a route's name, a cluster, a method once, and
    /// recording copies two bytes instead of the string. Nil when the text is longer than
    /// 1,024 bytes or the exporter holds its 4,096 labels (64 KiB) already: record the
    /// string then.
    public func label(_ text: String) -> SpanLabel? {
        labels.label(text)
    }

    /// The head sampler's decision for a span of `traceID`, continuing `parent` when
    /// the request carried a context: whether to export it, and the `tracestate` to
    /// record and pass on.
    public func decide(traceID: TraceID, parent: TraceContext?) -> (sampled: Bool, traceState: String) {
        sampler.decide(traceID: traceID, parent: parent)
    }

    public var statistics: Statistics {
        var statistics = counters.withLock { $0 }
        (statistics.recorded, statistics.sampledOut, statistics.droppedBufferFull) = ring.totals
        if let problem = (transport as? ReloadingTransport)?.problem { statistics.lastError = problem }
        return statistics
    }

    /// Spans recorded and not yet handed to the transport.
    public var pending: Int { ring.count }

    /// Sends every span recorded before the call (retrying as configured) and the RED
    /// metrics counted so far; returns when they are sent or given up on.
    public func flush() async {
        let ticket = state.withLock { control -> Int in
            control.flushRequested += 1
            return control.flushRequested
        }
        while state.withLock({ $0.flushCompleted < ticket && !$0.stopping }) {
            try? await Task.sleep(for: .milliseconds(2))
        }
    }

    /// Sends what is left (within one more retry budget) and stops.
    public func shutdown() async {
        state.withLock { $0.stopping = true }
        await worker.withLock { $0 }?.value
        await transport.shutdown()
    }

    // MARK: The export loop

    private func run() async {
        var drained = DrainedSpans(capacity: batchSpans, slotBytes: SlotString.allCases.count * 2 + ring.stringBytes, labels: labels)
        let attributes = [("service.name", configuration.serviceName)] + configuration.resourceAttributes
        var encoder = OTLPSpanEncoder(resourceAttributes: attributes, scopeName: "meshtrace.MeshExporter", scopeVersion: "1")
        var resource = OTLPResource()
        resource.attributes = attributes.map { KeyValue($0.0, $0.1) }
        let clock = ContinuousClock()
        var red = REDAggregator(service: configuration.serviceName, now: Self.now())
        var lastFlush = clock.now
        var lastMetrics = clock.now
        // Checked every few milliseconds: a full batch waits no longer than that.
        let poll = min(configuration.flushInterval, .milliseconds(5))
        while true {
            let (stopping, flushTicket) = state.withLock { ($0.stopping, $0.flushRequested) }
            let flushing = flushTicket > state.withLock { $0.flushCompleted }
            let due = clock.now - lastFlush >= configuration.flushInterval
            if stopping || flushing || due || ring.count >= batchSpans {
                // Send everything waiting, a batch at a time.
                repeat {
                    drained.removeAll()
                    ring.drain(into: &drained, limit: batchSpans)
                    guard drained.count > 0 else { break }
                    red.add(drained)
                    let exported = drained.headers.reduce(0) { $0 + ($1.bits & SlotHeader.exportBit != 0 ? 1 : 0) }
                    counters.withLock { counters in
                        counters.truncated += UInt64(drained.headers.reduce(0) { $0 + ($1.bits & SlotHeader.truncatedBit != 0 ? 1 : 0) })
                    }
                    if exported > 0 { await send(encoder.encode(drained), spans: exported, signal: .traces, stopping: stopping) }
                } while ring.count > 0 && (stopping || flushing || ring.count >= batchSpans)
                lastFlush = clock.now
            }
            if !red.isEmpty && (stopping || flushing || clock.now - lastMetrics >= configuration.metricsInterval) {
                let request = red.take(now: Self.now(), resource: resource)
                if let body = try? request.serializedBytes() as [UInt8] { await send(body, spans: 0, signal: .metrics, stopping: stopping) }
                lastMetrics = clock.now
            }
            if flushing { state.withLock { $0.flushCompleted = max($0.flushCompleted, flushTicket) } }
            if stopping { return }
            try? await Task.sleep(for: poll)
        }
    }

    /// Sends one request, retrying as the policy and the collector say.
    private func send(_ body: [UInt8], spans: Int, signal: ExportSignal, stopping: Bool) async {
        let clock = ContinuousClock()
        let started = clock.now
        var backoff = configuration.retry.initial
        while true {
            counters.withLock { $0.requests += 1 }
            let outcome = await transport.send(body, signal: signal, timeout: configuration.requestTimeout)
            switch outcome {
            case .accepted(let rejected, let message):
                counters.withLock { counters in
                    if signal == .traces {
                        counters.exported += UInt64(max(0, Int64(spans) - rejected))
                        counters.rejectedByCollector += UInt64(max(0, rejected))
                    } else {
                        counters.metricExports += 1
                    }
                    if rejected > 0 { counters.lastError = "partial success: \(message)" }
                }
                return
            case .refused(let reason):
                counters.withLock { counters in
                    counters.droppedExportFailed += UInt64(spans)
                    counters.lastError = reason
                }
                return
            case .retry(let after, let reason):
                let jittered = backoff * Double.random(in: 0.5...1.5)
                let wait = max(after ?? .zero, jittered)
                // On shutdown (asked for before or during this request), no more waiting;
                // otherwise until the retry budget is spent.
                let budget = stopping || state.withLock({ $0.stopping }) ? .zero : configuration.retry.maxElapsed
                guard clock.now - started + wait <= budget else {
                    counters.withLock { counters in
                        counters.droppedExportFailed += UInt64(spans)
                        counters.lastError = reason
                    }
                    return
                }
                counters.withLock { counters in
                    counters.retries += 1
                    counters.lastError = reason
                }
                try? await Task.sleep(for: wait)
                backoff = min(configuration.retry.maximum, backoff * configuration.retry.multiplier)
            }
        }
    }

    private static func now() -> UInt64 { UInt64(Date().timeIntervalSince1970 * 1e9) }
}

/// The fixed-size fields of a span recorded through the C interface.
@_spi(CABI) public struct RawSpanFields: Sendable {
    public var traceID: TraceID
    public var spanID: SpanID
    public var parentSpanID: SpanID
    public var kind: SpanKind
    public var startTime: UInt64
    public var endTime: UInt64
    public var httpStatus: UInt16
    public var failed: Bool
    public var requestBytes: UInt64
    public var responseBytes: UInt64
    public var mutualTLS: Bool?

    public init(
        traceID: TraceID, spanID: SpanID, parentSpanID: SpanID, kind: SpanKind, startTime: UInt64, endTime: UInt64,
        httpStatus: UInt16, failed: Bool, requestBytes: UInt64, responseBytes: UInt64, mutualTLS: Bool?
    ) {
        self.traceID = traceID
        self.spanID = spanID
        self.parentSpanID = parentSpanID
        self.kind = kind
        self.startTime = startTime
        self.endTime = endTime
        self.httpStatus = httpStatus
        self.failed = failed
        self.requestBytes = requestBytes
        self.responseBytes = responseBytes
        self.mutualTLS = mutualTLS
    }
}

public enum MeshExporterError: Error, CustomStringConvertible {
    case badEndpoint(String)
    case unreadable(String)
    case badTLS(String)

    public var description: String {
        switch self {
        case .badEndpoint(let endpoint): "cannot read the endpoint \(endpoint): expected host:port or http://host:port"
        case .unreadable(let path): "cannot read \(path)"
        case .badTLS(let reason): "TLS configuration: \(reason)"
        }
    }
}
