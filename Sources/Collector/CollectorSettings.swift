import Foundation
import Logging
import MeshIdentity
import MeshCore
import Sampling
import Yams

/// Every setting of the collector, by the dotted key it has in the configuration
/// file. Flags set the same keys (after the file, so they win), so both are parsed
/// and checked by the same code.
public enum CollectorSettings {
    /// A configuration file or flag that cannot be used, saying where and why.
    public struct Invalid: Error, CustomStringConvertible {
        public var description: String

        public init(description: String) {
            self.description = description
        }
    }

    private typealias Apply = @Sendable (inout CollectorConfiguration, String) -> String?

    /// Each key, and how its text sets the configuration (returning why not, when it cannot).
    private static let keys: [String: Apply] = [
        "data_dir": { configuration, text in
            guard !text.isEmpty else { return "expected a directory" }
            configuration.store.dataDirectory = text
            return nil
        },
        "log_level": { configuration, text in
            guard Logger.Level(rawValue: text) != nil else {
                return "expected one of trace, debug, info, notice, warning, error, critical, got \(text.debugDescription)"
            }
            configuration.logLevel = text
            return nil
        },
        "memory_budget_bytes": positive { $0.memoryBudgetBytes = $1 },
        "pipeline.shards": { configuration, text in
            guard let value = Int(text), (1...256).contains(value) else { return "expected 1 to 256, got \(text.debugDescription)" }
            configuration.shards = value
            return nil
        },
        "query.endpoint": { configuration, text in
            guard let address = ListenAddress(text) else { return "expected host:port, got \(text.debugDescription)" }
            configuration.query = address
            return nil
        },
        "sampling.policy": { configuration, text in
            do {
                _ = try PolicyFile.load(path: text)
            } catch {
                return "the policy file is invalid: \(error)"
            }
            configuration.sampling = .file(text)
            return nil
        },
        "receivers.otlp_grpc.endpoint": endpoint { $0.otlpGRPC = $1 },
        "receivers.otlp_http.endpoint": endpoint { $0.otlpHTTP = $1 },
        "receivers.zipkin.endpoint": endpoint { $0.zipkin = $1 },
        "receivers.otlp_grpc.max_message_bytes": positive { $0.maxGRPCMessageBytes = $1 },
        "receivers.max_request_bytes": positive { $0.maxRequestBodyBytes = $1 },
        "receivers.read_timeout": duration { $0.readTimeout = $1 },
        "store.max_head_spans": positive { $0.store.maxHeadSpans = $1 },
        "store.max_head_age": duration { $0.store.maxHeadAge = $1 },
        "store.retention": duration { $0.store.retention = $1 },
        "store.wal_sync_interval": { configuration, text in
            guard let nanoseconds = text == "0" ? 0 : DurationText.nanoseconds(text), nanoseconds <= 1_000_000_000 else {
                return "expected 0 (sync per group of requests) or a duration up to 1s like 10ms, got \(text.debugDescription)"
            }
            configuration.store.walSyncInterval = .nanoseconds(Int64(nanoseconds))
            return nil
        },
        "tls.mode": { configuration, text in
            guard let mode = TLSMode(rawValue: text) else { return "expected off, permissive or strict, got \(text.debugDescription)" }
            configuration.tls.mode = mode
            return nil
        },
        "tls.dir": file { $0.tls.use(directory: $1) },
        "tls.cert_file": file { $0.tls.certificateFile = $1 },
        "tls.key_file": file { $0.tls.keyFile = $1 },
        "tls.trust_bundle": file { $0.tls.trustBundleFile = $1 },
        "tls.trust_domain": { configuration, text in
            guard SPIFFEID.isTrustDomain(text) else { return "expected a trust domain like cluster.local, got \(text.debugDescription)" }
            configuration.tls.trustDomain = text
            return nil
        },
        "tls.allow": list(SPIFFEPattern.init) { $0.tls.allowed = $1 },
        "tls.reload_interval": duration { $0.tls.reloadInterval = $1 },
        "tls.handshake_timeout": duration { $0.tls.handshakeTimeout = $1 },
        "tls.expiry_warning": duration { $0.tls.expiryWarning = $1 },
        "identity.bind": list(IdentityBinding.init) { $0.tls.bindings = $1 },
        "identity.on_mismatch": { configuration, text in
            guard let action = MismatchAction(rawValue: text) else { return "expected reject or relabel, got \(text.debugDescription)" }
            configuration.tls.onMismatch = action
            return nil
        },
        "query.token_file": file { $0.queryTokenFile = $1 },
        "store.max_store_bytes": positive { $0.store.maxSegmentBytes = $1 },
        "store.compact_below": { configuration, text in
            guard let value = Int(text), value >= 0 else { return "expected a whole number, 0 or more, got \(text.debugDescription)" }
            configuration.store.compactionTargetSpans = value
            return nil
        },
        "store.compression_level": { configuration, text in
            guard let value = Int32(text), (1...19).contains(value) else { return "expected 1 to 19, got \(text.debugDescription)" }
            configuration.store.compressionLevel = value
            return nil
        },
        "store.block_spans": { configuration, text in
            guard let value = Int(text), value >= 64 else { return "expected a whole number, at least 64, got \(text.debugDescription)" }
            configuration.store.blockSpans = value
            return nil
        },
    ]

