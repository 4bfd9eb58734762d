import Foundation
import SwiftASN1
import X509

/// A workload identity proven by a certificate chain.
public struct VerifiedPeer: Hashable, Sendable {
    public let id: SPIFFEID
    /// When the leaf certificate expires.
    public let notAfter: Date
    /// The leaf certificate's serial number, in hex.
    public let serial: String
}

/// Why a peer's certificate was refused, in words an operator can act on.
public enum PeerRefusal: Error, Hashable, Sendable, CustomStringConvertible {
    case noCertificate
    case expired(notAfter: Date)
    case notYetValid(notBefore: Date)
    case selfSigned(subject: String)
    case untrusted(subject: String, detail: String)
    case noSPIFFEID(uris: [String])
    case severalURIs([String])
    case invalidSPIFFEID(String, reason: String)
    case wrongTrustDomain(SPIFFEID, expected: String)
    case notAllowed(SPIFFEID)
    case plaintext

    public var description: String {
        switch self {
        case .noCertificate: return "no client certificate presented (strict mode requires one)"
        case .expired(let notAfter): return "certificate expired at \(Self.format(notAfter))"
        case .notYetValid(let notBefore): return "certificate is not valid before \(Self.format(notBefore))"
        case .selfSigned(let subject): return "self-signed certificate (\(subject)) is not in the trust bundle"
        case .untrusted(let subject, let detail): return "certificate (\(subject)) does not chain to the trust bundle: \(detail)"
        case .noSPIFFEID(let uris):
            return uris.isEmpty ? "certificate has no URI SAN, so no SPIFFE ID" : "certificate's URI SAN \(uris) holds no SPIFFE ID"
        case .severalURIs(let uris): return "certificate has \(uris.count) URI SANs \(uris); an X.509-SVID has exactly one"
        case .invalidSPIFFEID(let text, let reason): return "URI SAN \(text.debugDescription) is not a valid SPIFFE ID: \(reason)"
        case .wrongTrustDomain(let id, let expected): return "SPIFFE ID \(id) is outside the trust domain \(expected)"
        case .notAllowed(let id): return "SPIFFE ID \(id) is not on the allow-list"
        case .plaintext: return "plaintext connection (TLS mode strict requires mTLS)"
        }
    }

    /// A short stable name, for counters and audit records.
    public var kind: String {
        switch self {
        case .noCertificate: return "no_certificate"
        case .expired: return "expired"
        case .notYetValid: return "not_yet_valid"
        case .selfSigned: return "self_signed"
        case .untrusted: return "untrusted"
        case .noSPIFFEID, .severalURIs, .invalidSPIFFEID: return "bad_san"
        case .wrongTrustDomain: return "wrong_trust_domain"
        case .notAllowed: return "not_allowed"
        case .plaintext: return "plaintext"
        }
    }

    static func format(_ date: Date) -> String {
        ISO8601DateFormatter().string(from: date)
    }
}

/// Decides whether a client's certificate chain proves a workload identity the
/// collector accepts: valid now, chained to the trust bundle (RFC 5280), exactly
/// one URI SAN holding a SPIFFE ID in the trust domain, and on the allow-list when
/// there is one.
public struct PeerVerifier: Sendable {
    public let trustBundle: [Certificate]
    public let trustDomain: String
    /// Empty allows every ID in the trust domain.
    public let allowed: [SPIFFEPattern]

    public init(trustBundle: [Certificate], trustDomain: String, allowed: [SPIFFEPattern] = []) {
        self.trustBundle = trustBundle
        self.trustDomain = trustDomain
        self.allowed = allowed
    }

    /// Checks `chain` (leaf first, as the peer sent it) at time `now`.
    public func verify(chain: [Certificate], now: Date = Date()) async -> Result<VerifiedPeer, PeerRefusal> {
        guard let leaf = chain.first else { return .failure(.noCertificate) }
        if leaf.notValidAfter < now { return .failure(.expired(notAfter: leaf.notValidAfter)) }
        if leaf.notValidBefore > now { return .failure(.notYetValid(notBefore: leaf.notValidBefore)) }
        var verifier = Verifier(rootCertificates: CertificateStore(trustBundle)) { RFC5280Policy(validationTime: now) }
        let result = await verifier.validate(leaf: leaf, intermediates: CertificateStore(Array(chain.dropFirst())))
        if case .couldNotValidate(let failures) = result {
            if leaf.issuer == leaf.subject { return .failure(.selfSigned(subject: "\(leaf.subject)")) }
            let detail = failures.isEmpty ? "no issuer in the trust bundle" : failures.map { "\($0.policyFailureReason)" }.joined(separator: "; ")
            return .failure(.untrusted(subject: "\(leaf.subject)", detail: detail))
        }
        let uris = Self.uris(of: leaf)
        guard uris.count <= 1 else { return .failure(.severalURIs(uris)) }
        guard let uri = uris.first, uri.hasPrefix("spiffe://") else { return .failure(.noSPIFFEID(uris: uris)) }
        let id: SPIFFEID
        do {
            id = try SPIFFEID(uri)
        } catch {
            return .failure(.invalidSPIFFEID(uri, reason: error.description))
        }
        guard id.trustDomain == trustDomain else { return .failure(.wrongTrustDomain(id, expected: trustDomain)) }
        guard allowed.isEmpty || allowed.contains(where: { $0.matches(id) }) else { return .failure(.notAllowed(id)) }
        return .success(VerifiedPeer(id: id, notAfter: leaf.notValidAfter, serial: "\(leaf.serialNumber)"))
    }

    /// The trust domain of the first SPIFFE ID among `certificate`'s URI SANs.
    public static func trustDomain(of certificate: Certificate) -> String? {
        uris(of: certificate).lazy.compactMap { try? SPIFFEID($0) }.first?.trustDomain
    }

    /// The URI SANs of `certificate`.
    public static func uris(of certificate: Certificate) -> [String] {
        guard let names = try? certificate.extensions.subjectAlternativeNames else { return [] }
        return names.compactMap { name in
            if case .uniformResourceIdentifier(let uri) = name { return uri }
            return nil
        }
    }
}
