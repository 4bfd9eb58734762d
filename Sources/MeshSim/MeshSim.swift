import Foundation
import MeshCore
import OTLPWire

/// Deterministic mesh traffic: for a seed, the same requests, spans and ground truth.
///
/// Every hop of a request yields a CLIENT span from the caller's sidecar and a
/// SERVER span, its child, from the callee's sidecar, with Envoy-like attributes.
/// The entry service's SERVER span is the root. Latencies are log-normal with a
/// heavy tail; a configurable share of hops fail with a 5xx.
public struct MeshSim: Sendable {
    /// How traffic is generated.
    public struct Configuration: Sendable {
        public var seed: UInt64 = 42
        /// Share of hops that fail with a 5xx, 0…1.
        public var errorRate: Double = 0.01
        /// Share of a service's own work times that are multiplied 5–20× (the heavy tail).
        public var tailProbability: Double = 0.01
        /// Granularity of span timestamps, in nanoseconds. Envoy's clocks report whole
        /// microseconds, so sidecar spans do too; 1 gives full nanosecond precision.
        public var timestampResolution: UInt64 = 1_000

        public init(seed: UInt64 = 42, errorRate: Double = 0.01) {
            self.seed = seed
            self.errorRate = errorRate
        }
    }

    /// A span and the pod whose sidecar emitted it.
    public struct EmittedSpan: Sendable {
        public var pod: Int
        public var span: OTLPSpan
    }

