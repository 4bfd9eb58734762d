import Foundation
import MeshCore
import Synchronization

/// TLS to the collector: the CA bundle that signs its certificate and, for mTLS,
/// this workload's certificate and key — PEM files, read again when they change
/// (certificate rotation needs no restart).
public struct ClientTLS: Sendable {
    public var trustBundleFile: String
    /// This workload's certificate chain (leaf first); with `keyFile`, it makes the connection mTLS.
    public var certificateFile: String?
    public var keyFile: String?
    /// How often the files are checked for change.
    public var reloadInterval: Duration = .seconds(5)

    public init(trustBundleFile: String, certificateFile: String? = nil, keyFile: String? = nil) {
        self.trustBundleFile = trustBundleFile
        self.certificateFile = certificateFile
        self.keyFile = keyFile
    }

    var files: [String] { [trustBundleFile] + [certificateFile, keyFile].compactMap { $0 } }

    /// The files' contents, read together.
    struct Material: Sendable {
        let trustBundle: [UInt8]
        let certificateChain: [UInt8]?
        let key: [UInt8]?
    }

    func read() throws -> Material {
        func contents(_ path: String) throws -> [UInt8] {
            guard let data = FileManager.default.contents(atPath: path) else { throw MeshExporterError.unreadable(path) }
            return Array(data)
        }
        guard (certificateFile == nil) == (keyFile == nil) else {
            throw MeshExporterError.badTLS("a client certificate needs its key, and a key its certificate")
        }
        return Material(
            trustBundle: try contents(trustBundleFile), certificateChain: try certificateFile.map(contents), key: try keyFile.map(contents))
    }
}

/// A transport rebuilt from the TLS files whenever they change: requests after a
/// change go over new connections with the new certificate. Files that cannot be
/// used leave the last good transport in place.
final class ReloadingTransport: ExportTransport {
    private let tls: ClientTLS
    private let make: @Sendable (ClientTLS.Material?) throws -> any ExportTransport
    private let problems = Mutex<String?>(nil)
    private struct Current {
        var transport: any ExportTransport
        var stamps: [FileStamp?]
        var checked: ContinuousClock.Instant
    }
    private let current: Mutex<Current>

    /// Why the files last failed to load, until a load succeeds.
    var problem: String? { problems.withLock { $0 } }

    init(tls: ClientTLS, make: @escaping @Sendable (ClientTLS.Material?) throws -> any ExportTransport) throws {
        self.tls = tls
        self.make = make
        let stamps = FileStamp.of(tls.files)
        current = Mutex(Current(transport: try make(try tls.read()), stamps: stamps, checked: .now))
    }

    private func reloadIfDue() {
        let now = ContinuousClock.now
        let due = current.withLock { current -> [FileStamp?]? in
            guard now - current.checked >= tls.reloadInterval else { return nil }
            current.checked = now
            let stamps = FileStamp.of(tls.files)
            return stamps == current.stamps ? nil : stamps
        }
        guard let stamps = due else { return }
        do {
            let fresh = try make(try tls.read())
            let old = current.withLock { current -> any ExportTransport in
                defer { current.transport = fresh; current.stamps = stamps }
                return current.transport
            }
            problems.withLock { $0 = nil }
            Task { await old.shutdown() }
        } catch {
            current.withLock { $0.stamps = stamps }
            problems.withLock { $0 = "TLS files changed but cannot be used, the previous ones stay in force: \(error)" }
        }
    }

    func send(_ body: [UInt8], signal: ExportSignal, timeout: Duration) async -> ExportOutcome {
        reloadIfDue()
        let transport = current.withLock { $0.transport }
        return await transport.send(body, signal: signal, timeout: timeout)
    }

    func shutdown() async {
        await current.withLock { $0.transport }.shutdown()
    }
}
