import Foundation
import MeshCore
import OTLPWire

/// Traces in the JSON shape of Jaeger's v1 query API, which Grafana's Jaeger data source reads.
public enum JaegerJSON {
    /// `{data, total, limit, offset, errors}`, Jaeger's response envelope.
    public struct Envelope<Payload: Encodable & Sendable>: Encodable, Sendable {
        public var data: Payload?
        public var total: Int = 0
        public var limit: Int = 0
        public var offset: Int = 0
        public var errors: [ErrorEntry]?

        public init(data: Payload?, total: Int = 0, errors: [ErrorEntry]? = nil) {
            self.data = data
            self.total = total
            self.errors = errors
        }

        private enum CodingKeys: String, CodingKey {
            case data, total, limit, offset, errors
        }

        /// Jaeger always writes `data` and `errors`, as `null` when empty.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            if let data { try container.encode(data, forKey: .data) } else { try container.encodeNil(forKey: .data) }
            try container.encode(total, forKey: .total)
            try container.encode(limit, forKey: .limit)
            try container.encode(offset, forKey: .offset)
            if let errors { try container.encode(errors, forKey: .errors) } else { try container.encodeNil(forKey: .errors) }
        }
    }

    /// One entry of an envelope's `errors`.
    public struct ErrorEntry: Encodable, Sendable {
        public var code: Int
        public var msg: String
        public init(code: Int, msg: String) {
            self.code = code
            self.msg = msg
        }
    }

    public struct Trace: Encodable, Sendable {
        public var traceID: String
        public var spans: [Span]
        public var processes: [String: Process]
        /// Always `null`: meshtrace adjusts no clocks and so has nothing to warn about.
        public var warnings: JSONValue = .null
    }

    public struct Span: Encodable, Sendable {
        public var traceID: String
        public var spanID: String
        public var operationName: String
        public var references: [Reference]
        /// Microseconds since the epoch.
        public var startTime: UInt64
        /// Microseconds.
        public var duration: UInt64
        public var tags: [Tag]
        public var logs: [Log]
        public var processID: String
        /// Always `null`: meshtrace adjusts no clocks and so has nothing to warn about.
        public var warnings: JSONValue = .null
        public var flags: UInt32?
    }

    public struct Reference: Encodable, Sendable {
        public var refType: String
        public var traceID: String
        public var spanID: String
    }

    public struct Process: Encodable, Sendable {
        public var serviceName: String
        public var tags: [Tag]
    }

    public struct Tag: Encodable, Sendable {
        public var key: String
        public var type: String
        public var value: JSONValue
    }

    public struct Log: Encodable, Sendable {
        /// Microseconds since the epoch.
        public var timestamp: UInt64
        public var fields: [Tag]
    }

    /// Converts the spans of one trace.
    public static func trace(_ batch: SpanBatch) throws -> Trace {
        var processes: [String: Process] = [:]
        var processIDs: [UInt32: String] = [:]
        var spans: [Span] = []
        for row in 0..<batch.count {
            let resourceIndex = batch.resourceIndices[row]
            let processID: String
            if let known = processIDs[resourceIndex] {
                processID = known
            } else {
                processID = "p\(processIDs.count + 1)"
                processIDs[resourceIndex] = processID
                let resource = try ResourceSpans(serializedBytes: batch.resources[Int(resourceIndex)].encoded).resource
                processes[processID] = Process(
                    serviceName: batch.resources[Int(resourceIndex)].serviceName,
                    tags: resource.attributes.filter { $0.key != "service.name" }.map(tag))
            }
            let span = try batch.span(at: row)
            var references: [Reference] = []
            if batch.parentSpanIDs[row] != .zero {
                references.append(Reference(refType: "CHILD_OF", traceID: batch.traceIDs[row].hex, spanID: batch.parentSpanIDs[row].hex))
            }
            for link in span.links {
                if let trace = TraceID(bytes: link.traceID), let linked = SpanID(bytes: link.spanID) {
                    references.append(Reference(refType: "FOLLOWS_FROM", traceID: trace.hex, spanID: linked.hex))
                }
            }
            var tags = span.attributes.map(tag)
            if batch.kinds[row] != .unspecified {
                tags.append(Tag(key: "span.kind", type: "string", value: .string(batch.kinds[row].name)))
            }
            if batch.statusCodes[row] != .unset {
                tags.append(Tag(key: "otel.status_code", type: "string", value: .string(batch.statusCodes[row].name)))
            }
            if batch.statusCodes[row] == .error {
                tags.append(Tag(key: "error", type: "bool", value: .bool(true)))
            }
            if !batch.statusMessages[row].isEmpty {
                tags.append(Tag(key: "otel.status_description", type: "string", value: .string(batch.statusMessages[row])))
            }
            if !span.traceState.isEmpty {
                tags.append(Tag(key: "w3c.tracestate", type: "string", value: .string(span.traceState)))
            }
            let logs = span.events.map { event in
                Log(timestamp: event.timeUnixNano / 1000,
                    fields: [Tag(key: "event", type: "string", value: .string(event.name))] + event.attributes.map(tag))
            }
            spans.append(Span(
                traceID: batch.traceIDs[row].hex, spanID: batch.spanIDs[row].hex, operationName: batch.names[row],
                references: references, startTime: batch.startTimes[row] / 1000,
                duration: batch.duration(at: row) / 1000, tags: tags, logs: logs, processID: processID,
                flags: span.flags == 0 ? nil : span.flags & 0xFF))
        }
        return Trace(traceID: batch.traceIDs.first?.hex ?? "", spans: spans, processes: processes)
    }

    static func tag(_ attribute: KeyValue) -> Tag {
        switch attribute.value.value {
        case .stringValue(let value)?:
            return Tag(key: attribute.key, type: "string", value: .string(value))
        case .boolValue(let value)?:
            return Tag(key: attribute.key, type: "bool", value: .bool(value))
        case .intValue(let value)?:
            // Past 2^53 a JSON number loses precision in JavaScript; Jaeger writes a string.
            let exact = abs(value) <= (1 << 53)
            return Tag(key: attribute.key, type: "int64", value: exact ? .int(value) : .string(String(value)))
        case .doubleValue(let value)?:
            return Tag(key: attribute.key, type: "float64", value: .double(value))
        case .bytesValue(let value)?:
            return Tag(key: attribute.key, type: "binary", value: .string(value.base64EncodedString()))
        case .arrayValue, .kvlistValue:
            return Tag(key: attribute.key, type: "string", value: .string(jsonText(attribute.value)))
        case .stringValueStrindex(let index)?:
            return Tag(key: attribute.key, type: "int64", value: .int(Int64(index)))
        case nil:
            return Tag(key: attribute.key, type: "string", value: .string(""))
        }
    }

    private static func jsonText(_ value: AnyValue) -> String {
        guard let data = try? OTLPJSON.encode(value) else { return "" }
        return String(decoding: data, as: UTF8.self)
    }
}
