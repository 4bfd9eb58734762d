#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Whether a request travelled over mutual TLS, as the proxy that saw it reports.
public enum Security: UInt8, Sendable {
    case unknown = 0
    case mutualTLS = 1
    case plaintext = 2
}

/// What golden signals read from a span's attributes: request and response sizes,
/// the peer a CLIENT span called, what kind of system that peer is, and whether the
/// request was mutual TLS.
///
/// The OTLP decoder gathers them while it walks each attribute (`observe`);
/// `init(attributes:_:)` reads them again from stored attribute bytes. Both go
/// through `observe`, so they agree.
public struct RequestFacts: Sendable, Equatable {
    public var requestBytes: UInt64 = 0
    public var responseBytes: UInt64 = 0
    /// The peer's name as offsets into the span's stored `KeyValueList` (0 is its
    /// first byte); `peerEnd == 0` when there is none.
    private var peerStart: UInt32 = 0
    private var peerEnd: UInt32 = 0
    private var peerRank = UInt8.max
    /// The span called a database (`db.system` is set).
    public var database = false
    /// The span belongs to a messaging system (`messaging.system` is set).
    public var messaging = false
    public var security = Security.unknown

    public init() {}

    /// The best name for the peer of a CLIENT span (see `PeerKey`), as a range of the
    /// span's stored attribute bytes.
    public var peer: Range<Int>? { peerEnd == 0 ? nil : Int(peerStart)..<Int(peerEnd) }

    /// Attributes whose values can name a peer, best first: OpenTelemetry's
    /// `peer.service`, the database, then the address the proxy dialled.
    enum PeerKey: UInt8 {
        case peerService, databaseNamespace, databaseName, databaseSystem, messagingDestination, serverAddress, netPeerName, upstreamCluster
    }

    enum Key {
        case requestBytes, responseBytes, peer(PeerKey), securityPolicy, tlsClientSubject, tlsEstablished, messagingSystem
    }

    /// Every key that says a fact (what `key` recognises).
    static let factKeys: [StaticString] = [
        "peer.service", "db.namespace", "db.name", "db.system", "messaging.destination.name", "server.address",
        "net.peer.name", "upstream_cluster", "request_size", "http.request.body.size", "http.request_content_length",
        "response_size", "http.response.body.size", "http.response_content_length", "connection_security_policy",
        "tls.client.subject", "tls.established", "messaging.system",
    ]

    /// Whether the key of `count` bytes at `start` may say a fact; false for most keys
    /// that do not. A key of eight bytes or more is told by one bit of
    /// `factKeyHashes`, chosen by a hash of its length and its first and last eight
    /// bytes, so that an attribute no fact needs costs neither a call nor a lookup.
    @inlinable
    public static func mayBeFactKey(_ start: UnsafePointer<UInt8>, count: Int) -> Bool {
        guard count >= 8 else { return count == 7 }
        return factKeyHashes & (1 &<< keyHash(start, count: count)) != 0
    }

