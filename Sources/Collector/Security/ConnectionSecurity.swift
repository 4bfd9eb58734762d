import Foundation
import Logging
import MeshCore
import MeshIdentity
import NIOCore
import NIOSSL
import NIOTLS
import Synchronization
import X509

/// How a connection reached the collector, as the receivers and stored spans see it.
public enum PeerTransport: Sendable, Hashable {
    case plaintext
    /// TLS without a client certificate (permissive mode only).
    case tls
    /// mTLS with a verified workload identity.
    case mtls(VerifiedPeer)

    /// The value of the `meshtrace.peer.transport` resource attribute.
    public var name: String {
        switch self {
        case .plaintext: return "plaintext"
        case .tls: return "tls"
        case .mtls: return "mtls"
        }
    }
}

/// A connection the collector accepted.
struct ConnectionPeer: Sendable {
    /// `host:port` (`[v6]:port`).
    let address: String
    let transport: PeerTransport
    /// Which connection, among those that ever came from `address`.
    var connection: ObjectIdentifier?
}

/// The receivers' transport security: the server certificate (reloaded from disk
/// when its files change), verification of client certificates, the connections
/// open now with the identity each proved, and the binding of identities to the
/// services they may claim.
final class ConnectionSecurity: Sendable {
    /// The application protocol a listener speaks over TLS (its ALPN).
    enum ApplicationProtocol: Sendable {
        case h2
        case http1
    }

    /// Everything read from the certificate files at one time.
    private struct Material: Sendable {
        let h2: NIOSSLContext
        let http1: NIOSSLContext
        let verifier: PeerVerifier
        let serverCertificate: Certificate
        let stamps: [FileStamp]
    }

    let settings: TLSSettings
    let mode: TLSMode
    let audit: TransportAudit
    let binder: IdentityBinder
    private let logger: Logger
    private let material: Mutex<Material>
    private let peers = Mutex<[String: ConnectionPeer]>([:])

    /// Reads the certificate, key and trust bundle; throws a message naming the file when one is unusable.
    init(settings: TLSSettings, audit: TransportAudit, logger: Logger) throws {
        precondition(settings.effectiveMode != .off)
        if let problem = settings.problem() { throw CollectorSettings.Invalid(description: problem) }
        self.settings = settings
        self.mode = settings.effectiveMode
        self.audit = audit
        self.logger = logger
        binder = IdentityBinder(bindings: settings.effectiveBindings, action: settings.onMismatch, audit: audit)
        let loaded = try Self.load(settings)
        material = Mutex(loaded)
        audit.serverCertificate(loaded.serverCertificate)
    }