    public let configuration: Configuration
    public let mesh: Mesh
    /// What the generated traffic holds, for tests to compare against.
    public private(set) var truth = GroundTruth()
    private var random: SeededGenerator

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        mesh = Mesh.standard(seed: configuration.seed)
        random = SeededGenerator(seed: configuration.seed)
    }

    /// Generates one request entering the mesh at `startTime` (nanoseconds since the epoch),
    /// and returns its spans.
    public mutating func request(at startTime: UInt64) -> [EmittedSpan] {
        let traceID = TraceID(high: random.next(), low: random.next() | 1)
        truth.randomBits += 127
        let requestID = uuid()
        var spans: [EmittedSpan] = []
        let entryPod = pick(mesh.services[mesh.entry].pods)
        _ = serve(
            service: mesh.entry, pod: entryPod, callerPod: nil, parent: .zero, traceID: traceID,
            start: startTime, requestID: requestID, failed: chance(configuration.errorRate),
            spans: &spans)
        truth.requests += 1
        truth.spans += spans.count
        return spans
    }

    /// Serves a request at `pod`; appends the SERVER span and everything below it.
    /// Returns the SERVER span's end time.
    private mutating func serve(
        service: Int, pod: Int, callerPod: Int?, parent: SpanID, traceID: TraceID, start: UInt64,
        requestID: String, failed: Bool, spans: inout [EmittedSpan]
    ) -> (end: UInt64, route: Mesh.Route, path: String, status: Int, flags: String, requestBytes: Int64, responseBytes: Int64) {
        let definition = mesh.services[service]
        let spanID = nextSpanID()
        var ownWork = logNormal(median: definition.medianMilliseconds * 1e6, sigma: 0.45, resolution: timeResolution)
        // The tail's multiplier is not counted in `truth.randomBits`.
        if chance(configuration.tailProbability) { ownWork *= 5 + 15 * random.unit() }
        var cursor = start + UInt64(ownWork * 0.3)

        for call in definition.calls where chance(call.probability) {
            let calleePod = pick(mesh.services[call.callee].pods)
            cursor = self.call(from: service, pod: pod, to: call.callee, calleePod: calleePod, parent: spanID,
                               traceID: traceID, start: cursor, requestID: requestID, spans: &spans)
            cursor += UInt64(logNormal(median: 50_000, sigma: 0.3, resolution: timeResolution))
        }
        let end = cursor + UInt64(ownWork * 0.7)

        let route = definition.routes[uniform(0...(definition.routes.count - 1))]
        // Drawn for every route, so the stream does not depend on the template; counted where it shows.
        let id = random.int(in: 1...99_999)
        if route.template.contains("{id}") { truth.randomBits += log2(99_999) }
        let path = route.template.replacingOccurrences(of: "{id}", with: String(id))
        let status = failed ? (chance(0.6) ? 503 : 500) : (route.method == "POST" ? 201 : 200)
        let flags = failed && status == 503 ? "UF" : "-"
        let responseBytes = Int64(logNormal(median: 2_000, sigma: 1.0, resolution: 1))
        let requestBytes = Int64(route.method == "POST" ? Int(logNormal(median: 600, sigma: 0.8, resolution: 1)) : 0)

        var span = OTLPSpan()
        span.traceID = Data(traceID.bytes)
        span.spanID = Data(spanID.bytes)
        span.parentSpanID = Data(parent.bytes)
        span.name = "\(route.method) \(route.template)"
        span.kind = .server
        span.startTimeUnixNano = quantize(start)
        span.endTimeUnixNano = quantize(end)
        span.flags = 0x101
        span.attributes = [
            KeyValue("http.request.method", route.method),
            KeyValue("url.path", path),
            KeyValue("http.response.status_code", Int64(status)),
            KeyValue("upstream_cluster", "inbound|\(definition.port)||"),
            KeyValue("peer.address", callerPod.map { "\(mesh.pods[$0].address):\(40000 + uniform(0...20000))" } ?? "203.0.113.\(uniform(1...254)):443"),
            KeyValue("user_agent.original", callerPod.map { mesh.services[mesh.pods[$0].service].userAgent } ?? definition.userAgent),
            KeyValue("http.request.body.size", requestBytes),
            KeyValue("http.response.body.size", responseBytes),
            KeyValue("response_flags", flags),
            KeyValue("guid:x-request-id", requestID),
            KeyValue("component", "proxy"),
        ]
        if failed {
            span.status.code = .error
        }
        spans.append(EmittedSpan(pod: pod, span: span))
        return (end, route, path, status, flags, requestBytes, responseBytes)
    }

    /// One hop: a CLIENT span at the caller's pod around the callee's SERVER span.
    /// Returns the CLIENT span's end time.
    private mutating func call(
        from caller: Int, pod: Int, to callee: Int, calleePod: Int, parent: SpanID, traceID: TraceID,
        start: UInt64, requestID: String, spans: inout [EmittedSpan]
    ) -> UInt64 {
        let spanID = nextSpanID()
        let network = UInt64(logNormal(median: 300_000, sigma: 0.35, resolution: timeResolution))
        let failed = chance(configuration.errorRate)
        let served = serve(
            service: callee, pod: calleePod, callerPod: pod, parent: spanID, traceID: traceID,
            start: start + network / 2, requestID: requestID, failed: failed, spans: &spans)
        let end = served.end + network - network / 2

        var span = OTLPSpan()
        span.traceID = Data(traceID.bytes)
        span.spanID = Data(spanID.bytes)
        span.parentSpanID = Data(parent.bytes)
        span.name = "\(served.route.method) \(served.route.template)"
        span.kind = .client
        span.startTimeUnixNano = quantize(start)
        span.endTimeUnixNano = quantize(end)
        span.flags = 0x101
        let calleeService = mesh.services[callee]
        span.attributes = [
            KeyValue("http.request.method", served.route.method),
            KeyValue("url.path", served.path),
            KeyValue("http.response.status_code", Int64(served.status)),
            KeyValue("upstream_cluster", "outbound|\(calleeService.port)||\(mesh.host(of: callee))"),
            KeyValue("peer.address", "\(mesh.pods[calleePod].address):\(calleeService.port)"),
            KeyValue("peer.service", calleeService.name),
            KeyValue("user_agent.original", mesh.services[caller].userAgent),
            KeyValue("http.request.body.size", served.requestBytes),
            KeyValue("http.response.body.size", served.responseBytes),
            KeyValue("response_flags", served.flags),
            KeyValue("guid:x-request-id", requestID),
            KeyValue("component", "proxy"),
        ]
        if failed {
            span.status.code = .error
        }
        spans.append(EmittedSpan(pod: pod, span: span))
        truth.record(edge: GroundTruth.Edge(source: mesh.services[caller].name, target: calleeService.name),
                     duration: quantize(end) - quantize(start), failed: failed)
        return end
    }

    /// Groups spans by the pod that emitted them into OTLP export requests, one
    /// `ResourceSpans` per pod, at most `maxSpansPerRequest` spans per request.
    public func exportRequests(_ spans: [EmittedSpan], maxSpansPerRequest: Int = 512) -> [ExportTraceServiceRequest] {
        var byPod: [Int: [OTLPSpan]] = [:]
        var podOrder: [Int] = []
        for emitted in spans {
            if byPod[emitted.pod] == nil { podOrder.append(emitted.pod) }
            byPod[emitted.pod, default: []].append(emitted.span)
        }
        var requests: [ExportTraceServiceRequest] = []
        for pod in podOrder {
            let podSpans = byPod[pod]!
            var offset = 0
            while offset < podSpans.count {
                let chunk = podSpans[offset..<min(offset + maxSpansPerRequest, podSpans.count)]
                offset += chunk.count
                requests.append(exportRequest(pod: pod, spans: Array(chunk)))
            }
        }
        return requests
    }

    /// Export requests in the order a collector receives them from the sidecars: each
    /// pod's sidecar batches its spans as they end and sends a batch once it holds
    /// `maxSpansPerRequest` spans or its first span ended `flushInterval` nanoseconds
    /// ago (simulated time), as an exporter's batch processor does. A trace's spans
    /// thus arrive within about a flush interval of each other, each pod's in the
    /// order they ended.
    public func proxyExports(
        _ spans: [EmittedSpan], maxSpansPerRequest: Int = 512, flushInterval: UInt64 = 1_000_000_000
    ) -> [ExportTraceServiceRequest] {
        let ordered = spans.enumerated().sorted {
            ($0.element.span.endTimeUnixNano, $0.offset) < ($1.element.span.endTimeUnixNano, $1.offset)
        }
        var batches: [Int: (firstEnd: UInt64, spans: [OTLPSpan])] = [:]
        // Pods in the order their current batch began: the batch due first leads.
        var waiting: [(pod: Int, firstEnd: UInt64)] = []
        var waitingNext = 0
        var requests: [ExportTraceServiceRequest] = []
        func send(_ pod: Int) {
            guard let batch = batches.removeValue(forKey: pod) else { return }
            requests.append(exportRequest(pod: pod, spans: batch.spans))
        }
        for (_, emitted) in ordered {
            let end = emitted.span.endTimeUnixNano
            while waitingNext < waiting.count, waiting[waitingNext].firstEnd + flushInterval <= end {
                let (pod, firstEnd) = waiting[waitingNext]
                waitingNext += 1
                // A batch sent when it filled up has left; a newer one waits its own turn.
                if batches[pod]?.firstEnd == firstEnd { send(pod) }
            }
            if batches[emitted.pod] == nil {
                batches[emitted.pod] = (end, [])
                waiting.append((emitted.pod, end))
            }
            batches[emitted.pod]!.spans.append(emitted.span)
            if batches[emitted.pod]!.spans.count >= maxSpansPerRequest { send(emitted.pod) }
        }
        for (pod, firstEnd) in waiting[waitingNext...] where batches[pod]?.firstEnd == firstEnd { send(pod) }
        return requests
    }

    /// One export request of a pod's spans.
    private func exportRequest(pod: Int, spans: [OTLPSpan]) -> ExportTraceServiceRequest {
        var scopeSpans = ScopeSpans()
        scopeSpans.scope.name = "meshtrace.sidecar"
        scopeSpans.scope.version = "0.1.0"
        scopeSpans.spans = spans
        var resourceSpans = ResourceSpans()
        resourceSpans.resource = resource(of: pod)
        resourceSpans.scopeSpans = [scopeSpans]
        var request = ExportTraceServiceRequest()
        request.resourceSpans = [resourceSpans]
        return request
    }

    /// The OTLP resource of a pod's sidecar.
    public func resource(of pod: Int) -> OTLPResource {
        let definition = mesh.pods[pod]
        let service = mesh.services[definition.service]
        var resource = OTLPResource()
        resource.attributes = [
            KeyValue("service.name", service.name),
            KeyValue("service.version", service.version),
            KeyValue("service.namespace", service.namespace),
            KeyValue("k8s.namespace.name", service.namespace),
            KeyValue("k8s.pod.name", definition.name),
            KeyValue("k8s.node.name", definition.node),
            KeyValue("k8s.deployment.name", service.name),
            KeyValue("cloud.availability_zone", definition.zone),
            KeyValue("telemetry.sdk.name", "meshtrace-sim"),
        ]
        return resource
    }

    // Random draws that count the bits they put into the traffic (`truth.randomBits`).

    private var timeResolution: Double { Double(configuration.timestampResolution) }

    private mutating func uniform(_ range: ClosedRange<Int>) -> Int {
        truth.randomBits += log2(Double(range.count))
        return random.int(in: range)
    }

    private mutating func chance(_ p: Double) -> Bool {
        if p > 0 && p < 1 { truth.randomBits += -(p * log2(p) + (1 - p) * log2(1 - p)) }
        return random.chance(p)
    }

    /// A log-normal draw; it counts the entropy of its value rounded to `resolution`:
    /// the differential entropy ln(median) + ½ + ln(σ√(2π)) nats, less log2(resolution).
    private mutating func logNormal(median: Double, sigma: Double, resolution: Double) -> Double {
        let nats = Foundation.log(median / resolution) + 0.5 + Foundation.log(sigma * (2 * Double.pi).squareRoot())
        truth.randomBits += max(0, nats / Foundation.log(2.0))
        return random.logNormal(median: median, sigma: sigma)
    }

    private func quantize(_ time: UInt64) -> UInt64 {
        time / configuration.timestampResolution * configuration.timestampResolution
    }

    private mutating func pick(_ options: [Int]) -> Int {
        options[uniform(0...(options.count - 1))]
    }

    private mutating func nextSpanID() -> SpanID {
        truth.randomBits += 63
        return SpanID(random.next() | 1)
    }

    private mutating func uuid() -> String {
        truth.randomBits += 128
        let high = random.next()
        let low = random.next()
        let hex = TraceID(high: high, low: low).hex
        let characters = Array(hex)
        return String(characters[0..<8]) + "-" + String(characters[8..<12]) + "-" + String(characters[12..<16])
            + "-" + String(characters[16..<20]) + "-" + String(characters[20..<32])
    }
}

