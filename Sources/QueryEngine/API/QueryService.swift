import Foundation
import GoldenSignals
import MeshCore
import OTLPWire
import SegmentStore

/// The query API, independent of any HTTP server: a GET path with its parameters in,
/// a status and a body out. The collector serves it over HTTP; the CLI calls it
/// directly on a data directory, so both answer alike.
///
/// Three dialects: Jaeger's v1 JSON API and Tempo's API, as Grafana's data sources call
/// them, and meshtrace's native JSON under `/api/v1/`.
public struct QueryService: Sendable {
    /// The store at the moment of each request.
    public let engine: @Sendable () -> QueryEngine
    public let signals: SignalQueries

    public init(engine: @escaping @Sendable () -> QueryEngine, golden: GoldenSignals) {
        self.engine = engine
        signals = SignalQueries(golden: golden)
    }

    public struct Response: Sendable {
        public var status: Int
        public var contentType: String
        public var body: [UInt8]

        public init(status: Int, contentType: String, body: [UInt8]) {
            self.status = status
            self.contentType = contentType
            self.body = body
        }

        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// The answer to `GET path?parameters`; `path` is percent-encoded as sent.
    public func answer(path: String, parameters: QueryParameters, accept: String = "") -> Response {
        let segments = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        let dialect: Dialect = segments.starts(with: ["api", "v1"]) ? .native
            : segments.starts(with: ["api", "v3"]) ? .jaegerV3
            : Self.tempoRoutes.contains(where: { segments.starts(with: $0) }) ? .tempo : .jaeger
        do {
            return try route(segments, parameters, accept: accept.lowercased())
        } catch let invalid as QueryParameters.Invalid {
            return error(400, invalid.message, dialect)
        } catch let invalid as TraceQL.ParseError {
            return error(400, "parameter 'q': \(invalid)", dialect)
        } catch let missing as NotFound {
            return error(404, missing.message, dialect)
        } catch {
            return self.error(500, "cannot read the store: \(error)", dialect)
        }
    }

    private static let tempoRoutes: [[String]] = [["api", "echo"], ["api", "v2"], ["api", "search"], ["api", "status"]]

    private enum Dialect { case jaeger, jaegerV3, tempo, native }

    private struct NotFound: Error { var message: String }