    private static func load(_ settings: TLSSettings) throws -> Material {
        let certificateFile = settings.certificateFile!, keyFile = settings.keyFile!, bundleFile = settings.trustBundleFile!
        // Stamps first: a file replaced while being read is read again at the next check.
        let stamps = FileStamp.of([certificateFile, keyFile, bundleFile])
        let chain = try PEMFiles.certificates(at: certificateFile)
        let bundle = try PEMFiles.certificates(at: bundleFile)
        // NIOSSL gets the same certificates, by their DER bytes: each file is read once.
        func nio(_ certificates: [Certificate], _ file: String) throws -> [NIOSSLCertificate] {
            do {
                return try certificates.map { try NIOSSLCertificate(bytes: try $0.serializeAsPEM().derBytes, format: .der) }
            } catch {
                throw PEMFiles.Failure(description: "\(file): \(error)")
            }
        }
        let nioChain = try nio(chain, certificateFile)
        let nioBundle = try nio(bundle, bundleFile)
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: keyFile, format: .pem)
        } catch {
            throw PEMFiles.Failure(description: "\(keyFile): \(error)")
        }
        let trustDomain = try settings.trustDomain ?? PeerVerifier.trustDomain(of: chain[0]) ?? PeerVerifier.trustDomain(of: bundle[0]) ?? {
            throw CollectorSettings.Invalid(description: "tls.trust_domain is not set and neither \(certificateFile) nor \(bundleFile) holds a SPIFFE ID to take it from")
        }()
        func context(_ protocols: [String]) throws -> NIOSSLContext {
            var configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: nioChain.map { .certificate($0) }, privateKey: .privateKey(key))
            configuration.minimumTLSVersion = .tlsv12
            configuration.applicationProtocols = protocols
            // Strict: a client that sends no certificate fails the handshake. Either way a
            // certificate that is sent is verified by `verify` (the trust bundle, SPIFFE ID, allow-list).
            configuration.certificateVerification = settings.effectiveMode == .strict ? .noHostnameVerification : .optionalVerification
            configuration.trustRoots = .certificates(nioBundle)
            return try NIOSSLContext(configuration: configuration)
        }
        guard stamps.allSatisfy({ $0 != nil }) else {
            throw PEMFiles.Failure(description: "a certificate file vanished while being read")
        }
        return Material(
            h2: try context(["h2"]), http1: try context(["http/1.1"]),
            verifier: PeerVerifier(trustBundle: bundle, trustDomain: trustDomain, allowed: settings.allowed),
            serverCertificate: chain[0], stamps: stamps.compactMap { $0 })
    }

    var trustDomain: String { material.withLock { $0.verifier.trustDomain } }

    /// Reads the files again when any has changed since they were read. New
    /// connections use the new certificate; open ones keep theirs. A file that
    /// cannot be used is logged and the last good certificate stays in force.
    @discardableResult
    func reloadIfChanged() -> Bool {
        let paths = [settings.certificateFile!, settings.keyFile!, settings.trustBundleFile!]
        let current = FileStamp.of(paths)
        let previous = material.withLock { $0.stamps }
        guard current != previous.map(Optional.some) else { return false }
        do {
            let loaded = try Self.load(settings)
            material.withLock { $0 = loaded }
            audit.serverCertificate(loaded.serverCertificate)
            logger.info("reloaded TLS certificates", metadata: [
                "certificate": "\(paths[0])", "serial": "\(loaded.serverCertificate.serialNumber)",
                "not_after": "\(loaded.serverCertificate.notValidAfter)",
            ])
            return true
        } catch {
            logger.error("TLS certificates changed on disk but cannot be used; the previous ones stay in force", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// Adds, first in an accepted connection's pipeline, the handlers that tell TLS
    /// from plaintext by the first byte and set the connection up as the mode says.
    func addGate(to channel: any Channel, _ applicationProtocol: ApplicationProtocol, receiver: String) throws {
        let hold = WriteHold()
        try channel.pipeline.syncOperations.addHandlers(
            SecurityGate(security: self, applicationProtocol: applicationProtocol, receiver: receiver, hold: hold), hold)
    }

    fileprivate func serverContext(_ applicationProtocol: ApplicationProtocol) -> NIOSSLContext {
        material.withLock { applicationProtocol == .h2 ? $0.h2 : $0.http1 }
    }

    /// Checks a client's chain (as NIOSSL hands it over) and answers the handshake.
    fileprivate func verify(
        _ certificates: [NIOSSLCertificate], state: HandshakeState, promise: EventLoopPromise<NIOSSLVerificationResult>
    ) {
        let verifier = material.withLock { $0.verifier }
        let chain: [Certificate]
        do {
            chain = try certificates.map { try Certificate(derEncoded: try $0.toDERBytes()) }
        } catch {
            state.refusal = .untrusted(subject: "unreadable", detail: "\(error)")
            promise.succeed(.failed)
            return
        }
        Task {
            let result = await verifier.verify(chain: chain)
            promise.futureResult.eventLoop.execute {
                switch result {
                case .success(let peer):
                    state.peer = peer
                    promise.succeed(.certificateVerified)
                case .failure(let refusal):
                    state.refusal = refusal
                    promise.succeed(.failed)
                }
            }
        }
    }

    /// Records an accepted connection until it closes.
    fileprivate func register(_ transport: PeerTransport, channel: any Channel, receiver: String) {
        guard let key = Self.key(channel.remoteAddress) else { return }
        let connection = ObjectIdentifier(channel)
        peers.withLock { $0[key] = ConnectionPeer(address: key, transport: transport, connection: connection) }
        channel.closeFuture.whenComplete { [weak self] _ in
            // Only this connection's entry: a new one from the same address and port may have replaced it.
            self?.peers.withLock { peers in
                if peers[key]?.connection == connection { peers.removeValue(forKey: key) }
            }
        }
        audit.accepted(transport, host: Self.host(of: key), receiver: receiver)
    }

    fileprivate func refuse(_ reason: String, kind: String, address: SocketAddress?, receiver: String) {
        let host = Self.key(address).map(Self.host) ?? "unknown"
        logger.warning("refused a connection at the TLS handshake", metadata: [
            "receiver": "\(receiver)", "peer": "\(Self.key(address) ?? "unknown")", "reason": "\(reason)",
        ])
        audit.refused(kind: kind, reason: reason, host: host, receiver: receiver)
    }

    /// The connection an HTTP request arrived on.
    func peer(at address: SocketAddress?) -> ConnectionPeer? {
        guard let key = Self.key(address) else { return nil }
        return peers.withLock { $0[key] }
    }

    /// The connection a gRPC call arrived on, from its `remotePeer` (`ipv4:host:port`, `ipv6:[host]:port`).
    func peer(grpc remotePeer: String) -> ConnectionPeer? {
        let key: Substring
        if remotePeer.hasPrefix("ipv4:") || remotePeer.hasPrefix("ipv6:") {
            key = remotePeer.dropFirst(5)
        } else {
            return nil
        }
        return peers.withLock { $0[String(key)] }
    }

    static func key(_ address: SocketAddress?) -> String? {
        guard let address, let ip = address.ipAddress, let port = address.port else { return nil }
        if case .v6 = address { return "[\(ip)]:\(port)" }
        return "\(ip):\(port)"
    }

    static func host(of key: String) -> String {
        guard let colon = key.lastIndex(of: ":") else { return key }
        return String(key[..<colon])
    }
}

/// What one TLS handshake learnt, touched only on its channel's event loop.
final class HandshakeState: @unchecked Sendable {
    var peer: VerifiedPeer?
    var refusal: PeerRefusal?
}

/// First in an accepted connection's pipeline: a TLS ClientHello (first byte 0x16)
/// gets a TLS handler; plaintext is refused in strict mode and passed on (and
/// labelled) in permissive mode. It then leaves the pipeline.
final class SecurityGate: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let security: ConnectionSecurity
    private let applicationProtocol: ConnectionSecurity.ApplicationProtocol
    private let receiver: String
    private let hold: WriteHold

    fileprivate init(
        security: ConnectionSecurity, applicationProtocol: ConnectionSecurity.ApplicationProtocol, receiver: String, hold: WriteHold
    ) {
        self.security = security
        self.applicationProtocol = applicationProtocol
        self.receiver = receiver
        self.hold = hold
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return }
        let pipeline = context.pipeline.syncOperations
        if first == 0x16 {
            let state = HandshakeState()
            let security = self.security
            let tls = NIOSSLServerHandler(context: security.serverContext(applicationProtocol)) { certificates, promise in
                security.verify(certificates, state: state, promise: promise)
            }
            do {
                try pipeline.addHandler(tls, position: .after(self))
                try pipeline.addHandler(HandshakeWatcher(security: security, state: state, receiver: receiver), position: .after(tls))
            } catch {
                context.close(promise: nil)
                return
            }
        } else if security.mode == .strict {
            security.refuse(PeerRefusal.plaintext.description, kind: PeerRefusal.plaintext.kind,
                            address: context.channel.remoteAddress, receiver: receiver)
            context.close(promise: nil)
            return
        } else {
            security.register(.plaintext, channel: context.channel, receiver: receiver)
        }
        // What the protocol handlers wrote meanwhile (HTTP/2's SETTINGS) now goes out,
        // through TLS when there is TLS.
        hold.release()
        context.fireChannelRead(data)
        pipeline.removeHandler(context: context, promise: nil)
    }
}