    /// The keys the configuration file may hold.
    public static var knownKeys: [String] { keys.keys.sorted() }

    /// Sets `key` from `text`, as a flag does.
    public static func set(_ key: String, to text: String, in configuration: inout CollectorConfiguration, source: String) throws(Invalid) {
        guard let apply = keys[key] else { throw Invalid(description: "\(source): unknown setting \(key)") }
        if let reason = apply(&configuration, text) { throw Invalid(description: "\(source): \(key): \(reason)") }
    }

    /// Applies the YAML configuration file `yaml` (named `file` in errors) on top of
    /// `configuration`. Every key must be known and every value valid; the error
    /// names the file, the line and the key.
    public static func apply(yaml: String, file: String, to configuration: inout CollectorConfiguration) throws(Invalid) {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch {
            throw Invalid(description: "\(file): not valid YAML: \(error)")
        }
        guard let root else { return }  // an empty file changes nothing
        try apply(root, prefix: "", file: file, to: &configuration)
    }

    private static func apply(_ node: Node, prefix: String, file: String, to configuration: inout CollectorConfiguration) throws(Invalid) {
        func place(_ node: Node) -> String { node.mark.map { "\(file):\($0.line)" } ?? file }
        guard let mapping = node.mapping else {
            throw Invalid(description: "\(place(node)): \(prefix.isEmpty ? "the file" : prefix) must be a mapping of keys to values")
        }
        for (keyNode, value) in mapping {
            guard let name = keyNode.string else { throw Invalid(description: "\(place(keyNode)): keys must be strings") }
            let key = prefix.isEmpty ? name : prefix + "." + name
            switch value {
            case .mapping:
                guard knownKeys.contains(where: { $0.hasPrefix(key + ".") }) else {
                    throw Invalid(description: "\(place(keyNode)): unknown setting \(key)")
                }
                try apply(value, prefix: key, file: file, to: &configuration)
            case .scalar(let scalar):
                try set(key, to: scalar.string, in: &configuration, source: place(keyNode))
            case .sequence(let sequence) where listKeys.contains(key):
                var items: [String] = []
                for item in sequence {
                    guard let text = item.string else { throw Invalid(description: "\(place(item)): \(key): expected a list of strings") }
                    items.append(text)
                }
                try set(key, to: items.joined(separator: "\n"), in: &configuration, source: place(keyNode))
            default:
                throw Invalid(description: "\(place(keyNode)): \(key): expected a single value")
            }
        }
    }

    /// Keys whose value may be a YAML list (or, as a flag, lines or commas).
    private static let listKeys: Set<String> = ["tls.allow", "identity.bind"]

    /// A list key: its items (lines or commas) each parsed by `parse`.
    private static func list<Item: Sendable>(
        _ parse: @escaping @Sendable (String) throws(SPIFFEID.Invalid) -> Item,
        _ assign: @escaping @Sendable (inout CollectorConfiguration, [Item]) -> Void
    ) -> Apply {
        { configuration, text in
            let texts = text.split(whereSeparator: { $0 == "\n" || $0 == "," })
                .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            var items: [Item] = []
            for item in texts {
                do { items.append(try parse(item)) } catch { return "\(error)" }
            }
            assign(&configuration, items)
            return nil
        }
    }

    private static func file(_ assign: @escaping @Sendable (inout CollectorConfiguration, String) -> Void) -> Apply {
        { configuration, text in
            guard !text.isEmpty else { return "expected a path" }
            assign(&configuration, text)
            return nil
        }
    }

    private static func positive(_ assign: @escaping @Sendable (inout CollectorConfiguration, Int) -> Void) -> Apply {
        { configuration, text in
            guard let value = Int(text), value > 0 else { return "expected a positive whole number, got \(text.debugDescription)" }
            assign(&configuration, value)
            return nil
        }
    }

    private static func endpoint(_ assign: @escaping @Sendable (inout CollectorConfiguration, ListenAddress?) -> Void) -> Apply {
        { configuration, text in
            if text == "off" {
                assign(&configuration, nil)
                return nil
            }
            guard let address = ListenAddress(text) else { return "expected host:port or off, got \(text.debugDescription)" }
            assign(&configuration, address)
            return nil
        }
    }

    private static func duration(_ assign: @escaping @Sendable (inout CollectorConfiguration, Duration) -> Void) -> Apply {
        { configuration, text in
            guard let nanoseconds = DurationText.nanoseconds(text), nanoseconds > 0 else {
                return "expected a duration like 90s, 5m, 72h or 14d, got \(text.debugDescription)"
            }
            assign(&configuration, .nanoseconds(Int64(nanoseconds)))
            return nil
        }
    }
}