    private func route(_ path: [String], _ parameters: QueryParameters, accept: String) throws -> Response {
        switch path {
        // Jaeger v1
        case ["api", "services"]:
            let services = signals.services(.init(window: try jaegerLookback(parameters)))
            return json(JaegerJSON.Envelope(data: services, total: services.count))
        case let p where p.count == 4 && p[0] == "api" && p[1] == "services" && p[3] == "operations":
            let names = Set(signals.operations(of: Self.decoded(p[2]), .init(window: try jaegerLookback(parameters))).map(\.name)).sorted()
            return json(JaegerJSON.Envelope(data: names, total: names.count))
        case ["api", "operations"]:
            guard let service = parameters["service"] else { throw QueryParameters.Invalid("parameter 'service' is required") }
            let kind = try parameters["spanKind"].map { text throws(QueryParameters.Invalid) -> SpanKind in
                guard let kind = SpanKind.allCases.first(where: { $0.name == text.lowercased() }) else {
                    throw QueryParameters.Invalid("parameter 'spanKind' must be server, client, producer, consumer or internal, got \(text.debugDescription)")
                }
                return kind
            }
            let operations = signals.operations(of: service, kind: kind, .init(window: try jaegerLookback(parameters)))
                .map { JSONValue.object(["name": .string($0.name), "spanKind": .string($0.span_kind)]) }
            return json(JaegerJSON.Envelope(data: operations, total: operations.count))
        case ["api", "traces"]:
            return try jaegerSearch(parameters)
        case let p where p.count == 3 && p[0] == "api" && p[1] == "traces":
            return try traceByID(p[2], accept: accept, shape: .jaeger)
        case ["api", "dependencies"]:
            let end = try parameters.epoch("endTs", scale: 1_000_000) ?? TimeWindow.now()
            let lookback = try parameters.epoch("lookback", scale: 1_000_000) ?? 86_400_000_000_000
            let links = signals.dependencies(.init(window: (end > lookback ? end - lookback : 0)...end), service: parameters["service"])
                .map { JSONValue.object(["parent": .string($0.parent), "child": .string($0.child), "callCount": .int(Int64($0.calls))]) }
            return json(JaegerJSON.Envelope(data: links))

        // Jaeger api_v3 (OTLP/JSON)
        case ["api", "v3", "services"]:
            return json(JSONValue.object(["services": .array(signals.services(.init(window: 0...TimeWindow.now())).map(JSONValue.string))]))
        case ["api", "v3", "operations"]:
            guard let service = parameters.first("service") else { throw QueryParameters.Invalid("parameter 'service' is required") }
            let kind = parameters.first("spanKind", "span_kind")?.lowercased()
            let operations = signals.operations(of: service, .init(window: 0...TimeWindow.now()))
                .filter { kind == nil || $0.span_kind == kind }
                .map { JSONValue.object(["name": .string($0.name), "spanKind": .string($0.span_kind)]) }
            return json(JSONValue.object(["operations": .array(operations)]))
        case let p where p.count == 4 && p[0] == "api" && p[1] == "v3" && p[2] == "traces":
            guard let traceID = TraceID(hex: p[3]), traceID != .zero else {
                throw QueryParameters.Invalid("trace id \(p[3].debugDescription) is not 16 or 32 hex digits")
            }
            guard let spans = try engine().trace(traceID) else { throw NotFound(message: "No traces found") }
            return try otlpResult([spans])
        case ["api", "v3", "traces"]:
            return try jaegerV3Search(parameters)

        // Tempo
        case ["api", "echo"]:
            return Response(status: 200, contentType: "text/plain", body: Array("echo".utf8))
        case ["api", "status", "buildinfo"]:
            return json(JSONValue.object(["version": .string(Self.version), "revision": .string(""), "branch": .string(""),
                                          "buildDate": .string(""), "buildUser": .string(""), "goVersion": .string("")]))
        case let p where p.count == 4 && p[0] == "api" && p[1] == "v2" && p[2] == "traces":
            return try traceByID(p[3], accept: accept, shape: .tempoV2)
        case ["api", "search"]:
            return try tempoSearch(parameters)
        case ["api", "search", "tags"]:
            let names = try tagNames(parameters)
            let scope = parameters["scope"] ?? "all"
            let selected = scope == "all" ? names.flatMap(\.tags) : names.filter { $0.scope == scope }.flatMap(\.tags)
            return json(JSONValue.object(["tagNames": .array(Array(Set(selected)).sorted().map(JSONValue.string))]))
        case ["api", "v2", "search", "tags"]:
            let names = try tagNames(parameters)
            let scope = parameters["scope"]
            return json(JSONValue.object(["scopes": .array(names.filter { scope == nil || scope == "all" || $0.scope == scope }.map {
                .object(["name": .string($0.scope), "tags": .array($0.tags.map(JSONValue.string))])
            })]))
        case let p where p.count == 5 && p[0] == "api" && p[1] == "search" && p[2] == "tag" && p[4] == "values":
            let values = try tagValues(Self.decoded(Self.decoded(p[3])), parameters)
            return json(JSONValue.object(["tagValues": .array(values.map { .string($0.value) })]))
        case let p where p.count == 6 && p[0] == "api" && p[1] == "v2" && p[2] == "search" && p[3] == "tag" && p[5] == "values":
            let values = try tagValues(Self.decoded(Self.decoded(p[4])), parameters)
            return json(JSONValue.object(["tagValues": .array(values.map { .object(["type": .string($0.type), "value": .string($0.value)]) })]))

        // Native
        case ["api", "v1", "services"]:
            return json(JSONValue.object(["services": .array(signals.services(try scope(parameters)).map(JSONValue.string))]))
        case ["api", "v1", "operations"]:
            guard let service = parameters["service"] else { throw QueryParameters.Invalid("parameter 'service' is required") }
            return json(["operations": signals.operations(of: service, try scope(parameters))])
        case ["api", "v1", "topology"]:
            return try topology(parameters)
        case ["api", "v1", "edges"]:
            return json(["edges": signals.edges(try scope(parameters), service: parameters["service"])])
        case ["api", "v1", "stat"]:
            let services = parameters.all("service").filter { !$0.isEmpty }
            return json(["stats": signals.stat(try scope(parameters), services: services.isEmpty ? nil : Set(services))])
        case ["api", "v1", "latency"]:
            let by = try parameters["by"].map { text throws(QueryParameters.Invalid) -> SignalQueries.Grouping in
                guard let grouping = SignalQueries.Grouping(rawValue: text) else {
                    throw QueryParameters.Invalid("parameter 'by' must be service, operation, edge or version, got \(text.debugDescription)")
                }
                return grouping
            } ?? .service
            let scope = try scope(parameters)
            let step = try parameters.duration("step")
            if let step, step > 0, (scope.window.upperBound - scope.window.lowerBound) / step > 10_000 {
                throw QueryParameters.Invalid("parameter 'step' is too small for the window: more than 10000 points")
            }
            return json(["groups": signals.latency(scope, by: by, service: parameters["service"], step: step)])
        case ["api", "v1", "audit"]:
            return json(signals.audit(try scope(parameters)))
        case ["api", "v1", "compare"]:
            guard let service = parameters["service"] else { throw QueryParameters.Invalid("parameter 'service' is required") }
            return json(Comparison(service: service, versions: signals.compare(service: service, try scope(parameters))))
        case ["api", "v1", "search"]:
            return try nativeSearch(parameters)
        default:
            throw NotFound(message: "no such route: /\(path.joined(separator: "/"))")
        }
    }