/// What MeshSim generated, computed from its own model rather than from the spans.
public struct GroundTruth: Sendable, Equatable {
    /// A caller → callee pair of services.
    public struct Edge: Hashable, Sendable, Comparable {
        public var source: String
        public var target: String

        public init(source: String, target: String) {
            self.source = source
            self.target = target
        }

        public static func < (lhs: Edge, rhs: Edge) -> Bool { (lhs.source, lhs.target) < (rhs.source, rhs.target) }
    }

    /// Requests, failures and exact latencies over one edge.
    public struct EdgeStats: Sendable, Equatable {
        public var requests = 0
        public var errors = 0
        /// Client-side durations, in nanoseconds, in generation order.
        public var durations: [UInt64] = []

        /// The exact nearest-rank percentile (`q` in 0…1), in nanoseconds.
        public func percentile(_ q: Double) -> UInt64 {
            let sorted = durations.sorted()
            guard !sorted.isEmpty else { return 0 }
            let rank = Int((q * Double(sorted.count)).rounded(.up))
            return sorted[min(max(rank, 1), sorted.count) - 1]
        }
    }

    /// Requests that entered the mesh.
    public var requests = 0
    /// Spans emitted.
    public var spans = 0
    /// Bits of randomness drawn into the spans: ids, choices, and log-normal
    /// latencies and sizes at the resolution they are stored with. Each draw can be
    /// read back from the spans, so no lossless encoding of them averages fewer bits
    /// (the rare heavy-tail multiplier is left out, so this slightly undercounts).
    public var randomBits = 0.0
    public var edges: [Edge: EdgeStats] = [:]

