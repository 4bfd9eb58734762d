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
            Spans sent to any receiver (OTLP/gRPC, OTLP/HTTP, Zipkin) are acknowledged once \
            they are in the write-ahead log on disk. The collector's own metrics are at \
            /metrics on the query address. The head block is sealed into a compressed columnar \
            segment when it is large or old enough, and on SIGINT/SIGTERM.
            """)

    @Option(name: .long, help: "YAML configuration file (see docs/configuration.md); flags override it.")
    var config: String?

    @Option(name: .long, help: "Data directory, write-ahead log and segments (default ./meshtrace-data).")
    var dataDir: String?

    @Option(name: .long, help: "OTLP/gRPC listen address, host:port (port 0 picks a free port), or off (default 127.0.0.1:4317).")
    var otlpGrpc: String?

    @Option(name: .long, help: "OTLP/HTTP listen address, host:port, or off (default 127.0.0.1:4318).")
    var otlpHttp: String?

    @Option(name: .long, help: "Zipkin v2 listen address (POST /api/v2/spans), host:port, or off (default 127.0.0.1:9411).")
    var zipkin: String?

    @Option(name: .long, help: "Query API listen address, host:port (default 127.0.0.1:16686).")
    var query: String?

    @Option(name: .long, help: "Seal the head block once it holds this many spans (default 200000).")
    var maxHeadSpans: Int?

    @Option(name: .long, help: "Seal the head block once it is this old, in seconds (default 300).")
    var maxHeadAge: Int?

    @Option(name: .long, help: "Least time between WAL syncs, e.g. 10ms; 0 syncs per group of waiting requests (default 0). Requests are answered only once synced either way.")
    var walSyncInterval: String?

    @Option(name: .long, help: "Delete segments older than this (e.g. 72h, 14d); unset keeps them.")
    var retention: String?

    @Option(name: .long, help: "Delete the oldest segments while all of them exceed this many bytes.")
    var maxStoreBytes: Int?

    @Option(name: .long, help: "Merge segments with fewer spans than this in the background; 0 turns compaction off (default 400000).")
    var compactBelow: Int?

    @Option(name: .long, help: "zstd level of segment column chunks, 1–19; higher is smaller and slower to write (default 3).")
    var compressionLevel: Int?

    @Option(name: .long, help: "Spans per segment block; a trace lookup reads one block, smaller blocks cost bytes (default 4096).")
    var blockSpans: Int?

    @Option(name: .long, help: "Largest OTLP/HTTP or Zipkin request body, in bytes (default 20971520).")
    var maxRequestBytes: Int?

    @Option(name: .long, help: "Time an HTTP client has to send a request body, and may stay silent mid-request, e.g. 30s (default 30s).")
    var readTimeout: String?

    @Option(name: .long, help: "Largest OTLP/gRPC request message, in bytes (default 4194304).")
    var maxGrpcMessageBytes: Int?

    @Option(name: .long, help: "Bytes of request data held in flight at most, 4× each request's size; past it clients are told to retry (default 536870912).")
    var memoryBudget: Int?

    @Option(name: .long, help: "Shards the golden signals and the tail sampler split their work into by trace id (default: one per four cores, at least one).")
    var shards: Int?

    @Option(name: .long, help: "Sampling policy file (docs/sampling.md); reloaded on SIGHUP and when it changes. Default: the built-in policy.")
    var policy: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical (default info).")
    var logLevel: String?

    @Option(name: .long, help: "Receivers' TLS: off, permissive (TLS and plaintext, labelled) or strict (mTLS only). Default: strict when a certificate is given, else off.")
    var tlsMode: String?

    @Option(name: .long, help: "Directory written by `meshtrace ca init`: collector.pem, collector-key.pem and ca.pem.")
    var tlsDir: String?

    @Option(name: .long, help: "The collector's certificate chain, PEM, leaf first (reloaded when it changes).")
    var tlsCert: String?

    @Option(name: .long, help: "The collector's private key, PEM.")
    var tlsKey: String?

    @Option(name: .long, help: "CA certificates client certificates must chain to, PEM.")
    var tlsTrustBundle: String?

    @Option(name: .long, help: "SPIFFE trust domain clients must belong to (default: the collector's own).")
    var tlsTrustDomain: String?

    @Option(name: .long, help: "SPIFFE ID pattern allowed to connect (repeatable; '*' one segment, final '**' any). Default: the whole trust domain.")
    var tlsAllow: [String] = []

    @Option(name: .long, help: "Identity binding 'PATH => SERVICE', e.g. 'ns/{ns}/sa/{sa} => {sa}' (repeatable; the default).")
    var identityBind: [String] = []

    @Option(name: .long, help: "Spans claiming a service their sender's identity may not: reject (default) or relabel.")
    var identityOnMismatch: String?

    @Option(name: .long, help: "File of bearer tokens (one per line) the query API asks for; required when --query is beyond loopback.")
    var apiTokenFile: String?

    /// The flags given, by the configuration key each one sets.
    private var flagSettings: [(flag: String, key: String, value: String)] {
        let given: [(String, String, String?)] = [
            ("--data-dir", "data_dir", dataDir),
            ("--otlp-grpc", "receivers.otlp_grpc.endpoint", otlpGrpc),
            ("--otlp-http", "receivers.otlp_http.endpoint", otlpHttp),
            ("--zipkin", "receivers.zipkin.endpoint", zipkin),
            ("--query", "query.endpoint", query),
            ("--max-head-spans", "store.max_head_spans", maxHeadSpans.map(String.init)),
            ("--max-head-age", "store.max_head_age", maxHeadAge.map { "\($0)s" }),
            ("--retention", "store.retention", retention),
            ("--wal-sync-interval", "store.wal_sync_interval", walSyncInterval),
            ("--max-store-bytes", "store.max_store_bytes", maxStoreBytes.map(String.init)),
            ("--compact-below", "store.compact_below", compactBelow.map(String.init)),
            ("--compression-level", "store.compression_level", compressionLevel.map(String.init)),
            ("--block-spans", "store.block_spans", blockSpans.map(String.init)),
            ("--max-request-bytes", "receivers.max_request_bytes", maxRequestBytes.map(String.init)),
            ("--read-timeout", "receivers.read_timeout", readTimeout),
            ("--max-grpc-message-bytes", "receivers.otlp_grpc.max_message_bytes", maxGrpcMessageBytes.map(String.init)),
            ("--memory-budget", "memory_budget_bytes", memoryBudget.map(String.init)),
            ("--shards", "pipeline.shards", shards.map(String.init)),
            ("--log-level", "log_level", logLevel),
            ("--policy", "sampling.policy", policy),
            ("--tls-mode", "tls.mode", tlsMode),
            ("--tls-dir", "tls.dir", tlsDir),
            ("--tls-cert", "tls.cert_file", tlsCert),
            ("--tls-key", "tls.key_file", tlsKey),
            ("--tls-trust-bundle", "tls.trust_bundle", tlsTrustBundle),
            ("--tls-trust-domain", "tls.trust_domain", tlsTrustDomain),
            ("--tls-allow", "tls.allow", tlsAllow.isEmpty ? nil : tlsAllow.joined(separator: "\n")),
            ("--identity-bind", "identity.bind", identityBind.isEmpty ? nil : identityBind.joined(separator: "\n")),
            ("--identity-on-mismatch", "identity.on_mismatch", identityOnMismatch),
            ("--api-token-file", "query.token_file", apiTokenFile),
        ]
        return given.compactMap { flag, key, value in value.map { (flag, key, $0) } }
    }

    /// The configuration file, then the flags over it.
    private func configuration() throws -> CollectorConfiguration {
        var configuration = CollectorConfiguration()
        do {
            if let config {
                let text: String
                do {
                    text = try String(contentsOfFile: config, encoding: .utf8)
                } catch {
                    throw CollectorSettings.Invalid(description: "\(config): cannot read the configuration file: \(error.localizedDescription)")
                }
                try CollectorSettings.apply(yaml: text, file: config, to: &configuration)
            }
            for (flag, key, value) in flagSettings {
                try CollectorSettings.set(key, to: value, in: &configuration, source: flag)
            }
        } catch let error as CollectorSettings.Invalid {
            throw ValidationError(error.description)
        }
        return configuration
    }

    func validate() throws {
        _ = try configuration()
    }

    func run() async throws {
        let configuration = try configuration()
        let level = Logger.Level(rawValue: configuration.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        Self.raiseDescriptorLimit()

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
