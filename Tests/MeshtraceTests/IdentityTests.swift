@testable import Collector
import Crypto
import Foundation
import Logging
import MeshCore
import MeshExporter
@testable import MeshIdentity
import OTLPWire
import NIOCore
import NIOPosix
import NIOSSL
import Sampling
import Synchronization
import X509
import XCTest

/// mTLS between exporters and the collector: real handshakes on loopback against a
/// collector running strict or permissive TLS with certificates from the dev CA.
final class IdentityTests: XCTestCase {
    func testSPIFFEIDsPatternsAndBindingsFollowTheSpecification() throws {
        let id = try SPIFFEID("spiffe://cluster.local/ns/shop/sa/cart")
        XCTAssertEqual(id.trustDomain, "cluster.local")
        XCTAssertEqual(id.segments, ["ns", "shop", "sa", "cart"])
        for invalid in ["https://cluster.local/x", "spiffe://", "spiffe://Cluster.local/x", "spiffe://td:8080/x", "spiffe://td//x",
                        "spiffe://td/./x", "spiffe://td/x/", "spiffe://td/x?y", "spiffe://user@td/x", "spiffe://td/a b"] {
            XCTAssertThrowsError(try SPIFFEID(invalid), invalid)
        }
        let pattern = try SPIFFEPattern("spiffe://cluster.local/ns/*/sa/cart")
        XCTAssertTrue(pattern.matches(id))
        XCTAssertFalse(pattern.matches(try SPIFFEID("spiffe://cluster.local/ns/shop/sa/web")))
        XCTAssertFalse(pattern.matches(try SPIFFEID("spiffe://other.local/ns/shop/sa/cart")))
        XCTAssertTrue(try SPIFFEPattern("spiffe://cluster.local/ns/**").matches(id))
        XCTAssertThrowsError(try SPIFFEPattern("spiffe://cluster.local/**/sa"))
        let binding = try IdentityBinding("ns/{ns}/sa/{sa} => {ns}-{sa}")
        XCTAssertEqual(binding.service(for: id), "shop-cart")
        XCTAssertNil(binding.service(for: try SPIFFEID("spiffe://cluster.local/workload/cart")))
        XCTAssertThrowsError(try IdentityBinding("ns/{ns} => {sa}"), "a service naming an uncaptured segment")
        let agent = try IdentityBinding("ns/observability/sa/* => *")
        XCTAssertTrue(agent.allowsAnyService)
        XCTAssertEqual(agent.service(for: try SPIFFEID("spiffe://cluster.local/ns/observability/sa/otel-agent")), "*")
    }

