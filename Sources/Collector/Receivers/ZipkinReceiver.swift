import Foundation
import Hummingbird
import MeshCore
import NIOCore
import OTLPWire

/// Zipkin v2: `POST /api/v2/spans` with a JSON array of spans or a proto3
/// `ListOfSpans`, plain or gzip. Spans become OTLP as the OpenTelemetry
/// specification maps them, and are stored like any other; the answer is `202`
/// once they are durable.
struct ZipkinReceiver: Sendable {
    let ingest: TraceIngest
    let maxBodyBytes: Int
    /// Time a client has to send its body.
    let readTimeout: Duration
    let budget: IngestBudget
    let metrics: CollectorMetrics

    func register(on router: Router<IngestContext>) {
        router.post("/api/v2/spans") { request, context in
            await receive(request, peer: ingest.peer(at: context.remoteAddress))
        }
    }

    func receive(_ request: Request, peer: ConnectionPeer?) async -> Response {
        let contentType = request.headers[.contentType]?
            .split(separator: ";").first?.trimmingCharacters(in: .whitespaces).lowercased() ?? "application/json"
        let isProtobuf: Bool
        switch contentType {
        case "application/json": isProtobuf = false
        case "application/x-protobuf", "application/protobuf": isProtobuf = true
        default:
            return failure(.unsupportedMediaType, "unsupported content type \(contentType.debugDescription); send application/json or application/x-protobuf")
        }
        let contentEncoding = request.headers[.contentEncoding]?.trimmingCharacters(in: .whitespaces).lowercased() ?? "identity"
        guard ["identity", "gzip", "x-gzip"].contains(contentEncoding) else {
            return failure(.unsupportedMediaType, "unsupported content encoding \(contentEncoding.debugDescription); send gzip or identity")
        }
        let body: HTTPBody
        do {
            body = try await HTTPBody.read(request, encoding: contentEncoding, maxBytes: maxBodyBytes, timeout: readTimeout, budget: budget)
        } catch {
            switch error {
            case .tooLarge(let message): return failure(.contentTooLarge, message)
            case .undecodable(let message): return failure(.badRequest, message)
            case .timedOut(let message): return failure(.requestTimeout, message)
            case .overBudget:
                var response = failure(.tooManyRequests, "the collector's memory budget for requests in flight is spent; retry later")
                response.headers[.retryAfter] = String(budget.retryAfter.components.seconds)
                return response
            }
        }
        defer { budget.release(bodyBytes: body.charged) }
        let bytes = body.bytes
        let spans: [ZipkinSpan]
        do {
            spans = isProtobuf ? try ZipkinSpan.decodeProto3(bytes) : try ZipkinSpan.decodeJSON(bytes)
        } catch {
            return failure(.badRequest, "cannot decode Zipkin v2 spans: \(error)")
        }
        let exportRequest = ZipkinSpan.exportRequest(spans)
        do {
            let response = try await ingest.export(DecodedTraceExport(exportRequest), from: .zipkin, peer: peer)
            if response.hasPartialSuccess {
                return Response(status: .accepted, headers: [.contentType: "text/plain"], body: ResponseBody(byteBuffer: ByteBuffer(
                    string: "\(response.partialSuccess.rejectedSpans) spans refused: \(response.partialSuccess.errorMessage)\n")))
            }
            return Response(status: .accepted)
        } catch {
            var response = failure(.serviceUnavailable, error.message)
            response.headers[.retryAfter] = String(error.retryAfter.components.seconds)
            return response
        }
    }

    private func failure(_ status: HTTPResponse.Status, _ message: String) -> Response {
        if let refusal = CollectorMetrics.refusal(for: status.code) { metrics.refused(.zipkin, refusal) }
        return Response(status: status, headers: [.contentType: "text/plain"], body: ResponseBody(byteBuffer: ByteBuffer(string: message + "\n")))
    }
}

/// One Zipkin v2 span, as JSON or proto3 carries it.
struct ZipkinSpan: Sendable {
    struct Endpoint: Sendable {
        var serviceName: String?
        var address: String?
        var port: Int?
    }

    var traceID: TraceID
    var id: SpanID
    var parentID: SpanID?
    var name: String?
    var kind: String?
    /// Microseconds since the Unix epoch.
    var timestamp: UInt64?
    /// Microseconds.
    var duration: UInt64?
    var localEndpoint: Endpoint?
    var remoteEndpoint: Endpoint?
    var annotations: [(timestamp: UInt64, value: String)] = []
    var tags: [(key: String, value: String)] = []
    var shared = false

