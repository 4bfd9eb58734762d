import Foundation
import GoldenSignals
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import SegmentStore
import ServiceLifecycle
import Synchronization

/// The collector: OTLP/HTTP receiver, query API and span store, run together.
public struct CollectorServer: Sendable {
    /// Which listener a bound address belongs to.
    public enum Endpoint: String, Sendable {
        case otlpHTTP = "otlp-http"
        case otlpGRPC = "otlp-grpc"
        case zipkin = "zipkin"
        case query = "query"
    }

    public let configuration: CollectorConfiguration
    public let logger: Logger

    public init(configuration: CollectorConfiguration, logger: Logger = Logger(label: "meshtrace.collector")) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Opens the store and serves until SIGINT/SIGTERM (when `handleSignals`) or until
    /// `shutdown` is triggered; then stops accepting, and seals the head block.
    ///
    /// - Parameter onListening: called once per listener with the port it bound.
    public func run(
        handleSignals: Bool = true,
        shutdown: ShutdownTrigger? = nil,
        onListening: @escaping @Sendable (Endpoint, ListenAddress) -> Void = { _, _ in }
    ) async throws {
        var series = GoldenSignals.Configuration(directory: configuration.store.dataDirectory + "/series")
        series.compressionLevel = configuration.store.compressionLevel
        series.shards = configuration.shards
        let golden = try GoldenSignals(configuration: series)
        for problem in golden.problems {
            logger.warning("series problem", metadata: ["problem": "\(problem)"])
        }
        let sampling = try SamplingControl(source: configuration.sampling, shards: configuration.shards, golden: golden, logger: logger)
        let hangup = sampling.watchHangup()
        defer { hangup.cancel() }
        let store = try SpanStore(configuration: configuration.store, follower: golden, admission: sampling.sampler)
        for problem in store.problems {
            logger.warning("store problem", metadata: ["problem": "\(problem)"])
        }

        let audit = TransportAudit(file: configuration.store.dataDirectory + "/audit.json")
        let security = configuration.tls.effectiveMode == .off
            ? nil : try ConnectionSecurity(settings: configuration.tls, audit: audit, logger: logger)
        if let security {
            logger.info("receivers require TLS", metadata: [
                "mode": "\(security.mode.rawValue)", "trust_domain": "\(security.trustDomain)",
                "certificate": "\(configuration.tls.certificateFile ?? "")",
            ])
        } else {
            logger.notice("receivers accept plaintext from anyone (TLS mode off); see docs/security.md")
        }
        let tokens = try BearerTokens.load(configuration.queryTokenFile)
        if tokens == nil && !configuration.query.isLoopback {
            throw CollectorSettings.Invalid(description: "the query API is bound to \(configuration.query), beyond loopback: set query.token_file (--api-token-file) so it asks for a bearer token")
        }

        let metrics = CollectorMetrics()
        let ingest = TraceIngest(store: store, logger: logger, metrics: metrics, security: security)
        let budget = IngestBudget(limit: configuration.memoryBudgetBytes)
        /// An HTTP listener at `address` that reports the port it bound as `endpoint`;
        /// receivers (`gated`) pass the TLS gate when TLS is on.
        func httpListener<Context: RequestContext>(
            _ endpoint: Endpoint, at address: ListenAddress, gated: Bool, _ register: (Router<Context>) -> Void
        ) -> some Service where Context.Source == ApplicationRequestContextSource {
            let router = Router(context: Context.self)
            register(router)
            let (seconds, attoseconds) = configuration.readTimeout.components
            // A connection silent mid-request (a client that never finishes its body) is closed.
            let http1 = HTTP1Channel.Configuration(idleTimeout: .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000))
            let server: HTTPServerBuilder
            if gated, let security {
                server = HTTPServerBuilder { responder in
                    GatedChannel(base: HTTP1Channel(responder: responder, configuration: http1), security: security, receiver: endpoint.rawValue)
                }
            } else {
                server = .http1(configuration: http1)
            }
            return NamedListener(endpoint: endpoint, address: address, base: Application(
                router: router,
                server: server,
                configuration: .init(address: .hostname(address.host, port: address.port)),
                onServerRunning: { channel in
                    onListening(endpoint, ListenAddress(host: address.host, port: channel.localAddress?.port ?? 0))
                },
                logger: logger))
        }

        var receivers: [any Service] = []
        if let address = configuration.otlpHTTP {
            receivers.append(httpListener(.otlpHTTP, at: address, gated: true) { (router: Router<IngestContext>) in
                OTLPHTTPReceiver(
                    ingest: ingest, maxBodyBytes: configuration.maxRequestBodyBytes, readTimeout: configuration.readTimeout,
                    budget: budget, metrics: metrics)
                    .register(on: router)
            })
        }
        if let address = configuration.zipkin {
            receivers.append(httpListener(.zipkin, at: address, gated: true) { (router: Router<IngestContext>) in
                ZipkinReceiver(
                    ingest: ingest, maxBodyBytes: configuration.maxRequestBodyBytes, readTimeout: configuration.readTimeout,
                    budget: budget, metrics: metrics)
                    .register(on: router)
            })
        }
        if let address = configuration.otlpGRPC {
            receivers.append(NamedListener(endpoint: .otlpGRPC, address: address, base: OTLPGRPCReceiver(
                address: address, security: security, ingest: ingest, maxMessageBytes: configuration.maxGRPCMessageBytes, budget: budget, metrics: metrics,
                onListening: { onListening(.otlpGRPC, $0) })))
        }
        let expiryWarning = configuration.tls.expiryWarning
        let query = httpListener(.query, at: configuration.query, gated: false) { (router: Router<BasicRequestContext>) in
            if let tokens { router.add(middleware: tokens) }
            QueryAPI(store: store, golden: golden, logger: logger, transportFindings: security == nil ? nil : { @Sendable in
                audit.findings(warning: expiryWarning)
            }).register(on: router)
            router.get("/metrics") { _, _ in
                Response(
                    status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                    body: ResponseBody(byteBuffer: ByteBuffer(string: metrics.render(store: store, budget: budget) + sampling.prometheusText()
                        + golden.prometheusText() + (security == nil ? "" : audit.prometheusText()))))
            }
        }
        var watchers: [any Service] = []
        if let security { watchers.append(CertificateWatcher(security: security, interval: configuration.tls.reloadInterval, logger: logger)) }
        let sealer = SealService(
            store: store, golden: golden, sampling: sampling, interval: configuration.sealCheckInterval, logger: logger)

