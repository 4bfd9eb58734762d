import ArgumentParser
import Collector
import Foundation
import Logging
import MeshCore
import SegmentStore

/// `meshtrace-collector`: receives OTLP, stores spans durably, serves queries.
@main
struct CollectorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meshtrace-collector",
        abstract: "Receive OTLP spans, store them durably, and answer queries.",
        discussion: """
            Spans sent to the OTLP/gRPC or OTLP/HTTP receiver are acknowledged once they \
            are in the write-ahead log on disk. The head block is sealed into a compressed columnar \
            segment when it is large or old enough, and on SIGINT/SIGTERM.
            """)

    @Option(name: .long, help: "Data directory (write-ahead log and segments).")
    var dataDir = "./meshtrace-data"

    @Option(name: .long, help: "OTLP/gRPC listen address, host:port (port 0 picks a free port), or off.")
    var otlpGrpc = "127.0.0.1:4317"

    @Option(name: .long, help: "OTLP/HTTP listen address, host:port (port 0 picks a free port), or off.")
    var otlpHttp = "127.0.0.1:4318"

    @Option(name: .long, help: "Zipkin v2 listen address (POST /api/v2/spans), host:port, or off.")
    var zipkin = "127.0.0.1:9411"

    @Option(name: .long, help: "Query API listen address, host:port.")
    var query = "127.0.0.1:16686"

    @Option(name: .long, help: "Seal the head block once it holds this many spans.")
    var maxHeadSpans = Self.storeDefaults.maxHeadSpans

    @Option(name: .long, help: "Seal the head block once it is this old, in seconds.")
    var maxHeadAge = 300

    @Option(name: .long, help: "Delete segments older than this (e.g. 72h, 14d); unset keeps them.")
    var retention: String?

    @Option(name: .long, help: "Delete the oldest segments while all of them exceed this many bytes.")
    var maxStoreBytes: Int?

    @Option(name: .long, help: "Merge segments with fewer spans than this in the background; 0 turns compaction off.")
    var compactBelow = Self.storeDefaults.compactionTargetSpans

    @Option(name: .long, help: "zstd level of segment column chunks (1–19; higher is smaller and slower to write).")
    var compressionLevel = Self.storeDefaults.compressionLevel

    @Option(name: .long, help: "Spans per segment block; a trace lookup decodes up to one block, smaller blocks cost bytes.")
    var blockSpans = Self.storeDefaults.blockSpans

    @Option(name: .long, help: "Largest OTLP/HTTP or Zipkin request body, in bytes.")
    var maxRequestBytes = 20 << 20

    @Option(name: .long, help: "Largest OTLP/gRPC request message, in bytes.")
    var maxGrpcMessageBytes = 4 << 20

    @Option(name: .long, help: "Bytes of request data held in flight at most (4× each request's size); past it clients are told to retry.")
    var memoryBudget = 512 << 20

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    /// The store's own defaults, which the flags start from.
    private static let storeDefaults = SpanStore.Configuration(dataDirectory: "")

    func validate() throws {
        guard otlpHttp == "off" || ListenAddress(otlpHttp) != nil else {
            throw ValidationError("--otlp-http must be host:port or off, got \(otlpHttp)")
        }
        guard otlpGrpc == "off" || ListenAddress(otlpGrpc) != nil else {
            throw ValidationError("--otlp-grpc must be host:port or off, got \(otlpGrpc)")
        }
        guard zipkin == "off" || ListenAddress(zipkin) != nil else {
            throw ValidationError("--zipkin must be host:port or off, got \(zipkin)")
        }
        guard ListenAddress(query) != nil else { throw ValidationError("--query must be host:port, got \(query)") }
        guard maxHeadSpans > 0, maxHeadAge > 0, maxRequestBytes > 0, maxGrpcMessageBytes > 0, memoryBudget > 0 else {
            throw ValidationError("--max-head-spans, --max-head-age, --max-request-bytes, --max-grpc-message-bytes and --memory-budget must be positive")
        }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
        if let retention, DurationText.nanoseconds(retention) == nil {
            throw ValidationError("--retention must be a duration like 72h or 14d, got \(retention)")
        }
        if let maxStoreBytes, maxStoreBytes <= 0 { throw ValidationError("--max-store-bytes must be positive") }
        guard (1...19).contains(compressionLevel) else { throw ValidationError("--compression-level must be 1 to 19, got \(compressionLevel)") }
        guard blockSpans >= 64 else { throw ValidationError("--block-spans must be at least 64, got \(blockSpans)") }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        Self.raiseDescriptorLimit()
        var configuration = CollectorConfiguration(dataDirectory: dataDir)
        configuration.otlpHTTP = ListenAddress(otlpHttp)
        configuration.otlpGRPC = ListenAddress(otlpGrpc)
        configuration.zipkin = ListenAddress(zipkin)
        configuration.maxGRPCMessageBytes = maxGrpcMessageBytes
        configuration.memoryBudgetBytes = memoryBudget
        configuration.query = ListenAddress(query)!
        configuration.store.maxHeadSpans = maxHeadSpans
        configuration.store.maxHeadAge = .seconds(maxHeadAge)
        configuration.maxRequestBodyBytes = maxRequestBytes
        if let retention, let nanoseconds = DurationText.nanoseconds(retention) {
            configuration.store.retention = .nanoseconds(Int64(nanoseconds))
        }
        configuration.store.maxSegmentBytes = maxStoreBytes
        configuration.store.compactionTargetSpans = compactBelow
        configuration.store.compressionLevel = compressionLevel
        configuration.store.blockSpans = blockSpans

        let server = CollectorServer(configuration: configuration)
        do {
            try await server.run { endpoint, address in
                // Tests and scripts read the bound ports from these lines.
                FileHandle.standardOutput.write(Data("meshtrace-collector: \(endpoint.rawValue) listening on \(address)\n".utf8))
            }
        } catch {
            FileHandle.standardError.write(Data("meshtrace-collector: \(error)\n".utf8))
            throw ExitCode(2)
        }
    }

    /// The store keeps one descriptor open per segment: allow as many as the system
    /// lets this process have (the soft limit is often far below the hard one).
    private static func raiseDescriptorLimit() {
        #if os(Linux)
        var limit = rlimit()
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        if getrlimit(resource, &limit) == 0, limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(resource, &limit)
        }
        #endif
    }
}
