import Foundation
import MeshCore

/// Whether a request travelled over mutual TLS, as the proxy that saw it reports.
public enum Security: UInt8, Sendable {
    case unknown = 0
    case mutualTLS = 1
    case plaintext = 2

}

/// What golden signals read from a span's attributes, in one pass over their
/// protobuf bytes (the stored `KeyValueList`).
struct SpanFacts {
    var requestBytes: UInt64 = 0
    var responseBytes: UInt64 = 0
    /// The best name for the peer of a CLIENT span, from its attributes; see `PeerKey`.
    var peer: Range<Int>?
    private var peerRank = Int.max
    /// The span called a database (`db.system` is set).
    var database = false
    /// The span belongs to a messaging system (`messaging.system` is set).
    var messaging = false
    var security = Security.unknown

    /// Attributes whose values can name a peer, best first: OpenTelemetry's
    /// `peer.service`, the database, then the address the proxy dialled.
    private enum PeerKey: Int {
        case peerService, databaseNamespace, databaseName, databaseSystem, messagingDestination, serverAddress, netPeerName, upstreamCluster
    }

    private enum Key {
        case requestBytes, responseBytes, peer(PeerKey), securityPolicy, tlsClientSubject, tlsEstablished, messagingSystem
    }

    /// The key at `bytes[range]`, if golden signals read it: a switch on its length,
    /// then one comparison with a static string (no allocation, no reference counting).
    private static func key(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> Key? {
        @inline(__always) func equals(_ expected: StaticString) -> Bool {
            memcmp(bytes.baseAddress! + range.lowerBound, expected.utf8Start, range.count) == 0
        }
        switch range.count {
        case 7: return equals("db.name") ? .peer(.databaseName) : nil
        case 9: return equals("db.system") ? .peer(.databaseSystem) : nil
        case 12:
            if equals("peer.service") { return .peer(.peerService) }
            if equals("db.namespace") { return .peer(.databaseNamespace) }
            return equals("request_size") ? .requestBytes : nil
        case 13:
            if equals("response_size") { return .responseBytes }
            return equals("net.peer.name") ? .peer(.netPeerName) : nil
        case 14: return equals("server.address") ? .peer(.serverAddress) : nil
        case 15: return equals("tls.established") ? .tlsEstablished : nil
        case 16:
            if equals("upstream_cluster") { return .peer(.upstreamCluster) }
            return equals("messaging.system") ? .messagingSystem : nil
        case 18: return equals("tls.client.subject") ? .tlsClientSubject : nil
        case 22: return equals("http.request.body.size") ? .requestBytes : nil
        case 23: return equals("http.response.body.size") ? .responseBytes : nil
        case 26:
            if equals("connection_security_policy") { return .securityPolicy }
            return equals("messaging.destination.name") ? .peer(.messagingDestination) : nil
        case 27: return equals("http.request_content_length") ? .requestBytes : nil
        case 28: return equals("http.response_content_length") ? .responseBytes : nil
        default: return nil
        }
    }

    /// Reads the facts from `bytes[range]`, a protobuf `KeyValueList`. Malformed
    /// bytes (which the decoder would not have let through) end the scan.
    init(attributes bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) {
        var list = WireReader(bytes, range)
        while let (field, wireType) = list.tag() {
            guard field == 1, wireType == 2 else {
                guard list.skip(wireType: wireType) else { return }
                continue
            }
            guard let pair = list.lengthDelimited() else { return }
            // The common shape, `0A <short length> key 12 …`: look the key up before
            // reading anything else, and pass over the attributes no signal needs.
            if pair.count >= 2, bytes[pair.lowerBound] == 0x0A, bytes[pair.lowerBound + 1] < 0x80 {
                let keyEnd = pair.lowerBound + 2 + Int(bytes[pair.lowerBound + 1])
                if keyEnd <= pair.upperBound, Self.key(bytes, pair.lowerBound + 2..<keyEnd) == nil { continue }
            }
            guard let (key, value) = Self.keyValue(bytes, pair) else { return }
            guard let key, let known = Self.key(bytes, key) else { continue }
            apply(known, value: AnyValueView(bytes, value ?? 0..<0))
        }
    }

    /// The key and value payloads of the OTLP `KeyValue` at `bytes[pair]` (the last of
    /// each, as protobuf reads repeated fields); nil when the bytes are malformed.
    static func keyValue(_ bytes: UnsafeBufferPointer<UInt8>, _ pair: Range<Int>) -> (key: Range<Int>?, value: Range<Int>?)? {
        var reader = WireReader(bytes, pair)
        var key: Range<Int>?
        var value: Range<Int>?
        while let (field, wireType) = reader.tag() {
            if wireType == 2, field == 1 || field == 2 {
                guard let payload = reader.lengthDelimited() else { return nil }
                if field == 1 { key = payload } else { value = payload }
            } else if !reader.skip(wireType: wireType) {
                return nil
            }
        }
        return (key, value)
    }

    private mutating func apply(_ key: Key, value: AnyValueView) {
        switch key {
        case .requestBytes:
            if let number = value.integer, number > 0 { requestBytes = UInt64(number) }
        case .responseBytes:
            if let number = value.integer, number > 0 { responseBytes = UInt64(number) }
        case .peer(let peerKey):
            if peerKey == .databaseSystem { database = true }
            guard var text = value.string, !text.isEmpty, peerKey.rawValue < peerRank else { return }
            if peerKey == .upstreamCluster {
                // Istio's `outbound|80||reviews.default.svc.cluster.local`: the host.
                guard let host = Self.clusterHost(value.bytes, text) else { return }
                text = host
            }
            peer = text
            peerRank = peerKey.rawValue
        case .messagingSystem:
            messaging = true
        case .securityPolicy:
            // Istio's label: `mutual_tls`, `none` or `unknown`.
            if let text = value.string {
                if Self.equal(value.bytes, text, Self.mutualTLS) { security = .mutualTLS }
                else if Self.equal(value.bytes, text, Self.none) { security = .plaintext }
            }
        case .tlsClientSubject:
            if value.string?.isEmpty == false { security = .mutualTLS }
        case .tlsEstablished:
            if value.boolean == false, security == .unknown { security = .plaintext }
        }
    }

    private static let mutualTLS = Array("mutual_tls".utf8)
    private static let none = Array("none".utf8)

    /// The host of an Envoy cluster name `direction|port|subset|host`, if it has one.
    private static func clusterHost(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> Range<Int>? {
        var bars = 0
        var start = range.lowerBound
        for index in range where bytes[index] == UInt8(ascii: "|") {
            bars += 1
            start = index + 1
        }
        guard bars == 3, start < range.upperBound else { return nil }
        return start..<range.upperBound
    }

    static func equal(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ expected: [UInt8]) -> Bool {
        guard range.count == expected.count else { return false }
        var index = range.lowerBound
        for byte in expected {
            if bytes[index] != byte { return false }
            index += 1
        }
        return true
    }
}

/// An OTLP `AnyValue` in a buffer, read lazily.
struct AnyValueView {
    let bytes: UnsafeBufferPointer<UInt8>
    let range: Range<Int>

    init(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) {
        self.bytes = bytes
        self.range = range
    }

    /// The `string_value`, as a range of the buffer.
    var string: Range<Int>? {
        var reader = WireReader(bytes, range)
        var found: Range<Int>?
        while let (field, wireType) = reader.tag() {
            if field == 1 && wireType == 2 { found = reader.lengthDelimited() } else if !reader.skip(wireType: wireType) { return nil }
        }
        return found
    }

    /// The `int_value`, or a `string_value` of decimal digits (Envoy's Zipkin tags are strings).
    var integer: Int64? {
        var reader = WireReader(bytes, range)
        var found: Int64?
        while let (field, wireType) = reader.tag() {
            if field == 3 && wireType == 0 {
                found = reader.varint().map { Int64(bitPattern: $0) }
            } else if field == 1 && wireType == 2, let text = reader.lengthDelimited() {
                found = Self.decimal(bytes, text)
            } else if !reader.skip(wireType: wireType) {
                return nil
            }
        }
        return found
    }

    /// The `bool_value`.
    var boolean: Bool? {
        var reader = WireReader(bytes, range)
        var found: Bool?
        while let (field, wireType) = reader.tag() {
            if field == 2 && wireType == 0 { found = reader.varint().map { $0 != 0 } } else if !reader.skip(wireType: wireType) { return nil }
        }
        return found
    }

    private static func decimal(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> Int64? {
        guard !range.isEmpty, range.count <= 18 else { return nil }
        var value: Int64 = 0
        for index in range {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit < 10 else { return nil }
            value = value * 10 + Int64(digit)
        }
        return value
    }
}

extension String {
    /// The UTF-8 text of `bytes[range]` (already validated by the decoder; repaired if not).
    init(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) {
        self = String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self)
    }
}

/// The workload a resource describes: `service.name`, its namespace
/// (`k8s.namespace.name`, else `service.namespace`) and `service.version`.
enum ResourceFacts {
    private static let version = Array("service.version".utf8)
    private static let kubernetesNamespace = Array("k8s.namespace.name".utf8)
    private static let serviceNamespace = Array("service.namespace".utf8)

    static func workload(of resource: ResourceEntry) -> Workload {
        var workload = Workload(service: resource.serviceName)
        var serviceNamespace = ""
        resource.encoded.withUnsafeBufferPointer { bytes in
            // ResourceSpans.resource (1) → Resource.attributes (1) → KeyValue.
            var resourceSpans = WireReader(bytes, 0..<bytes.count)
            while let (field, wireType) = resourceSpans.tag() {
                guard field == 1, wireType == 2 else {
                    guard resourceSpans.skip(wireType: wireType) else { return }
                    continue
                }
                guard let resourceRange = resourceSpans.lengthDelimited() else { return }
                var resourceReader = WireReader(bytes, resourceRange)
                while let (resourceField, resourceWire) = resourceReader.tag() {
                    guard resourceField == 1, resourceWire == 2 else {
                        guard resourceReader.skip(wireType: resourceWire) else { return }
                        continue
                    }
                    guard let pair = resourceReader.lengthDelimited() else { return }
                    guard let (key, value) = SpanFacts.keyValue(bytes, pair) else { return }
                    guard let key, let text = AnyValueView(bytes, value ?? 0..<0).string else { continue }
                    if SpanFacts.equal(bytes, key, Self.version) {
                        workload.version = String(bytes, text)
                    } else if SpanFacts.equal(bytes, key, Self.kubernetesNamespace) {
                        workload.namespace = String(bytes, text)
                    } else if SpanFacts.equal(bytes, key, Self.serviceNamespace) {
                        serviceNamespace = String(bytes, text)
                    }
                }
            }
        }
        if workload.namespace.isEmpty { workload.namespace = serviceNamespace }
        return workload
    }
}