    static let version = "0.1.0"

    // MARK: Windows

    private func scope(_ parameters: QueryParameters) throws(QueryParameters.Invalid) -> SignalQueries.Scope {
        SignalQueries.Scope(window: try parameters.window(), namespace: parameters["namespace"])
    }

    /// Jaeger's services and operations look back as far as the store reaches, unless
    /// `lookback` (ms) or `start`/`end` (µs) narrow it.
    private func jaegerLookback(_ parameters: QueryParameters) throws(QueryParameters.Invalid) -> ClosedRange<UInt64> {
        let end = try parameters.epoch("end", scale: 1_000) ?? TimeWindow.now()
        if let start = try parameters.epoch("start", scale: 1_000) { return min(start, end)...end }
        if let lookback = try parameters.epoch("lookback", scale: 1_000_000) { return (end > lookback ? end - lookback : 0)...end }
        return 0...end
    }

    // MARK: Trace by id

    private enum TraceShape { case jaeger, tempoV2 }

    private func traceByID(_ text: String, accept: String, shape: TraceShape) throws -> Response {
        guard let traceID = TraceID(hex: text) ?? Self.base64TraceID(text), traceID != .zero else {
            throw QueryParameters.Invalid("trace id \(text.debugDescription) is not 16 or 32 hex digits")
        }
        guard let spans = try engine().trace(traceID) else { throw NotFound(message: "trace not found") }
        let data = try spans.tracesData()
        let wantsProtobuf = accept.contains("application/protobuf") || accept.contains("application/x-protobuf")
        switch (shape, wantsProtobuf) {
        case (.jaeger, true):
            // Tempo's v1 `tempopb.Trace` is wire-identical to OTLP `TracesData`.
            return Response(status: 200, contentType: "application/protobuf", body: try data.serializedBytes())
        case (.jaeger, false):
            return json(JaegerJSON.Envelope(data: [try JaegerJSON.trace(spans)]))
        case (.tempoV2, true):
            // `TraceByIDResponse`: field 1, the trace; status COMPLETE is proto3's zero and not written.
            let trace: [UInt8] = try data.serializedBytes()
            var body = ByteWriter(capacity: trace.count + 6)
            body.write(UInt8(0x0A))
            body.write(lengthPrefixed: trace)
            return Response(status: 200, contentType: "application/protobuf", body: body.bytes)
        case (.tempoV2, false):
            let otlp = try OTLPJSON.encode(data)
            return Response(status: 200, contentType: "application/json", body: Array("{\"trace\":".utf8) + Array(otlp) + [UInt8(ascii: "}")])
        }
    }

