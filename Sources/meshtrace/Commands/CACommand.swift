import ArgumentParser
import Foundation
import MeshCore
import MeshIdentity
import X509

/// `meshtrace ca`: a development CA that issues SPIFFE X.509-SVIDs.
struct CACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca", abstract: "A development CA: SPIFFE certificates for exporters, sidecars and the collector.",
        subcommands: [Init.self, Issue.self, Show.self])

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a CA for a trust domain and a certificate for the collector.",
            discussion: """
                Writes DIR/ca.pem and DIR/ca-key.pem (the CA), and DIR/collector.pem and \
                DIR/collector-key.pem (spiffe://TRUST-DOMAIN/meshtrace/collector, valid for \
                localhost, 127.0.0.1 and each --host). `meshtrace-collector --tls-dir DIR` then \
                runs strict mTLS.
                """)

        @Option(name: .long, help: "Directory to write into (created if missing).")
        var dir: String

        @Option(name: .long, help: "SPIFFE trust domain, e.g. cluster.local.")
        var trustDomain: String = "cluster.local"

        @Option(name: .long, help: "How long the CA is valid, e.g. 8760h.")
        var ttl: String = "8760h"

        @Option(name: .long, help: "How long the collector's certificate is valid, e.g. 720h.")
        var collectorTtl: String = "720h"

        @Option(name: .long, help: "Another DNS name or IP address for the collector's certificate (repeatable).")
        var host: [String] = []

        @Flag(name: .long, help: "Replace a CA already in DIR.")
        var force = false

        func run() throws {
            guard SPIFFEID.isTrustDomain(trustDomain) else {
                throw ValidationError("--trust-domain: \(trustDomain.debugDescription) is not a SPIFFE trust domain (lower-case letters, digits, '.', '-', '_')")
            }
            let caFile = dir + "/ca.pem"
            if FileManager.default.fileExists(atPath: caFile) && !force {
                throw ValidationError("\(caFile) exists; pass --force to replace the CA (certificates it issued stop being trusted)")
            }
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let ca = try DevCA.create(trustDomain: trustDomain, validFor: try seconds(ttl, "--ttl"))
            try ca.write(certificateFile: caFile, keyFile: dir + "/ca-key.pem")
            var leaf = DevCA.Leaf(spiffeID: try SPIFFEID("spiffe://\(trustDomain)/meshtrace/collector"), validFor: try seconds(collectorTtl, "--collector-ttl"))
            leaf.dnsNames = ["localhost"] + host.filter { !isAddress($0) }
            leaf.ipAddresses = ["127.0.0.1", "::1"] + host.filter(isAddress)
            let issued = try ca.issue(leaf)
            try PEMFiles.write(certificate: issued.certificate, key: issued.key,
                               certificateFile: dir + "/collector.pem", keyFile: dir + "/collector-key.pem")
            print("CA for spiffe://\(trustDomain): \(caFile) (key \(dir)/ca-key.pem)")
            print("collector certificate: \(dir)/collector.pem, expires \(issued.certificate.notValidAfter)")
        }
    }

    struct Issue: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a short-lived certificate whose URI SAN is a SPIFFE ID.",
            discussion: """
                Writes OUT.pem (the certificate) and OUT-key.pem; OUT defaults to DIR/ followed \
                by the ID's last path segment. Issuing again to the same files replaces them \
                whole, which is how certificates rotate: the collector, exporters and sidecars \
                reload them when they change.
                """)

        @Option(name: .long, help: "Directory of the CA (from `meshtrace ca init`).")
        var dir: String

        @Option(name: .customLong("spiffe-id"), help: "The workload's SPIFFE ID, e.g. spiffe://cluster.local/ns/shop/sa/cart.")
        var spiffeID: String

        @Option(name: .long, help: "How long the certificate is valid, e.g. 1h, 24h.")
        var ttl: String = "1h"

        @Option(name: .long, help: "A DNS name or IP address the certificate is also valid for (repeatable).")
        var host: [String] = []

        @Option(name: .long, help: "Output path prefix (OUT.pem and OUT-key.pem).")
        var out: String?

        func run() throws {
            let id: SPIFFEID
            do { id = try SPIFFEID(spiffeID) } catch { throw ValidationError("--spiffe-id: \(error)") }
            let ca = try DevCA.load(certificateFile: dir + "/ca.pem", keyFile: dir + "/ca-key.pem")
            if let domain = ca.trustDomain, domain != id.trustDomain {
                throw ValidationError("--spiffe-id: \(id) is outside the CA's trust domain \(domain)")
            }
            var leaf = DevCA.Leaf(spiffeID: id, validFor: try seconds(ttl, "--ttl"))
            leaf.dnsNames = host.filter { !isAddress($0) }
            leaf.ipAddresses = host.filter(isAddress)
            let issued = try ca.issue(leaf)
            let prefix = out ?? dir + "/" + (id.segments.last ?? id.trustDomain)
            try PEMFiles.write(certificate: issued.certificate, key: issued.key,
                               certificateFile: prefix + ".pem", keyFile: prefix + "-key.pem")
            print("\(id): \(prefix).pem and \(prefix)-key.pem, expires \(issued.certificate.notValidAfter)")
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a certificate's SPIFFE ID, issuer and validity.")

        @Argument(help: "A PEM certificate file.")
        var file: String

        func run() throws {
            for certificate in try PEMFiles.certificates(at: file) {
                let uris = PeerVerifier.uris(of: certificate)
                print("subject:    \(certificate.subject)")
                print("issuer:     \(certificate.issuer)")
                print("spiffe id:  \(uris.first(where: { $0.hasPrefix("spiffe://") }) ?? "none")")
                print("serial:     \(certificate.serialNumber)")
                print("valid:      \(certificate.notValidBefore) to \(certificate.notValidAfter)")
            }
        }
    }
}

private func seconds(_ text: String, _ flag: String) throws -> TimeInterval {
    guard let nanoseconds = DurationText.nanoseconds(text), nanoseconds > 0 else {
        throw ValidationError("\(flag): expected a duration like 1h, 30m or 720h, got \(text.debugDescription)")
    }
    return TimeInterval(nanoseconds) / 1e9
}

private func isAddress(_ text: String) -> Bool {
    text.contains(":") || text.split(separator: ".").count == 4 && text.allSatisfy { $0.isNumber || $0 == "." }
}
