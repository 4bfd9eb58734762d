import Foundation
import MeshCore
import SwiftProtobuf

/// How many spans of a request were accepted, and why any were not.
public struct IngestOutcome: Sendable, Equatable {
    /// Spans added to the batch.
    public var accepted: Int = 0
    /// Spans refused because they break the protocol (bad ids, say).
    public var rejected: Int = 0
    /// The reason for the first refusal, in English, for `partial_success`.
    public var firstRejection: String?

    public init() {}

    mutating func reject(_ reason: String) {
        rejected += 1
        if firstRejection == nil { firstRejection = reason }
    }
}

/// Why stored spans could not be turned back into OTLP.
public enum OTLPConversionError: Error, CustomStringConvertible {
    /// A stored protobuf blob (attributes, extras, resource or scope) does not decode.
    case corruptBlob(column: String, row: Int, reason: String)

    public var description: String {
        switch self {
        case .corruptBlob(let column, let row, let reason):
            return "stored \(column) of row \(row) does not decode: \(reason)"
        }
    }
}

extension SpanBatch {
    /// Appends the valid spans of an OTLP export request, and counts the ones refused.
    ///
    /// A span is refused when its trace id is not 16 bytes or is all zero, when its
    /// span id is not 8 bytes or is all zero, or when its parent span id is neither
    /// empty nor 8 bytes.
    @discardableResult
    public mutating func append(_ request: ExportTraceServiceRequest) -> IngestOutcome {
        var outcome = IngestOutcome()
        for resourceSpans in request.resourceSpans {
            var resourceOnly = ResourceSpans()
            if resourceSpans.hasResource { resourceOnly.resource = resourceSpans.resource }
            resourceOnly.schemaURL = resourceSpans.schemaURL
            let serviceName = resourceSpans.resource.attributes.string("service.name") ?? "unknown_service"
            let resourceIndex = intern(resource: ResourceEntry(
                serviceName: serviceName, encoded: Self.encode(resourceOnly)))

            for scopeSpans in resourceSpans.scopeSpans {
                var scopeOnly = ScopeSpans()
                if scopeSpans.hasScope { scopeOnly.scope = scopeSpans.scope }
                scopeOnly.schemaURL = scopeSpans.schemaURL
                let scopeIndex = intern(scope: Self.encode(scopeOnly))

                for span in scopeSpans.spans {
                    guard let traceID = TraceID(bytes: span.traceID), traceID != .zero else {
                        outcome.reject("span \(span.name.debugDescription) has an invalid trace id (\(span.traceID.count) bytes; 16 non-zero bytes required)")
                        continue
                    }
                    guard let spanID = SpanID(bytes: span.spanID), spanID != .zero else {
                        outcome.reject("span \(span.name.debugDescription) has an invalid span id (\(span.spanID.count) bytes; 8 non-zero bytes required)")
                        continue
                    }
                    guard let parentID = SpanID(bytes: span.parentSpanID) else {
                        outcome.reject("span \(span.name.debugDescription) has an invalid parent span id (\(span.parentSpanID.count) bytes; empty or 8 required)")
                        continue
                    }
                    let status = Self.columnStatus(of: span)
                    append(Row(
                        traceID: traceID, spanID: spanID, parentSpanID: parentID, name: span.name,
                        kind: MeshCore.SpanKind(rawValue: UInt8(clamping: span.kind.rawValue)) ?? .unspecified,
                        startTime: span.startTimeUnixNano, endTime: span.endTimeUnixNano,
                        statusCode: status?.code ?? .unset, statusMessage: status?.message ?? "",
                        httpStatusCode: Self.httpStatusCode(span.attributes),
                        resourceIndex: resourceIndex, scopeIndex: scopeIndex,
                        attributes: span.attributes.isEmpty ? [] : Self.encode(KeyValueList.with { $0.values = span.attributes }),
                        extras: Self.extras(of: span)))
                    outcome.accepted += 1
                }
            }
        }
        return outcome
    }

