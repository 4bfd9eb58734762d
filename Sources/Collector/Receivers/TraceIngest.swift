import Logging
import NIOCore
import NIOPosix
import OTLPWire
import SegmentStore

/// The step every receiver shares: store a decoded export request (spans, or OTLP
/// metrics) durably and say what was refused. A request is answered only once it
/// is in the WAL.
struct TraceIngest: Sendable {
    let store: SpanStore
    let logger: Logger
    let metrics: CollectorMetrics
    /// The receivers' TLS, when it is on: who sent a request, and what it may claim.
    let security: ConnectionSecurity?

    func peer(at address: SocketAddress?) -> ConnectionPeer? { security?.peer(at: address) }
    func peer(grpc remotePeer: String) -> ConnectionPeer? { security?.peer(grpc: remotePeer) }

    /// Threads that block on WAL syncs: more than the cores, so requests arriving
    /// together wait for one shared sync (group commit) instead of queueing for threads.
    static let blockingPool: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 32)
        pool.start()
        return pool
    }()

    /// The store could not take the spans (a full or failing disk); the client should retry.
    struct Unavailable: Error {
        var message: String
        /// How long a client should wait before retrying.
        var retryAfter: Duration
    }

    /// Appends a decoded export request to the store. Spans the protocol forbids
    /// (bad ids) are left out and reported in `partial_success`.
    func export(
        _ export: DecodedTraceExport, from receiver: CollectorMetrics.Receiver, peer: ConnectionPeer? = nil
    ) async throws(Unavailable) -> ExportTraceServiceResponse {
        var export = export
        if let security {
            guard let peer else {
                // The connection closed before its request was read, or it was never
                // registered: nothing says who sent these spans.
                var response = ExportTraceServiceResponse()
                response.partialSuccess.rejectedSpans = Int64(export.outcome.accepted + export.outcome.rejected)
                response.partialSuccess.errorMessage = "the sender's connection is unknown to the collector; spans refused"
                return response
            }
            export = security.binder.bind(export, peer: peer)
        }
        let outcome: IngestOutcome
        metrics.waiting(1)
        defer { metrics.waiting(-1) }
        do {
            let store = self.store
            let bound = export
            outcome = try await Self.blockingPool.runIfActive { try store.append(bound) }
        } catch {
            logger.error("cannot store spans", metadata: ["error": "\(error)"])
            throw Unavailable(message: "the collector cannot write to its store: \(error)", retryAfter: .seconds(5))
        }
        metrics.accepted(receiver, spans: outcome.accepted, rejected: outcome.rejected)
        var response = ExportTraceServiceResponse()
        if outcome.rejected > 0 {
            response.partialSuccess.rejectedSpans = Int64(outcome.rejected)
            response.partialSuccess.errorMessage = outcome.firstRejection ?? "spans rejected"
        }
        return response
    }

    /// Makes an OTLP metrics export request (whose protobuf bytes are `encoded`)
    /// durable in the WAL, where metric rollups read it.
    func exportMetrics(
        _ request: ExportMetricsServiceRequest, encoded: [UInt8], from receiver: CollectorMetrics.Receiver
    ) async throws(Unavailable) -> ExportMetricsServiceResponse {
        metrics.waiting(1)
        defer { metrics.waiting(-1) }
        do {
            let store = self.store
            try await Self.blockingPool.runIfActive { try store.appendMetrics(request, encoded: encoded) }
        } catch {
            logger.error("cannot store metrics", metadata: ["error": "\(error)"])
            throw Unavailable(message: "the collector cannot write to its store: \(error)", retryAfter: .seconds(5))
        }
        metrics.acceptedMetrics(receiver, dataPoints: request.dataPointCount)
        return ExportMetricsServiceResponse()
    }
}