    public init() {}

    /// Hops per request, on average.
    public var hopsPerRequest: Double {
        requests == 0 ? 0 : Double(edges.values.reduce(0) { $0 + $1.requests }) / Double(requests)
    }

    public mutating func record(edge: Edge, duration: UInt64, failed: Bool) {
        edges[edge, default: EdgeStats()].requests += 1
        if failed { edges[edge]!.errors += 1 }
        edges[edge]!.durations.append(duration)
    }
}

extension MeshSim {
    /// Traffic as a collector receives it: `requests` requests entering the mesh at
    /// `rate` a second, a share `requestErrorRate` of which fail somewhere along their
    /// hops; each span is reported once it has ended, in batches every 100 ms. Each
    /// batch comes with the nanosecond it arrives at (simulated time).
    public static func arrivals(
        requests: Int, rate: Int, requestErrorRate: Double, seed: UInt64, start: UInt64 = 1_800_000_000_000_000_000
    ) -> [(batch: SpanBatch, at: UInt64)] {
        // A request fails when any of its hops does: about nine spans of work each.
        let perHop = 1 - Foundation.pow(1 - requestErrorRate, 1 / 9.0)
        var simulator = MeshSim(configuration: Configuration(seed: seed, errorRate: perHop))
        let tick: UInt64 = 100_000_000
        var byTick: [UInt64: [EmittedSpan]] = [:]
        for index in 0..<requests {
            for span in simulator.request(at: start + UInt64(index) * 1_000_000_000 / UInt64(max(1, rate))) {
                byTick[span.span.endTimeUnixNano / tick + 1, default: []].append(span)
            }
        }
        return byTick.keys.sorted().map { key in
            var batch = SpanBatch()
            for request in simulator.exportRequests(byTick[key]!) { _ = batch.append(request) }
            return (batch, key * tick)
        }
    }
}