    /// The rows at `indices` (all rows when nil) as OTLP, grouped by resource and scope
    /// in the order they first appear.
    public func tracesData(rows indices: [Int]? = nil) throws(OTLPConversionError) -> TracesData {
        let rows = indices ?? Array(0..<count)
        var resourceOrder: [UInt32] = []
        var scopesByResource: [UInt32: [UInt32]] = [:]
        var rowsByGroup: [UInt64: [Int]] = [:]
        for row in rows {
            let resource = resourceIndices[row]
            let scope = scopeIndices[row]
            let key = UInt64(resource) << 32 | UInt64(scope)
            if scopesByResource[resource] == nil {
                resourceOrder.append(resource)
                scopesByResource[resource] = []
            }
            if rowsByGroup[key] == nil {
                scopesByResource[resource]!.append(scope)
                rowsByGroup[key] = []
            }
            rowsByGroup[key]!.append(row)
        }

        var data = TracesData()
        for resource in resourceOrder {
            var resourceSpans: ResourceSpans
            do {
                resourceSpans = try ResourceSpans(serializedBytes: resources[Int(resource)].encoded)
            } catch {
                throw .corruptBlob(column: "resource", row: Int(resource), reason: "\(error)")
            }
            for scope in scopesByResource[resource]! {
                var scopeSpans: ScopeSpans
                do {
                    scopeSpans = try ScopeSpans(serializedBytes: scopes[Int(scope)])
                } catch {
                    throw .corruptBlob(column: "scope", row: Int(scope), reason: "\(error)")
                }
                for row in rowsByGroup[UInt64(resource) << 32 | UInt64(scope)]! {
                    scopeSpans.spans.append(try span(at: row))
                }
                resourceSpans.scopeSpans.append(scopeSpans)
            }
            data.resourceSpans.append(resourceSpans)
        }
        return data
    }

    /// The span at `row` as an OTLP message.
    public func span(at row: Int) throws(OTLPConversionError) -> OTLPSpan {
        var span: OTLPSpan
        do {
            span = try OTLPSpan(serializedBytes: Array(extras[row]))
            if !attributes[row].isEmpty {
                span.attributes = try KeyValueList(serializedBytes: Array(attributes[row])).values
            }
        } catch {
            throw .corruptBlob(column: "attributes or extras", row: row, reason: "\(error)")
        }
        span.traceID = Data(traceIDs[row].bytes)
        span.spanID = Data(spanIDs[row].bytes)
        span.parentSpanID = Data(parentSpanIDs[row].bytes)
        span.name = names[row]
        span.kind = OTLPSpan.SpanKind(rawValue: Int(kinds[row].rawValue)) ?? .unspecified
        span.startTimeUnixNano = startTimes[row]
        span.endTimeUnixNano = endTimes[row]
        if statusCodes[row] != .unset || !statusMessages[row].isEmpty {
            span.status.code = OTLPStatus.StatusCode(rawValue: Int(statusCodes[row].rawValue)) ?? .unset
            span.status.message = statusMessages[row]
        }
        return span
    }

    /// The attributes of the span at `row`.
    public func attributeList(at row: Int) throws(OTLPConversionError) -> [KeyValue] {
        guard !attributes[row].isEmpty else { return [] }
        do {
            return try KeyValueList(serializedBytes: Array(attributes[row])).values
        } catch {
            throw .corruptBlob(column: "attributes", row: row, reason: "\(error)")
        }
    }

    /// The span's status as the status columns hold it, or nil when it is absent or
    /// something the columns cannot say — present but empty, a code this version does
    /// not know, unknown fields — which the extras then keep whole.
    private static func columnStatus(of span: OTLPSpan) -> (code: MeshCore.StatusCode, message: String)? {
        guard span.hasStatus, span.status.unknownFields.data.isEmpty,
              let code = MeshCore.StatusCode(rawValue: UInt8(clamping: span.status.code.rawValue)),
              span.status.code.rawValue >= 0, code != .unset || !span.status.message.isEmpty
        else { return nil }
        return (code, span.status.message)
    }

    private static func extras(of span: OTLPSpan) -> [UInt8] {
        var extras = OTLPSpan()
        if span.hasStatus && columnStatus(of: span) == nil { extras.status = span.status }
        extras.traceState = span.traceState
        extras.flags = span.flags
        extras.droppedAttributesCount = span.droppedAttributesCount
        extras.events = span.events
        extras.droppedEventsCount = span.droppedEventsCount
        extras.links = span.links
        extras.droppedLinksCount = span.droppedLinksCount
        extras.unknownFields = span.unknownFields
        return encode(extras)
    }

    private static func httpStatusCode(_ attributes: [KeyValue]) -> UInt16 {
        let code = attributes.int("http.response.status_code") ?? attributes.int("http.status_code") ?? 0
        return (0...999).contains(code) ? UInt16(code) : 0
    }

    /// The rows at `indices` (all rows when nil) as a protobuf-encoded OTLP
    /// `ExportTraceServiceRequest` (which `TracesData` shares its encoding with).
    public func exportRequestBytes(rows indices: [Int]? = nil) throws(OTLPConversionError) -> [UInt8] {
        Self.encode(try tracesData(rows: indices))
    }

    static func encode(_ message: some SwiftProtobuf.Message) -> [UInt8] {
        // Serializing a message built from decoded fields cannot fail: every
        // required-field check is off in proto3.
        (try? message.serializedBytes()) ?? []
    }
}