    struct DecodingError: Error, CustomStringConvertible {
        var description: String
    }
}

// MARK: - JSON

extension ZipkinSpan {
    private struct JSONSpan: Decodable {
        struct JSONEndpoint: Decodable {
            var serviceName: String?
            var ipv4: String?
            var ipv6: String?
            var port: Int?
        }

        struct JSONAnnotation: Decodable {
            var timestamp: UInt64
            var value: String
        }

        var traceId: String
        var id: String
        var parentId: String?
        var name: String?
        var kind: String?
        var timestamp: UInt64?
        var duration: UInt64?
        var localEndpoint: JSONEndpoint?
        var remoteEndpoint: JSONEndpoint?
        var annotations: [JSONAnnotation]?
        var tags: [String: String]?
        var shared: Bool?
    }

    /// Decodes a JSON array of Zipkin v2 spans.
    static func decodeJSON(_ bytes: [UInt8]) throws -> [ZipkinSpan] {
        let decoded: [JSONSpan]
        do {
            decoded = try JSONDecoder().decode([JSONSpan].self, from: Data(bytes))
        } catch {
            throw DecodingError(description: "not a JSON array of Zipkin v2 spans (\(error))")
        }
        return try decoded.enumerated().map { index, span in
            guard let traceID = TraceID(hex: span.traceId) else {
                throw DecodingError(description: "span \(index): traceId \(span.traceId.debugDescription) is not 16 or 32 hex digits")
            }
            guard let id = SpanID(hex: span.id) else {
                throw DecodingError(description: "span \(index): id \(span.id.debugDescription) is not 16 hex digits")
            }
            var parentID: SpanID?
            if let parent = span.parentId {
                guard let parsed = SpanID(hex: parent) else {
                    throw DecodingError(description: "span \(index): parentId \(parent.debugDescription) is not 16 hex digits")
                }
                parentID = parsed
            }
            func endpoint(_ json: JSONSpan.JSONEndpoint?) -> Endpoint? {
                json.map { Endpoint(serviceName: $0.serviceName, address: $0.ipv4 ?? $0.ipv6, port: $0.port) }
            }
            return ZipkinSpan(
                traceID: traceID, id: id, parentID: parentID, name: span.name, kind: span.kind,
                timestamp: span.timestamp, duration: span.duration,
                localEndpoint: endpoint(span.localEndpoint), remoteEndpoint: endpoint(span.remoteEndpoint),
                annotations: (span.annotations ?? []).map { ($0.timestamp, $0.value) },
                tags: (span.tags ?? [:]).sorted { $0.key < $1.key }.map { ($0.key, $0.value) },
                shared: span.shared ?? false)
        }
    }
}

// MARK: - proto3

extension ZipkinSpan {
    /// Decodes a proto3 `zipkin.proto3.ListOfSpans`.
    static func decodeProto3(_ bytes: [UInt8]) throws -> [ZipkinSpan] {
        try bytes.withUnsafeBufferPointer { buffer in
            var list = WireReader(buffer, 0..<buffer.count)
            var spans: [ZipkinSpan] = []
            while !list.isAtEnd {
                let (field, wireType) = try next(&list)
                if field == 1 && wireType == 2 {
                    spans.append(try span(buffer, try payload(&list), index: spans.count))
                } else {
                    try skip(&list, wireType)
                }
            }
            return spans
        }
    }