    /// Jaeger also accepts trace ids in base64 (16 bytes).
    private static func base64TraceID(_ text: String) -> TraceID? {
        guard text.count == 24, let data = Data(base64Encoded: text) else { return nil }
        return TraceID(bytes: Array(data))
    }

    // MARK: Search

    private func jaegerSearch(_ parameters: QueryParameters) throws -> Response {
        let ids = parameters.all("traceID").filter { !$0.isEmpty }
        if !ids.isEmpty {
            var traces: [JaegerJSON.Trace] = []
            var errors: [JaegerJSON.ErrorEntry] = []
            for text in ids {
                guard let id = TraceID(hex: text), id != .zero else { throw QueryParameters.Invalid("parameter 'traceID' must be 16 or 32 hex digits, got \(text.debugDescription)") }
                if let spans = try engine().trace(id) { traces.append(try JaegerJSON.trace(spans)) } else {
                    errors.append(.init(code: 404, msg: "trace not found: \(text)"))
                }
            }
            return json(JaegerJSON.Envelope(data: traces, errors: errors.isEmpty ? nil : errors))
        }
        guard let service = parameters["service"] else { throw QueryParameters.Invalid("parameter 'service' is required") }
        var conditions: [TraceQL.Condition] = [.compare(.serviceName, .equal, .string(service))]
        if let operation = parameters["operation"] { conditions.append(.compare(.name, .equal, .string(operation))) }
        for (key, value) in try Self.jaegerTags(parameters) { conditions.append(Self.tagCondition(key, value)) }
        let minimum = try parameters.duration("minDuration")
        let maximum = try parameters.duration("maxDuration")
        if let minimum, let maximum, maximum < minimum {
            throw QueryParameters.Invalid("parameter 'maxDuration' must be at least 'minDuration'")
        }
        conditions += Self.durationConditions(minimum: minimum, maximum: maximum)
        let end = try parameters.epoch("end", scale: 1_000) ?? TimeWindow.now()
        let start = try parameters.epoch("start", scale: 1_000) ?? (end > 2 * 86_400_000_000_000 ? end - 2 * 86_400_000_000_000 : 0)
        guard start <= end else { throw QueryParameters.Invalid("parameter 'start' must not be after 'end'") }
        let limit = try parameters.integer("limit", default: 100, in: 0...100_000)!
        let found = try engine().search(TraceSearch(query: .spanset(.all(conditions)), window: start...end, limit: limit == 0 ? 100 : limit))
        return json(JaegerJSON.Envelope(data: try found.map { try JaegerJSON.trace($0.spans) }))
    }

