import Foundation
import MeshIdentity
import QueryEngine
import Synchronization
import X509

/// What the receivers saw of transport security since the collector started:
/// plaintext connections, refused handshakes, identity mismatches, and the
/// certificates in use with their expiry. `meshtrace audit` shows it next to the
/// plaintext edges the golden signals found. It is kept in `audit.json` in the data
/// directory (rewritten whole when it changed, at most every few seconds), so a
/// restart does not wipe the trail.
final class TransportAudit: Sendable {
    private struct Key: Hashable, Codable {
        var kind: String
        var source: String
        var target: String
        /// Keeps findings of one kind apart when their cause differs (why a connection was refused, say).
        var cause = ""
    }

    private struct Entry: Codable {
        var count: Int
        var detail: String
        var last: Date
    }

    private struct Expiry: Codable {
        var notAfter: Date
        var lastSeen: Date
    }

    /// What `audit.json` holds.
    private struct Saved: Codable {
        var entries: [Key]
        var values: [Entry]
        var identities: [String: Expiry]
    }

    private struct State {
        var entries: [Key: Entry] = [:]
        /// SPIFFE ID → its certificate's expiry, for every identity that connected.
        var identities: [String: Expiry] = [:]
        var server: (id: String, notAfter: Date)?
        var handshakes: [String: Int] = [:]
        var changed = false
    }

    private let state = Mutex(State())
    /// Where the trail is kept; nil keeps it in memory only.
    private let file: String?

    /// Reads what an earlier run saved at `file`; a file that cannot be read starts an empty trail.
    init(file: String? = nil) {
        self.file = file
        guard let file, let data = FileManager.default.contents(atPath: file),
              let saved = try? Self.decoder.decode(Saved.self, from: data), saved.entries.count == saved.values.count
        else { return }
        state.withLock { state in
            state.entries = Dictionary(zip(saved.entries, saved.values), uniquingKeysWith: { $1 })
            state.identities = saved.identities
        }
    }

    /// Writes the trail if it changed since the last save (whole, to a temporary file renamed over the old).
    func save() throws {
        guard let file else { return }
        let saved = state.withLock { state -> Saved? in
            guard state.changed else { return nil }
            state.changed = false
            let keys = Array(state.entries.keys)
            return Saved(entries: keys, values: keys.map { state.entries[$0]! }, identities: state.identities)
        }
        guard let saved else { return }
        let temporary = file + ".tmp"
        try Self.encoder.encode(saved).write(to: URL(fileURLWithPath: temporary))
        guard rename(temporary, file) == 0 else { throw CocoaError(.fileWriteUnknown) }
    }

    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = .sortedKeys
        return encoder
    }()

    private static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }()

    private func note(_ key: Key, count: Int = 1, detail: String) {
        state.withLock { state in
            var entry = state.entries[key] ?? Entry(count: 0, detail: detail, last: Date())
            entry.count += count
            entry.detail = detail
            entry.last = Date()
            state.entries[key] = entry
            state.changed = true
        }
    }

    /// The collector's own certificate (its SPIFFE ID, else its subject), for the expiry finding.
    func serverCertificate(_ certificate: X509.Certificate) {
        let id = PeerVerifier.uris(of: certificate).first ?? "\(certificate.subject)"
        state.withLock { $0.server = (id, certificate.notValidAfter) }
    }

    func accepted(_ transport: PeerTransport, host: String, receiver: String) {
        state.withLock { $0.handshakes[transport.name, default: 0] += 1 }
        switch transport {
        case .plaintext:
            note(Key(kind: "plaintext_connection", source: host, target: receiver), detail: "exporter connected without TLS (permissive mode)")
        case .tls:
            note(Key(kind: "unauthenticated_connection", source: host, target: receiver), detail: "TLS without a client certificate (permissive mode)")
        case .mtls(let peer):
            state.withLock { state in
                if state.identities[peer.id.description]?.notAfter != peer.notAfter { state.changed = true }
                state.identities[peer.id.description] = Expiry(notAfter: peer.notAfter, lastSeen: Date())
            }
        }
    }

    func refused(kind: String, reason: String, host: String, receiver: String) {
        state.withLock { $0.handshakes["refused_" + kind, default: 0] += 1 }
        note(Key(kind: "refused_connection", source: host, target: receiver, cause: kind), detail: reason)
    }

    func mismatch(id: String, claimed: String, allowed: String?, spans: Int, action: MismatchAction) {
        let may = allowed.map { "may claim \($0.debugDescription)" } ?? "matches no identity binding"
        note(Key(kind: "identity_mismatch", source: id, target: claimed, cause: action.rawValue), count: spans,
             detail: "\(may); spans \(action == .reject ? "rejected" : "relabelled")")
    }

    /// Findings in `meshtrace audit`'s shape; certificates expiring within `warning` are findings too.
    func findings(now: Date = Date(), warning: Duration) -> [SignalQueries.Audit.Finding] {
        let horizon = now.addingTimeInterval(TimeInterval(warning.components.seconds))
        return state.withLock { state in
            var findings = state.entries.sorted { ($0.key.kind, $0.key.source, $0.key.target, $0.key.cause) < ($1.key.kind, $1.key.source, $1.key.target, $1.key.cause) }
                .map { SignalQueries.Audit.Finding(kind: $0.key.kind, source: $0.key.source, target: $0.key.target, requests: $0.value.count, detail: $0.value.detail) }
            var certificates = state.identities.map { ($0.key, $0.value.notAfter) }
            if let server = state.server { certificates.append(("collector " + server.id, server.notAfter)) }
            for (id, notAfter) in certificates.sorted(by: { $0.0 < $1.0 }) where notAfter < horizon {
                let detail = notAfter < now ? "certificate expired at \(Self.format(notAfter))" : "certificate expires at \(Self.format(notAfter))"
                findings.append(.init(kind: "certificate_expiring", source: id, target: "-", requests: 0, detail: detail))
            }
            return findings
        }
    }

    /// Prometheus text: connections by how they were secured or refused, and identity mismatches.
    func prometheusText() -> String {
        state.withLock { state in
            var text = "# HELP meshtrace_connections_total Receiver connections by transport security, or why they were refused.\n"
            text += "# TYPE meshtrace_connections_total counter\n"
            for (result, count) in state.handshakes.sorted(by: { $0.key < $1.key }) {
                text += "meshtrace_connections_total{result=\"\(result)\"} \(count)\n"
            }
            let spans = state.entries.filter { $0.key.kind == "identity_mismatch" }.reduce(0) { $0 + $1.value.count }
            text += "# HELP meshtrace_identity_mismatch_spans_total Spans whose service.name their sender's identity may not claim.\n"
            text += "# TYPE meshtrace_identity_mismatch_spans_total counter\nmeshtrace_identity_mismatch_spans_total \(spans)\n"
            if let server = state.server {
                text += "# HELP meshtrace_tls_certificate_expiry_seconds Unix time the collector's certificate expires.\n"
                text += "# TYPE meshtrace_tls_certificate_expiry_seconds gauge\n"
                text += "meshtrace_tls_certificate_expiry_seconds \(Int(server.notAfter.timeIntervalSince1970))\n"
            }
            return text
        }
    }

    private static func format(_ date: Date) -> String { ISO8601DateFormatter().string(from: date) }
}