    /// Which of 64 bits a key of at least eight bytes sets in `factKeyHashes`.
    @inlinable
    static func keyHash(_ start: UnsafePointer<UInt8>, count: Int) -> UInt64 {
        let raw = UnsafeRawPointer(start)
        let first = UInt64(littleEndian: raw.loadUnaligned(as: UInt64.self))
        let last = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: count &- 8, as: UInt64.self))
        return (((first ^ (last &* 0x0000_0100_0000_01B3)) &+ UInt64(count)) &* 0xBF58_476D_1CE4_E5B9) &>> 58
    }

    /// The bits `keyHash` gives the keys of `factKeys` (a test checks it against them).
    @inlinable
    static var factKeyHashes: UInt64 { 0x2904_04C5_4800_14A0 }

    /// The key at `bytes[range]`, if it says a fact: a switch on its length, then one
    /// comparison with a static string (no allocation, no reference counting).
    static func key(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> Key? {
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

    /// Reads the facts from `bytes[range]`, a span's stored protobuf `KeyValueList`.
    /// Malformed bytes (which the decoder would not have let through) end the scan.
    public init(attributes bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) {
        var list = WireReader(bytes, range)
        while let (field, wireType) = list.tag() {
            guard field == 1, wireType == 2 else {
                guard list.skip(wireType: wireType) else { return }
                continue
            }
            guard let pair = list.lengthDelimited() else { return }
            // The common shape, `0A <short length> key 12 <short length> value` and
            // nothing else: look the key up without parsing, and pass over the
            // attributes no fact needs.
            if pair.count >= 4, bytes[pair.lowerBound] == 0x0A, bytes[pair.lowerBound + 1] < 0x80 {
                let keyEnd = pair.lowerBound + 2 + Int(bytes[pair.lowerBound + 1])
                if keyEnd + 2 <= pair.upperBound, bytes[keyEnd] == 0x12, bytes[keyEnd + 1] < 0x80,
                   keyEnd + 2 + Int(bytes[keyEnd + 1]) == pair.upperBound,
                   !Self.mayBeFactKey(bytes.baseAddress! + pair.lowerBound + 2, count: keyEnd - pair.lowerBound - 2)
                    || Self.key(bytes, pair.lowerBound + 2..<keyEnd) == nil { continue }
            }
            guard let (key, value) = Self.keyValue(bytes, pair) else { return }
            if let key { observe(bytes, key: key, value: value, storedAt: -range.lowerBound) }
        }
    }

    /// Takes in an attribute: its key is `bytes[key]`, its value the `AnyValue` at
    /// `bytes[value]` (the last `value` field of its `KeyValue`). `shift` added to an
    /// offset of `bytes` gives the offset of the same byte in the span's stored
    /// `KeyValueList`.
    @inlinable
    public mutating func observe(_ bytes: UnsafeBufferPointer<UInt8>, key: Range<Int>, value: Range<Int>?, storedAt shift: Int) {
        guard let base = bytes.baseAddress, Self.mayBeFactKey(base + key.lowerBound, count: key.count) else { return }
        observeKnown(bytes, key: key, value: value, storedAt: shift)
    }

    @usableFromInline
    mutating func observeKnown(_ bytes: UnsafeBufferPointer<UInt8>, key: Range<Int>, value: Range<Int>?, storedAt shift: Int) {
        guard let known = Self.key(bytes, key) else { return }
        apply(known, value: AnyValueView(bytes, value ?? 0..<0), shift: shift)
    }

    /// The key and value payloads of the OTLP `KeyValue` at `bytes[pair]` (the last of
    /// each, as protobuf reads repeated fields); nil when the bytes are malformed.
    public static func keyValue(_ bytes: UnsafeBufferPointer<UInt8>, _ pair: Range<Int>) -> (key: Range<Int>?, value: Range<Int>?)? {
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

    private mutating func apply(_ key: Key, value: AnyValueView, shift: Int) {
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
            guard let start = UInt32(exactly: text.lowerBound + shift), let end = UInt32(exactly: text.upperBound + shift) else { return }
            (peerStart, peerEnd) = (start, end)
            peerRank = peerKey.rawValue
        case .messagingSystem:
            messaging = true
        case .securityPolicy:
            // Istio's label: `mutual_tls`, `none` or `unknown`.
            if let text = value.string {
                if Self.equal(value.bytes, text, "mutual_tls") { security = .mutualTLS }
                else if Self.equal(value.bytes, text, "none") { security = .plaintext }
            }
        case .tlsClientSubject:
            if value.string?.isEmpty == false { security = .mutualTLS }
        case .tlsEstablished:
            if value.boolean == false, security == .unknown { security = .plaintext }
        }
    }

    /// The host of an Envoy cluster name `direction|port|subset|host`, if it has one.
    private static func clusterHost(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> Range<Int>? {
        let bar = UInt8(ascii: "|")
        var bars = 0
        var start = range.lowerBound
        var index = range.lowerBound
        // Eight bytes at a time: a byte of `word` is zero where a bar is, and `found`
        // has the high bit of exactly those bytes set.
        let raw = UnsafeRawPointer(bytes.baseAddress!)
        let low7: UInt64 = 0x7F7F_7F7F_7F7F_7F7F
        while index &+ 8 <= range.upperBound {
            let word = raw.loadUnaligned(fromByteOffset: index, as: UInt64.self) ^ (UInt64(bar) &* 0x0101_0101_0101_0101)
            let found = ~(((word & low7) &+ low7) | word | low7)
            if found != 0 {
                bars &+= found.nonzeroBitCount
                start = index &+ (63 &- found.leadingZeroBitCount) / 8 &+ 1
            }
            index &+= 8
        }
        while index < range.upperBound {
            if bytes[index] == bar {
                bars &+= 1
                start = index &+ 1
            }
            index &+= 1
        }
        guard bars == 3, start < range.upperBound else { return nil }
        return start..<range.upperBound
    }

    /// Whether `bytes[range]` are the UTF-8 bytes of `expected`.
    public static func equal(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ expected: StaticString) -> Bool {
        range.count == expected.utf8CodeUnitCount
            && memcmp(bytes.baseAddress! + range.lowerBound, expected.utf8Start, range.count) == 0
    }
}

extension SpanBatch {
    /// The facts of every span, read from the stored attributes (the decoder gathers
    /// the same while decoding; this is for batches built another way).
    public func requestFacts() -> [RequestFacts] {
        attributes.bytes.withUnsafeBufferPointer { bytes in
            (0..<count).map { RequestFacts(attributes: bytes, attributes.range(of: $0)) }
        }
    }
}

/// An OTLP `AnyValue` in a buffer, read lazily.
public struct AnyValueView {
    public let bytes: UnsafeBufferPointer<UInt8>
    public let range: Range<Int>

    public init(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) {
        self.bytes = bytes
        self.range = range
    }

    /// The `string_value`, as a range of the buffer.
    public var string: Range<Int>? {
        var reader = WireReader(bytes, range)
        var found: Range<Int>?
        while let (field, wireType) = reader.tag() {
            if field == 1 && wireType == 2 { found = reader.lengthDelimited() } else if !reader.skip(wireType: wireType) { return nil }
        }
        return found
    }

    /// The `int_value`, or a `string_value` of decimal digits (Envoy's Zipkin tags are strings).
    public var integer: Int64? {
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
    public var boolean: Bool? {
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