    /// Jaeger's api_v3 search: `query.service_name`, `query.operation_name`,
    /// `query.attributes` (a JSON object), `query.duration_min`/`max` (Go durations),
    /// `query.start_time_min`/`max` (RFC 3339, required), `query.num_traces`; camelCase
    /// names too. All matching traces in one `resourceSpans`; none is a 404.
    private func jaegerV3Search(_ parameters: QueryParameters) throws -> Response {
        func value(_ snake: String, _ camel: String) -> String? { parameters.first("query.\(snake)", "query.\(camel)") }
        guard let service = value("service_name", "serviceName") else { throw QueryParameters.Invalid("parameter 'query.service_name' is required") }
        var conditions: [TraceQL.Condition] = [.compare(.serviceName, .equal, .string(service))]
        if let operation = value("operation_name", "operationName") { conditions.append(.compare(.name, .equal, .string(operation))) }
        if let text = value("attributes", "attributes") {
            guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
                throw QueryParameters.Invalid("parameter 'query.attributes' must be a JSON object, got \(text.debugDescription)")
            }
            for key in object.keys.sorted() { conditions.append(Self.tagCondition(key, "\(object[key]!)")) }
        }
        for (snake, camel, op) in [("duration_min", "durationMin", TraceQL.Operator.greaterOrEqual), ("duration_max", "durationMax", .lessOrEqual)] {
            guard let text = value(snake, camel) else { continue }
            guard let nanoseconds = DurationText.nanoseconds(text) else {
                throw QueryParameters.Invalid("parameter 'query.\(snake)' must be a duration like 100ms, got \(text.debugDescription)")
            }
            conditions.append(.compare(.duration, op, .duration(nanoseconds)))
        }
        var bounds: [UInt64] = []
        for (snake, camel) in [("start_time_min", "startTimeMin"), ("start_time_max", "startTimeMax")] {
            guard let text = value(snake, camel) else { throw QueryParameters.Invalid("parameter 'query.\(snake)' is required") }
            guard let time = TimeWindow.rfc3339Nanoseconds(text) else {
                throw QueryParameters.Invalid("parameter 'query.\(snake)' must be RFC 3339, got \(text.debugDescription)")
            }
            bounds.append(time)
        }
        guard bounds[0] <= bounds[1] else { throw QueryParameters.Invalid("parameter 'query.start_time_min' must not be after 'query.start_time_max'") }
        let limit = try parameters.integer("query.num_traces", default: nil, in: 1...100_000)
            ?? parameters.integer("query.numTraces", default: 20, in: 1...100_000)!
        let found = try engine().search(TraceSearch(query: .spanset(.all(conditions)), window: bounds[0]...bounds[1], limit: limit))
        guard !found.isEmpty else { throw NotFound(message: "No traces found") }
        return try otlpResult(found.map(\.spans))
    }

    /// `{"result": OTLP/JSON TracesData}` of the traces, as Jaeger's api_v3 answers.
    private func otlpResult(_ traces: [SpanBatch]) throws -> Response {
        var data = TracesData()
        for spans in traces { data.resourceSpans += try spans.tracesData().resourceSpans }
        let otlp = try OTLPJSON.encode(data)
        return Response(status: 200, contentType: "application/json", body: Array("{\"result\":".utf8) + Array(otlp) + [UInt8(ascii: "}")])
    }

    /// A span at least `minimum` and at most `maximum` long (nanoseconds), where given.
    private static func durationConditions(minimum: UInt64?, maximum: UInt64?) -> [TraceQL.Condition] {
        (minimum.map { [.compare(.duration, .greaterOrEqual, .duration($0))] } ?? [])
            + (maximum.map { [.compare(.duration, .lessOrEqual, .duration($0))] } ?? [])
    }