    /// Valid certificates are accepted; expired, wrong trust domain, no certificate,
    /// self-signed, wrong SAN, off the allow-list and plaintext are refused at the
    /// handshake with the reason logged, and valid clients are served throughout.
    func testStrictModeRefusesBadClientsAtTheHandshakeAndServesValidOnes() async throws {
        let bed = try TLSBed(test: self)
        let valid = try bed.issue("spiffe://shop.local/ns/shop/sa/cart")
        var expiredLeaf = DevCA.Leaf(spiffeID: try SPIFFEID("spiffe://shop.local/ns/shop/sa/cart"), validFor: 3600, from: Date(timeIntervalSinceNow: -7200))
        expiredLeaf.notAfter = Date(timeIntervalSinceNow: -60)
        let refused: [(name: String, identity: TLSBed.Identity?, reason: String)] = [
            ("expired", try bed.issue(expiredLeaf, name: "expired"), "certificate expired at"),
            ("wrong trust domain", try bed.issue("spiffe://other.local/ns/shop/sa/cart"), "is outside the trust domain shop.local"),
            ("no certificate", nil, "no client certificate presented"),
            ("self-signed", try bed.selfSigned(), "self-signed certificate"),
            ("wrong SAN", try bed.issue(DevCA.Leaf(spiffeID: nil, validFor: 3600), name: "dns-only", dns: ["cart.shop.svc"]), "no URI SAN"),
            ("not a SPIFFE URI", try bed.issueURI("https://cart.shop.local/"), "holds no SPIFFE ID"),
            ("off the allow-list", try bed.issue("spiffe://shop.local/ns/other/sa/intruder"), "is not on the allow-list"),
        ]
        try await bed.run(mode: .strict, allow: ["spiffe://shop.local/ns/shop/**"]) { collector in
            let first = try await collector.post(as: valid, service: "cart")
            XCTAssertEqual(first.status, 200, first.body)
            for (name, identity, reason) in refused {
                let answer = try? await collector.post(as: identity, service: "cart")
                XCTAssertNil(answer, "\(name): a refused client must not get an answer, got \(String(describing: answer))")
                try await collector.waitForLog(containing: reason, "\(name)")
                // The collector keeps serving valid clients.
                let after = try await collector.post(as: valid, service: "cart")
                XCTAssertEqual(after.status, 200, "\(name): \(after.body)")
            }
            // A client that starts a handshake and stalls is cut off.
            let stalled = try await RawConnection.with(port: collector.ingestPort, tls: nil) { connection in
                try await connection.send([0x16, 0x03, 0x01])
                return try await connection.closedByPeer()
            }
            XCTAssertTrue(stalled)
            try await collector.waitForLog(containing: "TLS handshake did not finish within 0.3 seconds", "stalled handshake")
            let plaintext = try? await collector.post(as: nil, service: "cart", tls: false)
            XCTAssertNil(plaintext)
            try await collector.waitForLog(containing: "plaintext connection (TLS mode strict requires mTLS)", "plaintext")
            let audit = try await collector.audit()
            XCTAssertTrue(audit.contains { $0.kind == "refused_connection" && $0.detail.contains("expired") }, "\(audit)")
            XCTAssertTrue(audit.contains { $0.kind == "certificate_expiring" && $0.source == "spiffe://shop.local/ns/shop/sa/cart" },
                          "a one-hour certificate is within the day's expiry warning: \(audit)")
        }
    }

