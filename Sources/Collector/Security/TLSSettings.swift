import Foundation
import MeshIdentity

/// How the collector's receivers treat transport security.
public enum TLSMode: String, Sendable, CaseIterable {
    /// Plaintext only; no identities.
    case off
    /// TLS and plaintext on the same port; plaintext connections are accepted,
    /// counted, and their spans labelled `plaintext`.
    case permissive
    /// mTLS only: a client certificate chained to the trust bundle, with a SPIFFE ID
    /// in the trust domain (and on the allow-list, when there is one).
    case strict
}

/// What to do with spans whose `service.name` is not the one their sender's identity may claim.
public enum MismatchAction: String, Sendable, CaseIterable {
    /// Refused through `partial_success`, with the reason.
    case reject
    /// Stored under the service the identity may claim; the claimed name is kept in
    /// `meshtrace.claimed.service.name`.
    case relabel
}

/// The receivers' TLS: certificate, trust, allow-list and identity binding.
public struct TLSSettings: Sendable {
    /// Unset: `strict` when a certificate is configured, else `off`.
    public var mode: TLSMode?
    /// The collector's certificate chain (PEM, leaf first) and key.
    public var certificateFile: String?
    public var keyFile: String?
    /// CA certificates that client certificates must chain to (PEM).
    public var trustBundleFile: String?
    /// Unset: the trust domain of the collector's own SPIFFE ID, else of the trust bundle's.
    public var trustDomain: String?
    /// SPIFFE ID patterns allowed to connect (`*` one segment, final `**` any); empty allows the whole trust domain.
    public var allowed: [SPIFFEPattern] = []
    /// A client that has not finished its TLS handshake by then is disconnected.
    public var handshakeTimeout: Duration = .seconds(10)
    /// How often certificate files are checked for change.
    public var reloadInterval: Duration = .seconds(5)
    /// `PATH-PATTERN => SERVICE` rules; the first that matches an ID's path says which
    /// `service.name` it may claim. Empty: `ns/{ns}/sa/{sa} => {sa}`.
    public var bindings: [IdentityBinding] = []
    public var onMismatch: MismatchAction = .reject
    /// Certificates expiring within this long are audit findings.
    public var expiryWarning: Duration = .seconds(24 * 3600)

    public init() {}

    /// The default binding: a Kubernetes service account's name is its service.
    public static let defaultBinding = "ns/{ns}/sa/{sa} => {sa}"

    public var effectiveMode: TLSMode { mode ?? (certificateFile == nil ? .off : .strict) }

    /// Takes the certificate, key and trust bundle from a directory `meshtrace ca init` wrote.
    public mutating func use(directory: String) {
        certificateFile = directory + "/collector.pem"
        keyFile = directory + "/collector-key.pem"
        trustBundleFile = directory + "/ca.pem"
    }

    /// The bindings in force: the configured ones, or the default.
    var effectiveBindings: [IdentityBinding] { bindings.isEmpty ? [try! IdentityBinding(Self.defaultBinding)] : bindings }

    /// Checks what can be checked without reading files; returns why not, when invalid.
    func problem() -> String? {
        guard effectiveMode != .off else { return nil }
        if certificateFile == nil || keyFile == nil || trustBundleFile == nil {
            return "TLS mode \(effectiveMode.rawValue) needs tls.cert_file, tls.key_file and tls.trust_bundle (or tls.dir)"
        }
        return nil
    }
}
