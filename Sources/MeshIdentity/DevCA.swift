import Crypto
import Foundation
import SwiftASN1
import X509

/// A development certificate authority for one trust domain: a self-signed root
/// that issues short-lived X.509-SVIDs (leaf certificates whose one URI SAN is a
/// SPIFFE ID). Keys are ECDSA P-256; everything is read and written as PEM.
public struct DevCA: Sendable {
    public let certificate: Certificate
    let key: Certificate.PrivateKey

    /// What a leaf certificate says, and for how long.
    public struct Leaf: Sendable {
        /// URI SANs; an X.509-SVID has exactly one, its SPIFFE ID.
        public var uris: [String]
        public var dnsNames: [String] = []
        /// IPv4 or IPv6 addresses, as text.
        public var ipAddresses: [String] = []
        public var notBefore: Date
        public var notAfter: Date

        public init(spiffeID: SPIFFEID?, validFor seconds: TimeInterval, from start: Date = Date()) {
            uris = spiffeID.map { [$0.description] } ?? []
            // A minute of slack for clocks that run a little behind.
            notBefore = start.addingTimeInterval(-60)
            notAfter = start.addingTimeInterval(seconds)
        }
    }

    /// A new root for `trustDomain`, valid for `seconds` from now.
    public static func create(trustDomain: String, validFor seconds: TimeInterval, now: Date = Date()) throws -> DevCA {
        let id = try SPIFFEID("spiffe://\(trustDomain)")
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        let name = try DistinguishedName {
            OrganizationName("meshtrace")
            CommonName("meshtrace dev CA \(trustDomain)")
        }
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: key.publicKey,
            notValidBefore: now.addingTimeInterval(-60), notValidAfter: now.addingTimeInterval(seconds),
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: key.publicKey)
                SubjectAlternativeNames([.uniformResourceIdentifier(id.description)])
            },
            issuerPrivateKey: key)
        return DevCA(certificate: certificate, key: key)
    }

    /// The CA kept in `certificateFile` and `keyFile` (PEM).
    public static func load(certificateFile: String, keyFile: String) throws -> DevCA {
        let certificate = try PEMFiles.certificates(at: certificateFile)
        guard let first = certificate.first else { throw PEMFiles.Failure(description: "\(certificateFile): no certificate") }
        return DevCA(certificate: first, key: try PEMFiles.privateKey(at: keyFile))
    }

    /// The trust domain this CA signs for (from its URI SAN).
    public var trustDomain: String? { PeerVerifier.trustDomain(of: certificate) }

    /// Issues a leaf certificate and its new key.
    public func issue(_ leaf: Leaf) throws -> (certificate: Certificate, key: Certificate.PrivateKey) {
        let leafKey = Certificate.PrivateKey(P256.Signing.PrivateKey())
        var names: [GeneralName] = leaf.uris.map { .uniformResourceIdentifier($0) }
        names += leaf.dnsNames.map { .dnsName($0) }
        for address in leaf.ipAddresses {
            guard let bytes = Self.addressBytes(address) else { throw PEMFiles.Failure(description: "\(address.debugDescription) is not an IP address") }
            names.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(bytes))))
        }
        let subject = try DistinguishedName {
            OrganizationName("meshtrace")
            CommonName(leaf.uris.first ?? leaf.dnsNames.first ?? "meshtrace workload")
        }
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: leafKey.publicKey,
            notValidBefore: leaf.notBefore, notValidAfter: leaf.notAfter,
            issuer: self.certificate.subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectKeyIdentifier(hash: leafKey.publicKey)
                AuthorityKeyIdentifier(keyIdentifier: try? self.certificate.extensions.subjectKeyIdentifier?.keyIdentifier)
                if !names.isEmpty { SubjectAlternativeNames(names) }
            },
            issuerPrivateKey: key)
        return (certificate, leafKey)
    }

    /// Writes the CA's certificate and key as PEM (the key readable by its owner only).
    public func write(certificateFile: String, keyFile: String) throws {
        try PEMFiles.write(certificate: certificate, key: key, certificateFile: certificateFile, keyFile: keyFile)
    }

    private static func addressBytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }
}

/// Reading and writing certificates and keys as PEM files.
public enum PEMFiles {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(description: String) { self.description = description }
    }

    /// Every certificate in a PEM file (a chain or a trust bundle), in order.
    public static func certificates(at path: String) throws(Failure) -> [Certificate] {
        let text = try read(path)
        do {
            let documents = try PEMDocument.parseMultiple(pemString: text)
            let certificates = try documents.filter { $0.discriminator == "CERTIFICATE" }.map { try Certificate(pemDocument: $0) }
            guard !certificates.isEmpty else { throw Failure(description: "\(path): no CERTIFICATE block") }
            return certificates
        } catch let failure as Failure {
            throw failure
        } catch {
            throw Failure(description: "\(path): not a PEM certificate: \(error)")
        }
    }

    public static func privateKey(at path: String) throws(Failure) -> Certificate.PrivateKey {
        let text = try read(path)
        do {
            return try Certificate.PrivateKey(pemEncoded: text)
        } catch {
            throw Failure(description: "\(path): not a PEM private key: \(error)")
        }
    }

    /// Writes `certificates` (leaf first) and `key`; each file is written whole to a
    /// temporary name and renamed, so a reader never sees half of one.
    public static func write(
        certificate: Certificate, chain: [Certificate] = [], key: Certificate.PrivateKey,
        certificateFile: String, keyFile: String
    ) throws {
        let pem = try ([certificate] + chain).map { try $0.serializeAsPEM().pemString }.joined(separator: "\n") + "\n"
        // The key first: a watcher that sees the new certificate finds its key already there.
        try replace(keyFile, with: try key.serializeAsPEM().pemString + "\n", permissions: 0o600)
        try replace(certificateFile, with: pem, permissions: 0o644)
    }

    static func replace(_ path: String, with text: String, permissions: Int) throws {
        let temporary = path + ".tmp-\(getpid())"
        guard FileManager.default.createFile(
            atPath: temporary, contents: Data(text.utf8), attributes: [.posixPermissions: permissions])
        else { throw Failure(description: "\(temporary): cannot write") }
        guard rename(temporary, path) == 0 else {
            unlink(temporary)
            throw Failure(description: "\(path): cannot replace: \(String(cString: strerror(errno)))")
        }
    }

    static func read(_ path: String) throws(Failure) -> String {
        guard let data = FileManager.default.contents(atPath: path) else { throw Failure(description: "\(path): cannot read") }
        guard let text = String(data: data, encoding: .utf8) else { throw Failure(description: "\(path): not text") }
        return text
    }
}
