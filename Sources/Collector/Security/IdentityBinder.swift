import MeshCore
import MeshIdentity
import OTLPWire
import SwiftProtobuf

/// Binds what a request claims to who sent it: every resource gets the attributes
/// `meshtrace.peer.transport` (and `meshtrace.peer.id`, the sender's SPIFFE ID) in
/// place of any the sender set, and under mTLS a `service.name` other than the one
/// the sender's identity may claim is rejected or relabelled.
struct IdentityBinder: Sendable {
    let bindings: [IdentityBinding]
    let action: MismatchAction
    let audit: TransportAudit

    static let transportKey = "meshtrace.peer.transport"
    static let identityKey = "meshtrace.peer.id"
    static let claimedKey = "meshtrace.claimed.service.name"

    /// What becomes of one resource.
    enum Verdict {
        case keep(OTLPResource)
        case reject(claimed: String, allowed: String?, reason: String)
    }

    /// The service `id` may claim: the first binding that matches its path.
    func service(for id: SPIFFEID) -> String? {
        bindings.lazy.compactMap { $0.service(for: id) }.first
    }

    func verdict(_ resource: OTLPResource, peer: ConnectionPeer) -> Verdict {
        var resource = resource
        resource.attributes.removeAll { $0.key == Self.transportKey || $0.key == Self.identityKey || $0.key == Self.claimedKey }
        resource.attributes.append(Self.attribute(Self.transportKey, peer.transport.name))
        guard case .mtls(let verified) = peer.transport else { return .keep(resource) }
        resource.attributes.append(Self.attribute(Self.identityKey, verified.id.description))
        let claimed = resource.attributes.string("service.name") ?? "unknown_service"
        let allowed = service(for: verified.id)
        guard claimed != allowed && allowed != "*" else { return .keep(resource) }
        let may = allowed.map { "may claim only \($0.debugDescription)" } ?? "matches no identity binding"
        let reason = "service.name \(claimed.debugDescription) refused: the sender \(verified.id) \(may)"
        guard action == .relabel, let allowed else { return .reject(claimed: claimed, allowed: allowed, reason: reason) }
        resource.attributes.removeAll { $0.key == "service.name" }
        resource.attributes.append(Self.attribute(Self.claimedKey, claimed))
        resource.attributes.append(Self.attribute("service.name", allowed))
        return .keep(resource)
    }

    /// `export` as it is stored for a request that came from `peer`: resources
    /// labelled, and spans of refused resources left out and counted as rejected.
    func bind(_ export: DecodedTraceExport, peer: ConnectionPeer) -> DecodedTraceExport {
        var rejection: String?
        var counts: [Int]?
        let batch = export.spans
        let replacements = batch.resources.enumerated().map { index, entry -> ResourceEntry? in
            guard var resourceSpans = try? ResourceSpans(serializedBytes: entry.encoded) else { return entry }
            switch verdict(resourceSpans.resource, peer: peer) {
            case .keep(let resource):
                resourceSpans.resource = resource
                let name = resource.attributes.string("service.name") ?? "unknown_service"
                if name != entry.serviceName, case .mtls(let verified) = peer.transport {
                    audit.mismatch(id: verified.id.description, claimed: entry.serviceName, allowed: name,
                                   spans: Self.rows(of: index, in: batch, counts: &counts), action: .relabel)
                }
                return ResourceEntry(serviceName: name, encoded: (try? resourceSpans.serializedBytes()) ?? entry.encoded)
            case .reject(let claimed, let allowed, let reason):
                if case .mtls(let verified) = peer.transport {
                    audit.mismatch(id: verified.id.description, claimed: claimed, allowed: allowed,
                                   spans: Self.rows(of: index, in: batch, counts: &counts), action: .reject)
                }
                rejection = rejection ?? reason
                return nil
            }
        }
        var bound = export
        guard let encoded = rewrite(export.encoded, peer: peer) else {
            // Not reached for a request the decoder accepted; if it were, nothing is
            // stored that the write-ahead log could not replay.
            bound.spans = SpanBatch()
            bound.outcome.rejected += bound.outcome.accepted
            bound.outcome.accepted = 0
            bound.outcome.firstRejection = bound.outcome.firstRejection ?? "the request could not be labelled with its sender's identity"
            bound.encoded = []
            return bound
        }
        let (spans, dropped) = batch.replacingResources(replacements)
        bound.spans = spans
        bound.outcome.accepted -= dropped
        bound.outcome.rejected += dropped
        if let rejection, bound.outcome.firstRejection == nil { bound.outcome.firstRejection = rejection }
        bound.encoded = encoded
        return bound
    }

    private static func rows(of resource: Int, in batch: SpanBatch, counts: inout [Int]?) -> Int {
        if counts == nil {
            var tally = [Int](repeating: 0, count: batch.resources.count)
            for index in batch.resourceIndices { tally[Int(index)] += 1 }
            counts = tally
        }
        return counts![resource]
    }

    /// The `ExportTraceServiceRequest` bytes with every `ResourceSpans`' resource
    /// replaced by its verdict, and refused ones left out; the rest is copied as it was.
    func rewrite(_ request: [UInt8], peer: ConnectionPeer) -> [UInt8]? {
        request.withUnsafeBufferPointer { buffer -> [UInt8]? in
            var output: [UInt8] = []
            output.reserveCapacity(request.count + 256)
            var reader = WireReader(buffer, 0..<buffer.count)
            while !reader.isAtEnd {
                let start = reader.position
                guard let (field, wireType) = reader.tag() else { return nil }
                guard field == 1, wireType == 2 else {
                    guard reader.skip(wireType: wireType) else { return nil }
                    output += buffer[start..<reader.position]
                    continue
                }
                guard let body = reader.lengthDelimited() else { return nil }
                var inner = WireReader(buffer, body)
                var resourceBytes: ArraySlice<UInt8> = []
                var rest: [UInt8] = []
                while !inner.isAtEnd {
                    let fieldStart = inner.position
                    guard let (innerField, innerType) = inner.tag() else { return nil }
                    if innerField == 1 && innerType == 2 {
                        guard let range = inner.lengthDelimited() else { return nil }
                        resourceBytes = ArraySlice(buffer[range])
                    } else {
                        guard inner.skip(wireType: innerType) else { return nil }
                        rest += buffer[fieldStart..<inner.position]
                    }
                }
                guard let resource = try? OTLPResource(serializedBytes: Array(resourceBytes)) else { return nil }
                guard case .keep(let kept) = verdict(resource, peer: peer), let encoded = try? kept.serializedBytes() as [UInt8] else {
                    continue
                }
                var resourceSpans: [UInt8] = [0x0A]
                Self.varint(UInt64(encoded.count), into: &resourceSpans)
                resourceSpans += encoded
                resourceSpans += rest
                output.append(0x0A)
                Self.varint(UInt64(resourceSpans.count), into: &output)
                output += resourceSpans
            }
            return output
        }
    }

    private static func varint(_ value: UInt64, into output: inout [UInt8]) {
        var value = value
        while value >= 0x80 {
            output.append(UInt8(value & 0x7F) | 0x80)
            value >>= 7
        }
        output.append(UInt8(value))
    }

    private static func attribute(_ key: String, _ value: String) -> KeyValue {
        var attribute = KeyValue()
        attribute.key = key
        attribute.value.stringValue = value
        return attribute
    }
}
