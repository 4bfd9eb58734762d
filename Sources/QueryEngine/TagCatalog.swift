import MeshCore
import SegmentStore

/// Attribute names and values for search autocompletion (Tempo's tag routes).
public enum TagCatalog {
    /// The intrinsic fields a query may name.
    public static let intrinsics = ["duration", "kind", "name", "rootName", "rootServiceName", "status", "statusMessage", "traceDuration"]

    /// A value and its TraceQL type (`string`, `int`, `float`, `bool`, `keyword`).
    public struct Value: Hashable, Sendable, Comparable {
        public var type: String
        public var value: String

        public static func < (lhs: Value, rhs: Value) -> Bool { (lhs.value, lhs.type) < (rhs.value, rhs.type) }
    }

    /// Distinct values listed at most, like Tempo's cap on a tag-values answer.
    public static let maxValues = 1_000
    /// Spans read at most to answer one autocompletion request, newest first.
    public static let maxSpansRead = 2_000_000
}

extension QueryEngine {
    /// Runs `body` on each store part that may hold spans started in `window`, newest
    /// first, until it returns false or `TagCatalog.maxSpansRead` spans were offered.
    func eachRecentBatch(in window: ClosedRange<UInt64>, _ body: (SpanBatch) -> Bool) {
        var read = 0
        for block in snapshot.unsealed.reversed() {
            guard body(block) else { return }
            read += block.count
        }
        let segments = snapshot.segments
            .filter { $0.footer.minStartTime <= window.upperBound && $0.footer.maxEndTime >= window.lowerBound }
            .sorted { $0.footer.maxEndTime > $1.footer.maxEndTime }
        for segment in segments where read < TagCatalog.maxSpansRead {
            guard let batch = reading(segment, { segment throws(StoreError) in try segment.readBatch() }) else { continue }
            guard body(batch) else { return }
            read += batch.count
        }
    }

    /// Attribute keys of spans started in `window` and of their resources, sorted.
    public func tagNames(window: ClosedRange<UInt64>) -> (resource: [String], span: [String]) {
        var resource: Set<String> = []
        var span: Set<String> = []
        eachRecentBatch(in: window) { batch in
            var seenResources = Set<UInt32>()
            for row in 0..<batch.count where window.contains(batch.startTimes[row]) {
                AttributeValue.forEach(in: batch.attributes[row]) { key, _ in
                    span.insert(key)
                    return true
                }
                let index = batch.resourceIndices[row]
                guard seenResources.insert(index).inserted else { continue }
                let encoded = batch.resources[Int(index)].encoded
                if let range = AttributeValue.resource(inResourceSpans: encoded) {
                    AttributeValue.forEach(in: encoded[range]) { key, _ in
                        resource.insert(key)
                        return true
                    }
                }
            }
            return resource.count + span.count < TagCatalog.maxValues
        }
        return (resource.sorted(), span.sorted())
    }

    /// Distinct values of `field` among spans started in `window` (and matching
    /// `filter`, when given), sorted; at most `TagCatalog.maxValues`.
    public func tagValues(of field: TraceQL.Field, window: ClosedRange<UInt64>, matching filter: TraceQL? = nil) -> [TagCatalog.Value] {
        let conditions = filter?.spansets.map(CompiledCondition.init)
        var values: Set<TagCatalog.Value> = []
        func add(_ value: AttributeValue) {
            if let text = value.string { values.insert(.init(type: "string", value: text)) }
            else if let int = value.int { values.insert(.init(type: "int", value: String(int))) }
            else if let double = value.double { values.insert(.init(type: "float", value: String(double))) }
            else if let bool = value.bool { values.insert(.init(type: "bool", value: String(bool))) }
        }
        switch field {
        case .status: return ["error", "ok", "unset"].map { .init(type: "keyword", value: $0) }
        case .kind: return SpanKind.allCases.map { .init(type: "keyword", value: $0.name) }.sorted()
        case .duration, .traceDuration: return []
        default: break
        }
        eachRecentBatch(in: window) { batch in
            for row in 0..<batch.count where window.contains(batch.startTimes[row]) {
                if let conditions, !conditions.contains(where: { $0.evaluate(batch, row, trace: nil) != .no }) { continue }
                switch field {
                case .name: values.insert(.init(type: "string", value: batch.names[row]))
                case .serviceName: values.insert(.init(type: "string", value: batch.serviceName(at: row)))
                case .statusMessage where !batch.statusMessages[row].isEmpty: values.insert(.init(type: "string", value: batch.statusMessages[row]))
                case .rootServiceName where batch.parentSpanIDs[row] == .zero: values.insert(.init(type: "string", value: batch.serviceName(at: row)))
                case .rootName where batch.parentSpanIDs[row] == .zero: values.insert(.init(type: "string", value: batch.names[row]))
                case .attribute(let scope, let name):
                    let key = Array(name.utf8)
                    var found = false
                    if scope != .resource {
                        found = AttributeValue.find(key, in: batch.attributes[row]) { value in
                            add(value)
                            return true
                        }
                    }
                    if !found && scope != .span {
                        _ = AttributeValue.find(key, inResourceSpans: batch.resources[Int(batch.resourceIndices[row])].encoded) { value in
                            add(value)
                            return true
                        }
                    }
                default: break
                }
                if values.count >= TagCatalog.maxValues { return false }
            }
            return true
        }
        return values.sorted()
    }
}
