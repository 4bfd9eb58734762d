import Foundation

/// A SPIFFE ID, `spiffe://<trust-domain>/<path>`, validated as the SPIFFE ID
/// specification says: lower-case trust domain of letters, digits, `.`, `-` and
/// `_`; path segments of letters, digits, `.`, `-` and `_`, none empty, `.` or
/// `..`; no query, fragment, port or user info; at most 2,048 bytes.
public struct SPIFFEID: Hashable, Sendable, CustomStringConvertible {
    public let trustDomain: String
    /// The path without its leading `/`, split into segments (empty for the trust domain's own ID).
    public let segments: [String]

    /// Why a text is not a SPIFFE ID.
    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
    }

    public init(_ text: String) throws(Invalid) {
        guard text.utf8.count <= 2048 else { throw Invalid(description: "longer than 2048 bytes") }
        let scheme = "spiffe://"
        guard text.hasPrefix(scheme) else { throw Invalid(description: "\(text.debugDescription) does not start with spiffe://") }
        let rest = text.dropFirst(scheme.count)
        let domainEnd = rest.firstIndex(of: "/") ?? rest.endIndex
        let domain = String(rest[..<domainEnd])
        guard !domain.isEmpty else { throw Invalid(description: "\(text.debugDescription) has no trust domain") }
        guard domain.utf8.allSatisfy(Self.isTrustDomainByte) else {
            throw Invalid(description: "trust domain \(domain.debugDescription) may hold only lower-case letters, digits, '.', '-' and '_' (no port, user info or upper case)")
        }
        var segments: [String] = []
        if domainEnd < rest.endIndex {
            let path = rest[rest.index(after: domainEnd)...]
            for segment in path.split(separator: "/", omittingEmptySubsequences: false) {
                guard !segment.isEmpty else { throw Invalid(description: "\(text.debugDescription) has an empty path segment") }
                guard segment != "." && segment != ".." else { throw Invalid(description: "\(text.debugDescription) has a '.' or '..' path segment") }
                guard segment.utf8.allSatisfy(Self.isPathByte) else {
                    throw Invalid(description: "path segment \(String(segment).debugDescription) may hold only letters, digits, '.', '-' and '_'")
                }
                segments.append(String(segment))
            }
        }
        self.trustDomain = domain
        self.segments = segments
    }

    /// Whether `text` is a trust domain name (`cluster.local`), as the ID's authority may be.
    public static func isTrustDomain(_ text: String) -> Bool {
        (try? SPIFFEID("spiffe://" + text))?.segments.isEmpty == true
    }

    /// The path, with its leading `/` (empty for a trust domain's own ID).
    public var path: String { segments.isEmpty ? "" : "/" + segments.joined(separator: "/") }

    public var description: String { "spiffe://" + trustDomain + path }

    private static func isTrustDomainByte(_ byte: UInt8) -> Bool {
        (0x61...0x7A).contains(byte) || (0x30...0x39).contains(byte) || byte == 0x2E || byte == 0x2D || byte == 0x5F
    }

    private static func isPathByte(_ byte: UInt8) -> Bool {
        isTrustDomainByte(byte) || (0x41...0x5A).contains(byte)
    }
}

/// A pattern over SPIFFE IDs for allow-lists: `spiffe://td/ns/*/sa/web`, where `*`
/// stands for one whole path segment and a final `**` for any number of them.
public struct SPIFFEPattern: Hashable, Sendable, CustomStringConvertible {
    public let trustDomain: String
    let segments: [String]
    public let description: String

    public init(_ text: String) throws(SPIFFEID.Invalid) {
        // Validate the shape with `*` replaced by a legal segment.
        let probe = text.split(separator: "/", omittingEmptySubsequences: false)
            .map { $0 == "*" || $0 == "**" ? "x" : String($0) }.joined(separator: "/")
        let shape = try SPIFFEID(probe)
        let segments = text.dropFirst("spiffe://".count + shape.trustDomain.count)
            .split(separator: "/").map(String.init)
        if let deep = segments.firstIndex(of: "**"), deep != segments.count - 1 {
            throw SPIFFEID.Invalid(description: "\(text.debugDescription): '**' may only be the last segment")
        }
        trustDomain = shape.trustDomain
        self.segments = segments
        description = text
    }

    public func matches(_ id: SPIFFEID) -> Bool {
        guard id.trustDomain == trustDomain else { return false }
        for (index, segment) in segments.enumerated() {
            if segment == "**" { return id.segments.count >= index }
            guard index < id.segments.count, segment == "*" || segment == id.segments[index] else { return false }
        }
        return id.segments.count == segments.count
    }
}

/// Which `service.name` a workload may claim, from its SPIFFE ID's path:
/// `ns/{ns}/sa/{sa} => {sa}` lets `spiffe://td/ns/shop/sa/cart` claim `cart`.
/// A `{name}` segment captures that segment; `*` matches one without capturing.
/// A service of `*` lets the identity claim any service (an agent that forwards
/// other workloads' spans).
public struct IdentityBinding: Hashable, Sendable, CustomStringConvertible {
    let pattern: [String]
    let template: String
    public let description: String

    /// Parses `PATH-PATTERN => SERVICE-TEMPLATE`.
    public init(_ text: String) throws(SPIFFEID.Invalid) {
        let parts = text.components(separatedBy: "=>")
        guard parts.count == 2 else { throw SPIFFEID.Invalid(description: "\(text.debugDescription): expected 'path/{name} => {name}'") }
        let path = parts[0].trimmingCharacters(in: .whitespaces)
        let template = parts[1].trimmingCharacters(in: .whitespaces)
        let pattern = path.split(separator: "/").map(String.init)
        guard !pattern.isEmpty, !template.isEmpty else {
            throw SPIFFEID.Invalid(description: "\(text.debugDescription): the path pattern and the service must not be empty")
        }
        let captures = Set(pattern.compactMap(Self.captureName))
        var rest = template[...]
        while let open = rest.firstIndex(of: "{") {
            guard let close = rest[open...].firstIndex(of: "}") else {
                throw SPIFFEID.Invalid(description: "\(text.debugDescription): unclosed '{' in the service")
            }
            let name = String(rest[rest.index(after: open)..<close])
            guard captures.contains(name) else {
                throw SPIFFEID.Invalid(description: "\(text.debugDescription): {\(name)} is not captured by the path pattern")
            }
            rest = rest[rest.index(after: close)...]
        }
        self.pattern = pattern
        self.template = template
        description = "\(path) => \(template)"
    }

    /// Whether the binding lets an identity claim any service.
    public var allowsAnyService: Bool { template == "*" }

    /// The service `id` may claim under this binding (`*` for any), or nil when its path does not match.
    public func service(for id: SPIFFEID) -> String? {
        guard id.segments.count == pattern.count else { return nil }
        var captured: [String: String] = [:]
        for (segment, want) in zip(id.segments, pattern) {
            if let name = Self.captureName(want) {
                captured[name] = segment
            } else if want != "*" && want != segment {
                return nil
            }
        }
        var service = template
        for (name, value) in captured { service = service.replacingOccurrences(of: "{\(name)}", with: value) }
        return service
    }

    private static func captureName(_ segment: String) -> String? {
        guard segment.count > 2, segment.hasPrefix("{"), segment.hasSuffix("}") else { return nil }
        return String(segment.dropFirst().dropLast())
    }
}