    /// A client whose identity may claim `cart` sends spans as `payments`: refused
    /// through partial_success (or relabelled), stored spans carry the sender's
    /// identity, and the audit lists the mismatch.
    func testASpoofedServiceNameIsRefusedOrRelabelledAndAudited() async throws {
        let bed = try TLSBed(test: self)
        let cart = try bed.issue("spiffe://shop.local/ns/shop/sa/cart")
        let data = bed.directory + "/data"
        try await bed.run(mode: .strict, data: data) { collector in
            let honest = try await collector.post(as: cart, service: "cart", traceID: "11111111111111111111111111111111")
            XCTAssertEqual(honest.status, 200)
            XCTAssertFalse(honest.body.contains("rejectedSpans"), honest.body)
            let spoofed = try await collector.post(as: cart, service: "payments", traceID: "22222222222222222222222222222222")
            XCTAssertEqual(spoofed.status, 200)
            XCTAssertTrue(spoofed.body.contains(#""rejectedSpans":"1""#), spoofed.body)
            XCTAssertTrue(spoofed.body.contains("may claim only"), spoofed.body)
            let stored = try await collector.trace("11111111111111111111111111111111")
            XCTAssertTrue(stored.contains(#""value":"spiffe://shop.local/ns/shop/sa/cart""#), stored)
            XCTAssertTrue(stored.contains(#""value":"mtls""#), stored)
            let missing = try await collector.trace("22222222222222222222222222222222")
            XCTAssertTrue(missing.contains("trace not found"), missing)
            let audit = try await collector.audit()
            XCTAssertTrue(audit.contains { $0.kind == "identity_mismatch" && $0.source == "spiffe://shop.local/ns/shop/sa/cart" && $0.target == "payments" && $0.requests == 1 }, "\(audit)")
        }
        // A restart keeps the audit trail; relabelling is a finding of its own.
        try await bed.run(mode: .strict, onMismatch: .relabel, data: data) { collector in
            let spoofed = try await collector.post(as: cart, service: "payments", traceID: "33333333333333333333333333333333")
            XCTAssertFalse(spoofed.body.contains("rejectedSpans"), spoofed.body)
            let audit = try await collector.audit().filter { $0.kind == "identity_mismatch" }
            XCTAssertEqual(audit.map(\.requests), [1, 1], "\(audit)")
            XCTAssertEqual(audit.map(\.detail), [#"may claim "cart"; spans rejected"#, #"may claim "cart"; spans relabelled"#])
            let stored = try await collector.trace("33333333333333333333333333333333")
            XCTAssertTrue(stored.contains(#""serviceName":"cart""#), stored)
            XCTAssertTrue(stored.contains(#""key":"meshtrace.claimed.service.name","type":"string","value":"payments""#), stored)
        }
    }

    /// Permissive mode takes plaintext and TLS on one port; plaintext spans are
    /// labelled and the connection is an audit finding.
    func testPermissiveModeAcceptsPlaintextAndLabelsIt() async throws {
        let bed = try TLSBed(test: self)
        let cart = try bed.issue("spiffe://shop.local/ns/shop/sa/cart")
        try await bed.run(mode: .permissive) { collector in
            let plain = try await collector.post(as: nil, service: "legacy", traceID: "44444444444444444444444444444444", tls: false)
            XCTAssertEqual(plain.status, 200, plain.body)
            let secured = try await collector.post(as: cart, service: "cart", traceID: "55555555555555555555555555555555")
            XCTAssertEqual(secured.status, 200, secured.body)
            let stored = try await collector.trace("44444444444444444444444444444444")
            XCTAssertTrue(stored.contains(#""key":"meshtrace.peer.transport","type":"string","value":"plaintext""#), stored)
            let audit = try await collector.audit()
            XCTAssertTrue(audit.contains { $0.kind == "plaintext_connection" && $0.source == "127.0.0.1" && $0.target == "otlp-http" }, "\(audit)")
        }
    }

    /// Certificates replaced on disk: new connections get the new certificate, a
    /// connection opened before finishes its requests on the old one.
    func testRotatedCertificatesServeNewConnectionsWhileOpenOnesFinish() async throws {
        let bed = try TLSBed(test: self)
        let cart = try bed.issue("spiffe://shop.local/ns/shop/sa/cart")
        try await bed.run(mode: .strict) { collector in
            try await collector.connect(as: cart) { old in
                let before = try await old.post(service: "cart")
                XCTAssertEqual(before.status, 200)
                let oldSerial = try await old.serverSerial()
                try bed.rotateCollectorCertificate()
                var newSerial = oldSerial
                let deadline = Date(timeIntervalSinceNow: 10)
                while newSerial == oldSerial && Date() < deadline {
                    try await Task.sleep(for: .milliseconds(100))
                    newSerial = try await collector.connect(as: cart) { fresh in
                        let answer = try await fresh.post(service: "cart")
                        XCTAssertEqual(answer.status, 200)
                        return try await fresh.serverSerial()
                    }
                }
                XCTAssertNotEqual(newSerial, oldSerial, "new connections must get the rotated certificate")
                let stillOld = try await old.serverSerial()
                XCTAssertEqual(stillOld, oldSerial)
                let after = try await old.post(service: "cart")
                XCTAssertEqual(after.status, 200, "a connection opened before the rotation finishes its requests")
            }
            try await collector.waitForLog(containing: "reloaded TLS certificates", "reload")
        }
    }
}

extension IdentityTests {
    /// What the head block gets and what the write-ahead log replays after a restart
    /// are the same spans, labelled and refused alike, for every resource of a request.
    func testIdentityBindingStoresTheSameInTheHeadBlockAsInTheWriteAheadLog() throws {
        let (requests, _) = simulatedRequests(count: 40)
        let claimed = requests[0].resourceSpans[0].resource.attributes.first { $0.key == "service.name" }!.value.stringValue
        let peer = ConnectionPeer(address: "127.0.0.1:40000", transport: .mtls(VerifiedPeer(
            id: try SPIFFEID("spiffe://mesh.local/ns/shop/sa/\(claimed)"), notAfter: Date(timeIntervalSinceNow: 3600), serial: "01")))
        for action in [MismatchAction.reject, .relabel] {
            let binder = IdentityBinder(bindings: [try IdentityBinding(TLSSettings.defaultBinding)], action: action, audit: TransportAudit())
            var kept = 0, refused = 0
            for request in requests {
                let original = try received(request)
                let bound = binder.bind(original, peer: peer)
                let replayed = try DecodedTraceExport(protobuf: bound.encoded)
                XCTAssertEqual(canonicalSpans(try bound.spans.tracesData()), canonicalSpans(try replayed.spans.tracesData()))
                XCTAssertEqual(bound.outcome.accepted + bound.outcome.rejected, original.outcome.accepted + original.outcome.rejected)
                XCTAssertEqual(bound.spans.count, bound.outcome.accepted)
                for resource in try bound.spans.tracesData().resourceSpans {
                    let attributes = Dictionary(resource.resource.attributes.map { ($0.key, $0.value.stringValue) }, uniquingKeysWith: { $1 })
                    XCTAssertEqual(attributes["meshtrace.peer.id"], "spiffe://mesh.local/ns/shop/sa/\(claimed)")
                    XCTAssertEqual(attributes["meshtrace.peer.transport"], "mtls")
                    XCTAssertEqual(attributes["service.name"], claimed)
                }
                kept += bound.outcome.accepted
                refused += bound.outcome.rejected
            }
            XCTAssertGreaterThan(kept, 0, "\(action)")
            if action == .reject {
                XCTAssertGreaterThan(refused, 0, "the simulated mesh has other services, whose spans this identity may not send")
            } else {
                XCTAssertEqual(refused, 0)
            }
        }
    }

    /// MeshExporter over mTLS, by OTLP/HTTP and OTLP/gRPC: its spans are stored with
    /// its identity; certificate files replaced on disk are used by the next
    /// connections; unusable files leave the last good ones in force.
    func testMeshExporterExportsOverMTLSAndReloadsItsCertificate() async throws {
        let bed = try TLSBed(test: self)
        for transport in [MeshExporter.Configuration.Transport.http, .grpc] {
            let cart = try bed.issue("spiffe://shop.local/ns/shop/sa/cart")
            try await bed.run(mode: .strict, grpc: true) { collector in
                var configuration = MeshExporter.Configuration(
                    endpoint: "localhost:\(transport == .http ? collector.ingestPort : collector.grpcPort!)", transport: transport, serviceName: "cart")
                configuration.tls = ClientTLS(trustBundleFile: bed.directory + "/ca.pem", certificateFile: cart.certificate, keyFile: cart.key)
                configuration.tls?.reloadInterval = .milliseconds(1)
                configuration.retry.maxElapsed = .seconds(2)
                let exporter = try MeshExporter(configuration: configuration)
                func send(_ low: UInt64) async {
                    let now = UInt64(Date().timeIntervalSince1970 * 1e9)
                    exporter.record(RequestSpan(
                        traceID: TraceID(high: 0xC0FFEE, low: low), spanID: SpanID(low), name: "GET /cart", kind: .server,
                        startTime: now - 1_000_000, endTime: now, httpStatus: 200))
                    await exporter.flush()
                }
                await send(1)
                XCTAssertEqual(exporter.statistics.exported, 1, "\(transport): \(exporter.statistics)")
                let stored = try await collector.trace(TraceID(high: 0xC0FFEE, low: 1).hex)
                XCTAssertTrue(stored.contains(#""value":"spiffe://shop.local/ns/shop/sa/cart""#), "\(transport): \(stored)")

                // Rotated to another identity: the next request presents it (and its
                // spans, still claiming `cart`, become a mismatch the audit shows).
                let other = try bed.issue("spiffe://shop.local/ns/shop/sa/cart-canary")
                try FileManager.default.removeItem(atPath: cart.key)
                try FileManager.default.copyItem(atPath: other.key, toPath: cart.key)
                try FileManager.default.removeItem(atPath: cart.certificate)
                try FileManager.default.copyItem(atPath: other.certificate, toPath: cart.certificate)
                try await Task.sleep(for: .milliseconds(20))
                await send(2)
                XCTAssertEqual(exporter.statistics.rejectedByCollector, 1, "\(transport): \(exporter.statistics)")
                let audit = try await collector.audit()
                XCTAssertTrue(audit.contains { $0.kind == "identity_mismatch" && $0.source.hasSuffix("/sa/cart-canary") }, "\(audit)")

                // Garbage on disk: the exporter keeps its last good certificate.
                try Data("not a certificate".utf8).write(to: URL(fileURLWithPath: cart.certificate))
                try await Task.sleep(for: .milliseconds(20))
                await send(3)
                XCTAssertEqual(exporter.statistics.rejectedByCollector, 2, "\(transport): \(exporter.statistics)")
                XCTAssertTrue(exporter.statistics.lastError?.contains("previous ones stay in force") == true, "\(exporter.statistics)")
                await exporter.shutdown()
            }
        }
    }
}

/// A dev CA in a temporary directory, and collectors that use it.
struct TLSBed {
    struct Identity {
        let certificate: String
        let key: String
    }

    let directory: String
    let ca: DevCA

    init(test: XCTestCase) throws {
        directory = temporaryDirectory(test)
        ca = try DevCA.create(trustDomain: "shop.local", validFor: 86400)
        try ca.write(certificateFile: directory + "/ca.pem", keyFile: directory + "/ca-key.pem")
        try rotateCollectorCertificate()
    }

    func rotateCollectorCertificate() throws {
        var leaf = DevCA.Leaf(spiffeID: try SPIFFEID("spiffe://shop.local/meshtrace/collector"), validFor: 86400 * 7)
        leaf.dnsNames = ["localhost"]
        leaf.ipAddresses = ["127.0.0.1"]
        let issued = try ca.issue(leaf)
        try PEMFiles.write(certificate: issued.certificate, key: issued.key,
                           certificateFile: directory + "/collector.pem", keyFile: directory + "/collector-key.pem")
    }

    func issue(_ id: String) throws -> Identity {
        try issue(DevCA.Leaf(spiffeID: try SPIFFEID(id), validFor: 3600), name: id.replacingOccurrences(of: "/", with: "_"))
    }

    func issue(_ leaf: DevCA.Leaf, name: String, dns: [String] = []) throws -> Identity {
        var leaf = leaf
        leaf.dnsNames = dns
        let issued = try ca.issue(leaf)
        let identity = Identity(certificate: directory + "/\(name).pem", key: directory + "/\(name)-key.pem")
        try PEMFiles.write(certificate: issued.certificate, key: issued.key, certificateFile: identity.certificate, keyFile: identity.key)
        return identity
    }

    func issueURI(_ uri: String) throws -> Identity {
        var leaf = DevCA.Leaf(spiffeID: nil, validFor: 3600)
        leaf.uris = [uri]
        return try issue(leaf, name: "uri")
    }

    /// A workload certificate that signs itself, with a SPIFFE ID in the trust domain.
    func selfSigned() throws -> Identity {
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        let name = try DistinguishedName { CommonName("cart") }
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: key.publicKey,
            notValidBefore: Date(timeIntervalSinceNow: -60), notValidAfter: Date(timeIntervalSinceNow: 3600),
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.clientAuth])
                SubjectAlternativeNames([.uniformResourceIdentifier("spiffe://shop.local/ns/shop/sa/cart")])
            },
            issuerPrivateKey: key)
        let identity = Identity(certificate: directory + "/rogue.pem", key: directory + "/rogue-key.pem")
        try PEMFiles.write(certificate: certificate, key: key, certificateFile: identity.certificate, keyFile: identity.key)
        return identity
    }

    func run(
        mode: TLSMode, allow: [String] = [], onMismatch: MismatchAction = .reject, grpc: Bool = false, data: String? = nil,
        _ body: (RunningCollector) async throws -> Void
    ) async throws {
        var configuration = CollectorConfiguration(dataDirectory: data ?? directory + "/data-\(UUID().uuidString)")
        configuration.otlpHTTP = ListenAddress(host: "127.0.0.1", port: 0)
        configuration.otlpGRPC = grpc ? ListenAddress(host: "127.0.0.1", port: 0) : nil
        configuration.zipkin = nil
        configuration.query = ListenAddress(host: "127.0.0.1", port: 0)
        configuration.sampling = .policy(try PolicyFile.parse(yaml: "policies: [{name: everything, type: always_sample}]", file: "<test>"))
        configuration.tls.mode = mode
        configuration.tls.use(directory: directory)
        configuration.tls.allowed = try allow.map(SPIFFEPattern.init)
        configuration.tls.onMismatch = onMismatch
        configuration.tls.reloadInterval = .milliseconds(100)
        configuration.tls.handshakeTimeout = .milliseconds(300)
        let logs = CapturedLogs()
        let server = CollectorServer(configuration: configuration, logger: Logger(label: "test") { _ in logs })
        let shutdown = ShutdownTrigger()
        let (addresses, continuation) = AsyncStream.makeStream(of: (CollectorServer.Endpoint, ListenAddress).self)
        let task = Task {
            defer { continuation.finish() }
            try await server.run(handleSignals: false, shutdown: shutdown) { continuation.yield(($0, $1)) }
        }
        var ports: [CollectorServer.Endpoint: Int] = [:]
        for await (endpoint, address) in addresses {
            ports[endpoint] = address.port
            if ports.count == (grpc ? 3 : 2) { break }
        }
        guard let ingest = ports[.otlpHTTP], let query = ports[.query] else {
            try await task.value
            throw CLIError("the collector did not start")
        }
        let collector = RunningCollector(ingestPort: ingest, grpcPort: ports[.otlpGRPC], queryPort: query, trust: directory + "/ca.pem", logs: logs)
        do {
            try await body(collector)
        } catch {
            await shutdown.trigger()
            _ = try? await task.value
            throw error
        }
        await shutdown.trigger()
        try await task.value
    }
}

struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Log lines, kept for assertions.
struct CapturedLogs: LogHandler {
    final class Box: Sendable { let lines = Mutex<[String]>([]) }
    let box = Box()
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let text = "\(event.message) " + (event.metadata ?? [:]).map { "\($0.key)=\($0.value)" }.sorted().joined(separator: " ")
        box.lines.withLock { $0.append(text) }
    }

    var all: [String] { box.lines.withLock { $0 } }
}

struct RunningCollector {
    let ingestPort: Int
    let grpcPort: Int?
    let queryPort: Int
    let trust: String
    let logs: CapturedLogs

    struct Answer: Sendable {
        let status: Int
        let body: String
    }

    func waitForLog(containing text: String, _ what: String) async throws {
        let deadline = Date(timeIntervalSinceNow: 10)
        while Date() < deadline {
            if logs.all.contains(where: { $0.contains(text) }) { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        XCTFail("\(what): no log line contains \(text.debugDescription); lines: \(logs.all.suffix(5))")
    }

    func post(as identity: TLSBed.Identity?, service: String, traceID: String = "0af7651916cd43dd8448eb211c80319c", tls: Bool = true) async throws -> Answer {
        try await connect(as: identity, tls: tls) { try await $0.post(service: service, traceID: traceID) }
    }

    func connect<T: Sendable>(as identity: TLSBed.Identity?, tls: Bool = true, _ body: (RawConnection) async throws -> T) async throws -> T {
        try await RawConnection.with(port: ingestPort, tls: tls ? (trust: trust, identity: identity) : nil, body)
    }

    func trace(_ id: String) async throws -> String {
        try await RawConnection.with(port: queryPort, tls: nil) { try await $0.get("/api/traces/\(id)").body }
    }

    func audit() async throws -> [SignalQuery.Finding] {
        let answer = try await RawConnection.with(port: queryPort, tls: nil) { try await $0.get("/api/v1/audit") }
        return try JSONDecoder().decode(SignalQuery.Audit.self, from: Data(answer.body.utf8)).findings
    }
}

enum SignalQuery {
    struct Finding: Decodable, Sendable {
        let kind: String
        let source: String
        let target: String
        let requests: Int
        let detail: String
    }

    struct Audit: Decodable { let findings: [Finding] }
}

/// One TCP (or TLS) connection speaking HTTP/1.1 by hand, so a test controls when
/// it opens, what it presents, and which requests share it.
final class RawConnection: @unchecked Sendable {
    private let channel: any Channel
    private let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    private var iterator: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    private var pending: [UInt8] = []

    private init(channel: any Channel, inbound: NIOAsyncChannelInboundStream<ByteBuffer>, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) {
        self.channel = channel
        self.iterator = inbound.makeAsyncIterator()
        self.outbound = outbound
    }

    static func with<T: Sendable>(
        port: Int, tls: (trust: String, identity: TLSBed.Identity?)?, _ body: (RawConnection) async throws -> T
    ) async throws -> T {
        let context: NIOSSLContext?
        if let tls {
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.trustRoots = .file(tls.trust)
            configuration.applicationProtocols = ["http/1.1"]
            if let identity = tls.identity {
                configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(identity.certificate).map { .certificate($0) }
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: identity.key, format: .pem))
            }
            context = try NIOSSLContext(configuration: configuration)
        } else {
            context = nil
        }
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let context {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: context, serverHostname: "localhost"))
                    }
                    return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            try await body(RawConnection(channel: channel.channel, inbound: inbound, outbound: outbound))
        }
    }

    /// The serial number of the certificate the server presented.
    func serverSerial() async throws -> String {
        guard let certificate = try await channel.nioSSL_peerCertificate().get() else { return "" }
        return "\(try Certificate(derEncoded: try certificate.toDERBytes()).serialNumber)"
    }

    func post(service: String, traceID: String = "0af7651916cd43dd8448eb211c80319c") async throws -> RunningCollector.Answer {
        let now = UInt64(Date().timeIntervalSince1970 * 1e9)
        let body = """
            {"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"\(service)"}}]},\
            "scopeSpans":[{"spans":[{"traceId":"\(traceID)","spanId":"b7ad6b7169203331","name":"GET /","kind":2,\
            "startTimeUnixNano":"\(now - 5_000_000)","endTimeUnixNano":"\(now)"}]}]}]}
            """
        return try await exchange("POST /v1/traces HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body)
    }

    func send(_ bytes: [UInt8]) async throws {
        try await outbound.write(ByteBuffer(bytes: bytes))
    }

    /// Whether the peer closes the connection (rather than answering) within ten seconds.
    func closedByPeer() async throws -> Bool {
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                do {
                    while try await self.nextChunk() != nil {}
                } catch {}
                return true
            }
            group.addTask {
                try await Task.sleep(for: .seconds(10))
                return false
            }
            let closed = try await group.next()!
            group.cancelAll()
            return closed
        }
    }

    private func nextChunk() async throws -> ByteBuffer? {
        try await iterator.next()
    }

    func get(_ path: String) async throws -> RunningCollector.Answer {
        try await exchange("GET \(path) HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n")
    }

    private func exchange(_ request: String) async throws -> RunningCollector.Answer {
        try await outbound.write(ByteBuffer(string: request))
        while true {
            if let headerEnd = pending.firstRange(of: Array("\r\n\r\n".utf8)) {
                let head = String(decoding: pending[..<headerEnd.lowerBound], as: UTF8.self)
                let length = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                    .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
                if pending.count >= headerEnd.upperBound + length {
                    let body = String(decoding: pending[headerEnd.upperBound..<headerEnd.upperBound + length], as: UTF8.self)
                    pending.removeFirst(headerEnd.upperBound + length)
                    let status = Int(head.split(separator: " ")[1]) ?? 0
                    return .init(status: status, body: body)
                }
            }
            guard var chunk = try await iterator.next() else { throw CLIError("connection closed without an answer") }
            pending += chunk.readBytes(length: chunk.readableBytes) ?? []
        }
    }
}