    /// Jaeger's `tags` (JSON objects, repeatable) and `tag` (`key:value`, repeatable).
    private static func jaegerTags(_ parameters: QueryParameters) throws(QueryParameters.Invalid) -> [(String, String)] {
        var tags: [(String, String)] = []
        for text in parameters.all("tags") where !text.isEmpty {
            guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
                throw QueryParameters.Invalid("parameter 'tags' must be a JSON object of strings, got \(text.debugDescription)")
            }
            for key in object.keys.sorted() { tags.append((key, "\(object[key]!)")) }
        }
        for text in parameters.all("tag") where !text.isEmpty {
            guard let colon = text.firstIndex(of: ":") else {
                throw QueryParameters.Invalid("parameter 'tag' must be key:value, got \(text.debugDescription)")
            }
            tags.append((String(text[..<colon]), String(text[text.index(after: colon)...])))
        }
        return tags
    }

    /// A Jaeger tag filter: the tags Jaeger derives from span fields, else an attribute of the span or its resource.
    private static func tagCondition(_ key: String, _ value: String) -> TraceQL.Condition {
        switch (key, value) {
        case ("error", "true"): return .compare(.status, .equal, .status(.error))
        case ("error", "false"): return .compare(.status, .notEqual, .status(.error))
        case ("span.kind", _): return .compare(.kind, .equal, .kind(SpanKind.allCases.first { $0.name == value } ?? .unspecified))
        case ("otel.status_code", _):
            let code: StatusCode = value == "ERROR" ? .error : value == "OK" ? .ok : .unset
            return .compare(.status, .equal, .status(code))
        default: return .compare(.attribute(.any, key), .equal, .string(value))
        }
    }

    private func tempoSearch(_ parameters: QueryParameters) throws -> Response {
        let query: TraceQL
        if let text = parameters["q"] {
            query = try TraceQL.parse(text)
        } else {
            var conditions: [TraceQL.Condition] = []
            if let tags = parameters["tags"] {
                for (key, value) in try Self.logfmt(tags) {
                    switch key {
                    case "service.name": conditions.append(.compare(.serviceName, .equal, .string(value)))
                    case "name": conditions.append(.compare(.name, .equal, .string(value)))
                    case "status.code", "status": conditions.append(.compare(.status, .equal, .status(value == "error" ? .error : value == "ok" ? .ok : .unset)))
                    default: conditions.append(Self.tagCondition(key, value))
                    }
                }
            }
            conditions += Self.durationConditions(minimum: try parameters.duration("minDuration"), maximum: try parameters.duration("maxDuration"))
            query = .spanset(.all(conditions))
        }
        let end = try parameters.epoch("end", scale: 1_000_000_000) ?? TimeWindow.now()
        let start = try parameters.epoch("start", scale: 1_000_000_000) ?? (end > 86_400_000_000_000 ? end - 86_400_000_000_000 : 0)
        guard start <= end else { throw QueryParameters.Invalid("parameter 'start' must not be after 'end'") }
        let limit = try parameters.integer("limit", default: 20, in: 1...100_000)!
        let spss = try parameters.integer("spss", default: 3, in: 1...10_000)!
        let found = try engine().search(TraceSearch(query: query, window: start...(end + 999_999_999), limit: limit, spansPerSpanset: spss))
        let traces: [JSONValue] = found.map { summary in
            let spanSets: [JSONValue] = summary.matched.map { matched in
                .object(["matched": .int(Int64(matched.count)), "spans": .array(matched.rows.map { row in
                    let spans = summary.spans
                    return .object([
                        "spanID": .string(spans.spanIDs[row].hex), "name": .string(spans.names[row]),
                        "startTimeUnixNano": .string(String(spans.startTimes[row])),
                        "durationNanos": .string(String(spans.duration(at: row))),
                        "attributes": .array([.object(["key": .string("service.name"), "value": .object(["stringValue": .string(spans.serviceName(at: row))])])]),
                    ])
                })])
            }
            var trace: [String: JSONValue] = [
                "traceID": .string(summary.traceID.hex),
                "rootServiceName": .string(summary.rootService.isEmpty ? "<root span not yet received>" : summary.rootService),
                "rootTraceName": .string(summary.rootName),
                "startTimeUnixNano": .string(String(summary.start)),
                "durationMs": .int(Int64(summary.duration / 1_000_000)),
                "spanSets": .array(spanSets),
                "serviceStats": .object(summary.services.mapValues { .object(["spanCount": .int(Int64($0.spans)), "errorCount": .int(Int64($0.errors))]) }),
            ]
            if let first = spanSets.first { trace["spanSet"] = first }
            return .object(trace)
        }
        return json(JSONValue.object(["traces": .array(traces), "metrics": .object(["inspectedTraces": .int(Int64(found.count))])]))
    }

    /// `key=value key2="a b"`: Tempo's legacy `tags` parameter.
    static func logfmt(_ text: String) throws(QueryParameters.Invalid) -> [(String, String)] {
        var pairs: [(String, String)] = []
        var rest = Substring(text)
        while true {
            rest = rest.drop { $0 == " " }
            guard !rest.isEmpty else { return pairs }
            guard let equals = rest.firstIndex(of: "=") else {
                throw QueryParameters.Invalid("parameter 'tags' must be logfmt (key=value ...), got \(text.debugDescription)")
            }
            let key = String(rest[..<equals])
            rest = rest[rest.index(after: equals)...]
            var value = ""
            if rest.first == "\"" {
                rest = rest.dropFirst()
                guard let close = rest.firstIndex(of: "\"") else {
                    throw QueryParameters.Invalid("parameter 'tags' has an unterminated quote")
                }
                value = String(rest[..<close])
                rest = rest[rest.index(after: close)...]
            } else {
                value = String(rest.prefix { $0 != " " })
                rest = rest.dropFirst(value.count)
            }
            pairs.append((key, value))
        }
    }

    /// `/api/v1/search`: `q` (TraceQL) or `service`, `operation`, `tag` (`key=value`,
    /// repeatable), `min_duration`, `max_duration`, `status`; the window, and `limit`.
    private func nativeSearch(_ parameters: QueryParameters) throws -> Response {
        var query: TraceQL
        if let text = parameters["q"] {
            query = try TraceQL.parse(text)
        } else {
            var conditions: [TraceQL.Condition] = []
            if let service = parameters["service"] { conditions.append(.compare(.serviceName, .equal, .string(service))) }
            if let operation = parameters["operation"] { conditions.append(.compare(.name, .equal, .string(operation))) }
            for text in parameters.all("tag") where !text.isEmpty {
                guard let equals = text.firstIndex(of: "=") else {
                    throw QueryParameters.Invalid("parameter 'tag' must be key=value, got \(text.debugDescription)")
                }
                conditions.append(Self.tagCondition(String(text[..<equals]), String(text[text.index(after: equals)...])))
            }
            conditions += Self.durationConditions(minimum: try parameters.duration("min_duration"), maximum: try parameters.duration("max_duration"))
            if let status = parameters["status"] {
                guard let code = ["error": StatusCode.error, "ok": .ok, "unset": .unset][status] else {
                    throw QueryParameters.Invalid("parameter 'status' must be error, ok or unset, got \(status.debugDescription)")
                }
                conditions.append(.compare(.status, .equal, .status(code)))
            }
            query = .spanset(.all(conditions))
        }
        let limit = try parameters.integer("limit", default: 20, in: 1...100_000)!
        let found = try engine().search(TraceSearch(query: query, window: try parameters.window(), limit: limit))
        return json(["traces": found.map(SearchResult.init)])
    }

    /// `/api/v1/compare`: the versions of one service.
    public struct Comparison: Codable, Sendable, Equatable {
        public var service: String
        public var versions: [SignalQueries.VersionComparison]
    }

    /// One trace of a native search, units in the key names.
    public struct SearchResult: Codable, Sendable, Equatable {
        public struct Service: Codable, Sendable, Equatable {
            public var name: String
            public var spans: Int
            public var errors: Int
        }

        public var trace_id: String
        public var root_service: String
        public var root_operation: String
        /// RFC 3339.
        public var start: String
        public var start_unix_nano: UInt64
        public var duration_ms: Double
        public var spans: Int
        public var errors: Int
        public var services: [Service]
        /// Spans that matched the query.
        public var matched_spans: Int

        init(_ summary: TraceSummary) {
            trace_id = summary.traceID.hex
            root_service = summary.rootService
            root_operation = summary.rootName
            start = rfc3339(summary.start)
            start_unix_nano = summary.start
            duration_ms = Double(summary.duration) / 1e6
            spans = summary.spanCount
            errors = summary.errorCount
            services = summary.services.keys.sorted().map { Service(name: $0, spans: summary.services[$0]!.spans, errors: summary.services[$0]!.errors) }
            matched_spans = summary.matched.reduce(0) { $0 + $1.count }
        }
    }

    // MARK: Tags

    private func tagWindow(_ parameters: QueryParameters) throws(QueryParameters.Invalid) -> ClosedRange<UInt64> {
        let end = try parameters.epoch("end", scale: 1_000_000_000) ?? TimeWindow.now()
        let start = try parameters.epoch("start", scale: 1_000_000_000) ?? (end > TimeWindow.defaultSince ? end - TimeWindow.defaultSince : 0)
        return min(start, end)...(end + 999_999_999)
    }

    private func tagNames(_ parameters: QueryParameters) throws -> [(scope: String, tags: [String])] {
        if let scope = parameters["scope"], !["all", "resource", "span", "intrinsic"].contains(scope) {
            throw QueryParameters.Invalid("parameter 'scope' must be all, resource, span or intrinsic, got \(scope.debugDescription)")
        }
        let names = engine().tagNames(window: try tagWindow(parameters))
        return [("resource", names.resource), ("span", names.span), ("intrinsic", TagCatalog.intrinsics)]
    }

    private func tagValues(_ tag: String, _ parameters: QueryParameters) throws -> [TagCatalog.Value] {
        let field: TraceQL.Field
        do {
            field = try TraceQL.parseField(tag)
        } catch {
            throw QueryParameters.Invalid("tag \(tag.debugDescription) is not a TraceQL field: \(error.reason)")
        }
        let filter = try parameters["q"].map { text throws(TraceQL.ParseError) in try TraceQL.parse(text) }
        return engine().tagValues(of: field, window: try tagWindow(parameters), matching: filter)
    }

    // MARK: Topology

    private func topology(_ parameters: QueryParameters) throws -> Response {
        let scope = try scope(parameters)
        var graph = TopologyJSON(signals.golden.serviceGraph(in: scope.window))
        if scope.namespace != nil {
            // Edges with an end in the namespace, and the nodes they join.
            let kept = Set(signals.edges(scope).flatMap { [$0.source, $0.target] })
            graph.edges = graph.edges.filter { kept.contains($0.source) && kept.contains($0.target) }
            graph.nodes = graph.nodes.filter { kept.contains($0.name) }
        }
        switch parameters["format"] {
        case nil, "json": return json(graph)
        case "dot": return Response(status: 200, contentType: "text/vnd.graphviz", body: Array(TopologyDiagram.dot(graph).utf8))
        case "mermaid": return Response(status: 200, contentType: "text/plain", body: Array(TopologyDiagram.mermaid(graph).utf8))
        case let other?: throw QueryParameters.Invalid("parameter 'format' must be json, dot or mermaid, got \(other.debugDescription)")
        }
    }

    // MARK: Encoding

    static func decoded(_ text: String) -> String { text.removingPercentEncoding ?? text }

    private func json(_ value: some Encodable) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do {
            return Response(status: 200, contentType: "application/json", body: Array(try encoder.encode(value)))
        } catch {
            return self.error(500, "cannot encode the answer: \(error)", .native)
        }
    }

    private func error(_ status: Int, _ message: String, _ dialect: Dialect) -> Response {
        var response: Response
        switch dialect {
        case .jaeger:
            response = json(JaegerJSON.Envelope<[String]>(data: nil, errors: [.init(code: status, msg: message)]))
        case .jaegerV3:
            response = json(JSONValue.object(["error": .object(["httpCode": .int(Int64(status)), "message": .string(message)])]))
        case .tempo, .native:
            response = json(JSONValue.object(["error": .string(message)]))
        }
        response.status = status
        return response
    }
}