    private static func span(_ buffer: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, index: Int) throws -> ZipkinSpan {
        var reader = WireReader(buffer, range)
        var traceID: TraceID?
        var id: SpanID?
        var span = ZipkinSpan(traceID: .zero, id: .zero)
        func fail(_ what: String) -> DecodingError { DecodingError(description: "span \(index): \(what)") }
        while !reader.isAtEnd {
            let (field, wireType) = try next(&reader)
            switch (field, wireType) {
            case (1, 2):
                let bytes = buffer[try payload(&reader)]
                guard bytes.count == 8 || bytes.count == 16 else { throw fail("trace_id is \(bytes.count) bytes, not 8 or 16") }
                traceID = bytes.count == 16 ? TraceID(bytes: bytes) : TraceID(bytes: [UInt8](repeating: 0, count: 8) + bytes)
            case (2, 2):
                guard let parent = SpanID(bytes: buffer[try payload(&reader)]) else { throw fail("parent_id is not 8 bytes") }
                span.parentID = parent
            case (3, 2):
                guard let parsed = SpanID(bytes: buffer[try payload(&reader)]) else { throw fail("id is not 8 bytes") }
                id = parsed
            case (4, 0):
                let kinds = [1: "CLIENT", 2: "SERVER", 3: "PRODUCER", 4: "CONSUMER"]
                span.kind = kinds[Int(truncatingIfNeeded: try varint(&reader))]
            case (5, 2): span.name = try string(buffer, &reader)
            case (6, 1): span.timestamp = try fixed64(&reader)
            case (7, 0): span.duration = try varint(&reader)
            case (8, 2): span.localEndpoint = try endpoint(buffer, try payload(&reader))
            case (9, 2): span.remoteEndpoint = try endpoint(buffer, try payload(&reader))
            case (10, 2):
                var annotation = WireReader(buffer, try payload(&reader))
                var timestamp: UInt64 = 0
                var value = ""
                while !annotation.isAtEnd {
                    let (field, wireType) = try next(&annotation)
                    switch (field, wireType) {
                    case (1, 1): timestamp = try fixed64(&annotation)
                    case (2, 2): value = try string(buffer, &annotation)
                    default: try skip(&annotation, wireType)
                    }
                }
                span.annotations.append((timestamp, value))
            case (11, 2):
                var entry = WireReader(buffer, try payload(&reader))
                var key = ""
                var value = ""
                while !entry.isAtEnd {
                    let (field, wireType) = try next(&entry)
                    switch (field, wireType) {
                    case (1, 2): key = try string(buffer, &entry)
                    case (2, 2): value = try string(buffer, &entry)
                    default: try skip(&entry, wireType)
                    }
                }
                span.tags.append((key, value))
            case (13, 0): span.shared = try varint(&reader) != 0
            default: try skip(&reader, wireType)
            }
        }
        guard let traceID else { throw fail("has no trace_id") }
        guard let id else { throw fail("has no id") }
        span.traceID = traceID
        span.id = id
        span.tags.sort { $0.key < $1.key }
        return span
    }

    private static func endpoint(_ buffer: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) throws -> Endpoint {
        var reader = WireReader(buffer, range)
        var endpoint = Endpoint()
        while !reader.isAtEnd {
            let (field, wireType) = try next(&reader)
            switch (field, wireType) {
            case (1, 2): endpoint.serviceName = try string(buffer, &reader)
            case (2, 2):
                let bytes = buffer[try payload(&reader)]
                if bytes.count == 4 { endpoint.address = bytes.map(String.init).joined(separator: ".") }
            case (3, 2):
                let bytes = Array(buffer[try payload(&reader)])
                if bytes.count == 16, endpoint.address == nil {
                    endpoint.address = stride(from: 0, to: 16, by: 2)
                        .map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }.joined(separator: ":")
                }
            case (4, 0): endpoint.port = Int(Int32(truncatingIfNeeded: try varint(&reader)))
            default: try skip(&reader, wireType)
            }
        }
        return endpoint
    }

    private static func next(_ reader: inout WireReader) throws -> (UInt64, UInt8) {
        guard let tag = reader.tag() else { throw DecodingError(description: "malformed field tag at byte \(reader.position)") }
        return tag
    }

    private static func payload(_ reader: inout WireReader) throws -> Range<Int> {
        guard let range = reader.lengthDelimited() else { throw DecodingError(description: "truncated field at byte \(reader.position)") }
        return range
    }

    private static func varint(_ reader: inout WireReader) throws -> UInt64 {
        guard let value = reader.varint() else { throw DecodingError(description: "malformed varint at byte \(reader.position)") }
        return value
    }

    private static func fixed64(_ reader: inout WireReader) throws -> UInt64 {
        guard let value = reader.fixed64() else { throw DecodingError(description: "truncated fixed64 at byte \(reader.position)") }
        return value
    }

    private static func string(_ buffer: UnsafeBufferPointer<UInt8>, _ reader: inout WireReader) throws -> String {
        String(decoding: buffer[try payload(&reader)], as: UTF8.self)
    }

    private static func skip(_ reader: inout WireReader, _ wireType: UInt8) throws {
        guard reader.skip(wireType: wireType) else { throw DecodingError(description: "malformed field at byte \(reader.position)") }
    }
}

// MARK: - To OTLP