/// Holds what the protocol handlers write (an HTTP/2 server speaks first) until the
/// gate has decided whether the connection is TLS; then lets it through and leaves.
final class WriteHold: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = NIOAny

    private var context: ChannelHandlerContext?
    private var held: [(data: NIOAny, promise: EventLoopPromise<Void>?)] = []
    private var flushed = false

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        held.append((data, promise))
    }

    func flush(context: ChannelHandlerContext) {
        flushed = true
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // Removed without a release: the connection closed before the gate decided.
        for (_, promise) in held { promise?.fail(ChannelError.ioOnClosedChannel) }
        held = []
    }

    func release() {
        guard let context else { return }
        self.context = nil
        for (data, promise) in held { context.write(data, promise: promise) }
        held = []
        if flushed { context.flush() }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}

/// Follows one TLS handshake: registers the connection with the identity it proved,
/// or logs and audits why it was refused.
final class HandshakeWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let security: ConnectionSecurity
    private let state: HandshakeState
    private let receiver: String
    private var completed = false
    private var deadline: Scheduled<Void>?

    init(security: ConnectionSecurity, state: HandshakeState, receiver: String) {
        self.security = security
        self.state = state
        self.receiver = receiver
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let timeout = security.settings.handshakeTimeout
        deadline = context.eventLoop.scheduleTask(in: .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000)) {
            let (watcher, context) = loopBound.value
            guard !watcher.completed else { return }
            watcher.completed = true
            watcher.security.refuse("TLS handshake did not finish within \(timeout)", kind: "handshake_timeout",
                                    address: context.channel.remoteAddress, receiver: watcher.receiver)
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event, !completed {
            completed = true
            deadline?.cancel()
            security.register(state.peer.map { .mtls($0) } ?? .tls, channel: context.channel, receiver: receiver)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !completed else {
            context.fireErrorCaught(error)
            return
        }
        completed = true
        let refusal: (text: String, kind: String)
        if let known = state.refusal {
            refusal = (known.description, known.kind)
        } else if "\(error)".contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") || "\(error)".contains("CERTIFICATE_REQUIRED") {
            refusal = (PeerRefusal.noCertificate.description, PeerRefusal.noCertificate.kind)
        } else {
            refusal = ("TLS handshake failed: \(error)", "handshake_failed")
        }
        security.refuse(refusal.text, kind: refusal.kind, address: context.channel.remoteAddress, receiver: receiver)
        context.close(promise: nil)
    }
}
