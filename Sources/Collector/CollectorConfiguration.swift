import MeshCore
import Sampling
import SegmentStore

/// A host and port to listen on; port 0 picks a free port.
public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port`, `:port` (loopback) or `[v6]:port`; nil when malformed.
    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (0...65535).contains(port) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        self.init(host: host.isEmpty ? "127.0.0.1" : host, port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Whether only this machine can reach the address.
    public var isLoopback: Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }
}

/// Everything the collector needs to run.
public struct CollectorConfiguration: Sendable {
    /// Where OTLP/HTTP is served (`POST /v1/traces`, `POST /v1/metrics`); nil switches it off.
    public var otlpHTTP: ListenAddress? = ListenAddress(host: "127.0.0.1", port: 4318)
    /// Where OTLP/gRPC is served (`TraceService/Export`, `MetricsService/Export`); nil switches it off.
    public var otlpGRPC: ListenAddress? = ListenAddress(host: "127.0.0.1", port: 4317)
    /// Where Zipkin v2 is served (`POST /api/v2/spans`); nil switches it off.
    public var zipkin: ListenAddress? = ListenAddress(host: "127.0.0.1", port: 9411)
    /// Where the query API is served.
    public var query = ListenAddress(host: "127.0.0.1", port: 16686)
    /// The span store's layout and sealing policy.
    public var store: SpanStore.Configuration
    /// Largest OTLP/HTTP request body accepted, in bytes (OTLP recommends 20 MiB).
    public var maxRequestBodyBytes = 20 << 20
    /// Largest OTLP/gRPC request message accepted, in bytes (OTLP recommends 4 MiB).
    public var maxGRPCMessageBytes = 4 << 20
    /// Bytes of request data held in flight at most (each request is charged four
    /// times its decompressed size); past it, clients are told to retry later.
    public var memoryBudgetBytes = 512 << 20
    /// Shards the golden signals and the tail sampler split their work into, by trace
    /// id; requests in different shards are worked on at once (default: one per four cores).
    public var shards = Shards.defaultCount
    /// How long an HTTP client may take to send a request body, and may leave a
    /// connection silent mid-request; past it the request gets 408 or the connection closes.
    public var readTimeout: Duration = .seconds(30)
    /// The collector process's log level (`trace` … `critical`).
    public var logLevel = "info"
    /// Where the sampling policy comes from (docs/sampling.md).
    public var sampling: SamplingSource = .builtIn
    /// The receivers' TLS mode, certificates, allow-list and identity binding (docs/security.md).
    public var tls = TLSSettings()
    /// Bearer tokens the query API asks for, one per line; required when the query
    /// API is bound beyond loopback.
    public var queryTokenFile: String?
    /// How often the head block is checked for sealing by age.
    public var sealCheckInterval: Duration = .seconds(1)

    public init(dataDirectory: String = "./meshtrace-data") {
        store = SpanStore.Configuration(dataDirectory: dataDirectory)
    }
}

/// Where the collector's sampling policy comes from.
public enum SamplingSource: Sendable {
    /// The built-in default policy (`PolicyFile.defaultYAML`).
    case builtIn
    /// A policy file, reloaded on SIGHUP and when it changes.
    case file(String)
    /// A policy given in code (the demo keeps every trace).
    case policy(PolicyFile)
}