        let group = ServiceGroup(configuration: .init(
            services: [sealer] + watchers + receivers + [query],
            gracefulShutdownSignals: handleSignals ? [.sigterm, .sigint] : [],
            logger: logger))
        if let shutdown { shutdown.attach(group) }
        try await group.run()
    }
}

/// Lets code outside `run` ask a running collector to shut down gracefully.
public final class ShutdownTrigger: Sendable {
    private let group = Mutex<ServiceGroup?>(nil)
    private let requested = Mutex(false)

    public init() {}

    func attach(_ serviceGroup: ServiceGroup) {
        group.withLock { $0 = serviceGroup }
        if requested.withLock({ $0 }) {
            Task { await serviceGroup.triggerGracefulShutdown() }
        }
    }

    /// Starts a graceful shutdown: listeners close, then the head block is sealed.
    public func trigger() async {
        requested.withLock { $0 = true }
        if let serviceGroup = group.withLock({ $0 }) {
            await serviceGroup.triggerGracefulShutdown()
        }
    }
}

/// Checks the TLS certificate files for change, and reloads them;
/// and keeps the transport audit trail on disk.
struct CertificateWatcher: Service {
    let security: ConnectionSecurity
    let interval: Duration
    let logger: Logger

    func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await Task.sleep(for: interval)
            security.reloadIfChanged()
            save()
        }
        save()
    }

    private func save() {
        do {
            try security.audit.save()
        } catch {
            logger.error("cannot save the transport audit trail", metadata: ["error": "\(error)"])
        }
    }
}

/// A listener whose failure (its address in use, say) names the listener and the address.
struct NamedListener: Service {
    let endpoint: CollectorServer.Endpoint
    let address: ListenAddress
    let base: any Service

    struct Failure: Error, CustomStringConvertible {
        let endpoint: CollectorServer.Endpoint
        let address: ListenAddress
        let reason: String

        var description: String { "the \(endpoint.rawValue) listener on \(address) failed: \(reason)" }
    }

    func run() async throws {
        do {
            try await base.run()
        } catch let error as CancellationError {
            throw error
        } catch {
            throw Failure(endpoint: endpoint, address: address, reason: "\(error)")
        }
    }
}

/// Seals the head block when it is due, and once more at shutdown. Services in a
/// group stop in reverse order, so this one (first) stops after the listeners.
struct SealService: Service {
    let store: SpanStore
    let golden: GoldenSignals
    let sampling: SamplingControl
    let interval: Duration
    let logger: Logger

    func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await Task.sleep(for: interval)
            golden.expirePairs()
            sampling.tick()
            store.releaseDecided()
            do {
                let golden = self.golden
                let (rolledUp, expired) = try await NIOThreadPool.singleton.runIfActive { try golden.rollUp() }
                if rolledUp + expired > 0 {
                    logger.info("rolled up golden-signal series", metadata: ["rolled_up": "\(rolledUp)", "expired": "\(expired)"])
                }
            } catch is CancellationError {
                break  // the service group was cancelled: on to sealing, below
            } catch {
                logger.error("rolling up golden-signal series failed", metadata: ["error": "\(error)"])
            }
            do {
                let store = self.store
                if store.headIsDue {
                    try await NIOThreadPool.singleton.runIfActive { try store.seal() }
                }
                if store.compactionIsDue {
                    let merged = try await NIOThreadPool.singleton.runIfActive { try store.compact() }
                    if !merged.isEmpty { logger.info("compacted segments", metadata: ["inputs": "\(merged.count)"]) }
                }
                if store.configuration.retention != nil || store.configuration.maxSegmentBytes != nil {
                    let now = UInt64(Date().timeIntervalSince1970 * 1e9)
                    let removed = try await NIOThreadPool.singleton.runIfActive { try store.enforceRetention(now: now) }
                    for path in removed { logger.info("retention removed a segment", metadata: ["file": "\(path)"]) }
                }
            } catch {
                logger.error("sealing failed; spans stay in the WAL", metadata: ["error": "\(error)"])
            }
            if Task.isShuttingDownGracefully { break }
        }
        do {
            let store = self.store
            // Traces still waiting for their sampling decision are decided now. In a task
            // of its own, which this service's cancellation does not reach: when the
            // service group is cancelled (a listener could not start, say) rather than
            // shut down gracefully, the head block is still sealed.
            try await Task.detached {
                try await NIOThreadPool.singleton.runIfActive { try store.seal(decidingHeld: true) }
            }.value
            logger.info("sealed the head block at shutdown")
        } catch {
            logger.error("sealing at shutdown failed; spans stay in the WAL", metadata: ["error": "\(error)"])
        }
    }
}
