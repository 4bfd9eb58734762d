import Foundation
import GoldenSignals
import Hummingbird
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
        let golden = try GoldenSignals(configuration: series)
        for problem in golden.problems {
            logger.warning("series problem", metadata: ["problem": "\(problem)"])
        }
        let sampling = try SamplingControl(source: configuration.sampling, golden: golden, logger: logger)
        let hangup = sampling.watchHangup()
        defer { hangup.cancel() }
        let store = try SpanStore(configuration: configuration.store, follower: golden, admission: sampling.sampler)
        for problem in store.problems {
            logger.warning("store problem", metadata: ["problem": "\(problem)"])
        }

        let metrics = CollectorMetrics()
        let ingest = TraceIngest(store: store, logger: logger, metrics: metrics)
        let budget = IngestBudget(limit: configuration.memoryBudgetBytes)
        /// An HTTP listener at `address` that reports the port it bound as `endpoint`.
        func httpListener(_ endpoint: Endpoint, at address: ListenAddress, _ register: (Router<BasicRequestContext>) -> Void)
            -> some Service
        {
            let router = Router()
            register(router)
            let (seconds, attoseconds) = configuration.readTimeout.components
            return Application(
                router: router,
                // A connection silent mid-request (a client that never finishes its body) is closed.
                server: .http1(configuration: .init(idleTimeout: .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000))),
                configuration: .init(address: .hostname(address.host, port: address.port)),
                onServerRunning: { channel in
                    onListening(endpoint, ListenAddress(host: address.host, port: channel.localAddress?.port ?? 0))
                },
                logger: logger)
        }

        var receivers: [any Service] = []
        if let address = configuration.otlpHTTP {
            receivers.append(httpListener(.otlpHTTP, at: address) { router in
                OTLPHTTPReceiver(
                    ingest: ingest, maxBodyBytes: configuration.maxRequestBodyBytes, readTimeout: configuration.readTimeout,
                    budget: budget, metrics: metrics)
                    .register(on: router)
            })
        }
        if let address = configuration.zipkin {
            receivers.append(httpListener(.zipkin, at: address) { router in
                ZipkinReceiver(
                    ingest: ingest, maxBodyBytes: configuration.maxRequestBodyBytes, readTimeout: configuration.readTimeout,
                    budget: budget, metrics: metrics)
                    .register(on: router)
            })
        }
        if let address = configuration.otlpGRPC {
            receivers.append(OTLPGRPCReceiver(
                address: address, ingest: ingest, maxMessageBytes: configuration.maxGRPCMessageBytes, budget: budget, metrics: metrics,
                onListening: { onListening(.otlpGRPC, $0) }))
        }
        let query = httpListener(.query, at: configuration.query) { router in
            QueryAPI(store: store, golden: golden, logger: logger).register(on: router)
            router.get("/metrics") { _, _ in
                Response(
                    status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                    body: ResponseBody(byteBuffer: ByteBuffer(string: metrics.render(store: store, budget: budget) + sampling.prometheusText() + golden.prometheusText())))
            }
        }
        let sealer = SealService(
            store: store, golden: golden, sampling: sampling, interval: configuration.sealCheckInterval, logger: logger)

        let group = ServiceGroup(configuration: .init(
            services: [sealer] + receivers + [query],
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
            // Traces still waiting for their sampling decision are decided now.
            try await NIOThreadPool.singleton.runIfActive { try store.seal(decidingHeld: true) }
            logger.info("sealed the head block at shutdown")
        } catch {
            logger.error("sealing at shutdown failed; spans stay in the WAL", metadata: ["error": "\(error)"])
        }
    }
}