extension ZipkinSpan {
    /// Builds one OTLP request: a resource per local endpoint (its service name), a
    /// scope per `otel.scope.name` tag. Tags become string attributes;
    /// `otel.status_code` and `error` the status; annotations events; the remote
    /// endpoint `peer.service`, `network.peer.address` and `network.peer.port`.
    /// A SERVER span that shares its id with its CLIENT (`shared`, as Envoy and
    /// other B3 proxies send them) gets an id of its own, derived from the shared
    /// one, with the CLIENT span as parent, so every span of a trace has its own id.
    static func exportRequest(_ spans: [ZipkinSpan]) -> ExportTraceServiceRequest {
        var resources: [String: ResourceSpans] = [:]
        var order: [String] = []
        for zipkin in spans {
            let service = zipkin.localEndpoint?.serviceName.flatMap { $0.isEmpty ? nil : $0 } ?? "unknown_service"
            if resources[service] == nil {
                order.append(service)
                var resourceSpans = ResourceSpans()
                resourceSpans.resource.attributes = [KeyValue("service.name", service)]
                resources[service] = resourceSpans
            }
            var tags = zipkin.tags
            func take(_ key: String) -> String? {
                guard let index = tags.firstIndex(where: { $0.key == key }) else { return nil }
                return tags.remove(at: index).value
            }
            var scope = InstrumentationScope()
            scope.name = take("otel.scope.name") ?? take("otel.library.name") ?? ""
            scope.version = take("otel.scope.version") ?? take("otel.library.version") ?? ""

            var span = OTLPSpan()
            span.traceID = Data(zipkin.traceID.bytes)
            span.spanID = Data(zipkin.id.bytes)
            if let parent = zipkin.parentID { span.parentSpanID = Data(parent.bytes) }
            if zipkin.shared && zipkin.kind == "SERVER" {
                span.parentSpanID = Data(zipkin.id.bytes)
                span.spanID = Data(Self.serverID(sharing: zipkin.id).bytes)
            }
            span.name = zipkin.name ?? ""
            switch zipkin.kind {
            case "CLIENT": span.kind = .client
            case "SERVER": span.kind = .server
            case "PRODUCER": span.kind = .producer
            case "CONSUMER": span.kind = .consumer
            default: span.kind = .internal
            }
            let start = (zipkin.timestamp ?? 0).multipliedReportingOverflow(by: 1000)
            let duration = (zipkin.duration ?? 0).multipliedReportingOverflow(by: 1000)
            span.startTimeUnixNano = start.overflow ? 0 : start.partialValue
            span.endTimeUnixNano = span.startTimeUnixNano &+ (duration.overflow ? 0 : duration.partialValue)

            let statusCode = take("otel.status_code")
            let description = take("otel.status_description")
            let error = statusCode == nil || statusCode == "ERROR" ? take("error") : nil
            switch statusCode {
            case "ERROR": span.status.code = .error
            case "OK": span.status.code = .ok
            default: if error != nil { span.status.code = .error }
            }
            if span.status.code == .error, let message = description ?? error, message != "true" {
                span.status.message = message
            }

            span.attributes = tags.map { KeyValue($0.key, $0.value) }
            if let remote = zipkin.remoteEndpoint {
                if let name = remote.serviceName, !name.isEmpty { span.attributes.append(KeyValue("peer.service", name)) }
                if let address = remote.address { span.attributes.append(KeyValue("network.peer.address", address)) }
                if let port = remote.port, port > 0 { span.attributes.append(KeyValue("network.peer.port", Int64(port))) }
            }
            span.events = zipkin.annotations.map { annotation in
                var event = Opentelemetry_Proto_Trace_V1_Span.Event()
                let time = annotation.timestamp.multipliedReportingOverflow(by: 1000)
                event.timeUnixNano = time.overflow ? 0 : time.partialValue
                event.name = annotation.value
                return event
            }

            if let index = resources[service]!.scopeSpans.firstIndex(where: { $0.scope == scope }) {
                resources[service]!.scopeSpans[index].spans.append(span)
            } else {
                var scopeSpans = ScopeSpans()
                scopeSpans.scope = scope
                scopeSpans.spans = [span]
                resources[service]!.scopeSpans.append(scopeSpans)
            }
        }
        var request = ExportTraceServiceRequest()
        request.resourceSpans = order.map { resources[$0]! }
        return request
    }

    /// The id given to a SERVER span that shares `id` with its CLIENT span: a fixed
    /// mix of it, so a retried request gets the same id.
    static func serverID(sharing id: SpanID) -> SpanID {
        var mixed = id.value ^ 0x9E37_79B9_7F4A_7C15
        mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
        mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
        mixed ^= mixed >> 31
        return SpanID(mixed == 0 ? 1 : mixed)
    }
}
