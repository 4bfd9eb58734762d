import Dispatch
import Foundation
import GoldenSignals
import Logging
import MeshCore
import Sampling
import SegmentStore
import Synchronization

/// Keeps the tail sampler supplied: the policy file in force (reloaded on SIGHUP and
/// when the file changes, the last good one kept when a new one is invalid), and the
/// live edge latencies `slow_for_edge` compares with, from the golden signals.
final class SamplingControl: Sendable {
    let sampler: TailSampler
    /// The policy file's path; nil runs the built-in default policy.
    let path: String?
    private let golden: GoldenSignals
    private let logger: Logger
    /// Edges the golden signals saw in the hour before the collector started: not new.
    private let knownEdges: Set<EdgeName>

    private struct State {
        var modified: Date?
        var reloads = 0
        var rejections = 0
        var lastRejection: String?
        var edgesRefreshed: UInt64 = 0
    }

    private let state = Mutex(State())
    /// How often the live edge quantiles are read from the golden signals.
    static let edgeRefreshInterval: UInt64 = 10_000_000_000
    /// The window the live quantiles cover.
    static let edgeWindow: UInt64 = 300_000_000_000
    /// Fewer requests than this on an edge in the window give it no quantile yet.
    static let minimumRequests: UInt64 = 100

    /// Loads the policy; an invalid one is an error.
    init(source: SamplingSource, shards: Int, golden: GoldenSignals, logger: Logger) throws {
        let policy: PolicyFile
        switch source {
        case .builtIn:
            policy = PolicyFile.builtIn()
            path = nil
        case .file(let file):
            policy = try PolicyFile.load(path: file)
            path = file
        case .policy(let given):
            policy = given
            path = nil
        }
        self.golden = golden
        self.logger = logger
        sampler = TailSampler(policy: policy, shards: shards)
        let now = GoldenSignals.wallClock()
        knownEdges = Set(golden.serviceGraph(in: now.saturatingSubtract(3_600_000_000_000)...now).edges.map {
            EdgeName(caller: $0.client.service, callee: $0.server.service)
        })
        state.withLock { $0.modified = path.flatMap(Self.modificationDate) }
        for warning in policy.ignored { logger.notice("sampling policy setting ignored", metadata: ["setting": "\(warning)"]) }
        sampler.update(edges: edgeKnowledge(now: now))
        state.withLock { $0.edgesRefreshed = DispatchTime.now().uptimeNanoseconds }
    }

    /// Rereads the policy file; keeps the policy in force when the new one is invalid.
    func reload(reason: String) {
        guard let path else { return }
        let modified = Self.modificationDate(path)
        do {
            let policy = try PolicyFile.load(path: path)
            sampler.replace(policy: policy)
            state.withLock {
                $0.reloads += 1
                $0.modified = modified
            }
            logger.info("sampling policy reloaded", metadata: ["file": "\(path)", "reason": "\(reason)", "policies": "\(policy.policies.count)"])
        } catch {
            state.withLock {
                $0.rejections += 1
                $0.lastRejection = "\(error)"
                $0.modified = modified
            }
            logger.error("sampling policy rejected; the last good policy stays in force", metadata: ["error": "\(error)"])
        }
    }

    /// Run each tick: reload a changed policy file, refresh the edge quantiles when due.
    func tick() {
        if let path, let modified = Self.modificationDate(path), modified != state.withLock({ $0.modified }) {
            reload(reason: "file changed")
        }
        let now = DispatchTime.now().uptimeNanoseconds
        let due = state.withLock { state in
            guard now &- state.edgesRefreshed >= Self.edgeRefreshInterval else { return false }
            state.edgesRefreshed = now
            return true
        }
        if due { sampler.update(edges: edgeKnowledge(now: GoldenSignals.wallClock())) }
    }

    /// Each edge's live latency at the quantiles the policies ask for, read
    /// conservatively (never above the exact value), over the last five minutes.
    private func edgeKnowledge(now: UInt64) -> EdgeKnowledge {
        let quantiles = sampler.edgeQuantiles
        guard !quantiles.isEmpty else { return EdgeKnowledge(known: knownEdges) }
        var histograms = EdgeLatencyHistograms()
        for edge in golden.serviceGraph(in: now.saturatingSubtract(Self.edgeWindow)...now).edges {
            let name = EdgeName(caller: edge.client.service, callee: edge.server.service)
            histograms.server[name, default: ExponentialHistogram()].merge(edge.signals.serverLatency)
            histograms.client[name, default: ExponentialHistogram()].merge(edge.signals.latency)
        }
        var knowledge = histograms.knowledge(quantiles: quantiles, minimumRequests: Self.minimumRequests)
        knowledge.known = knownEdges
        return knowledge
    }

    /// The sampler's counters in the Prometheus text format.
    func prometheusText() -> String {
        let statistics = sampler.statistics
        let (reloads, rejections) = state.withLock { ($0.reloads, $0.rejections) }
        var text = ""
        func family(_ name: String, _ type: String, _ help: String, _ samples: [(String, Any)]) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (labels, value) in samples { text += "\(name)\(labels.isEmpty ? "" : "{\(labels)}") \(value)\n" }
        }
        family("meshtrace_sampling_spans_total", "counter", "Spans the sampler decided, by decision.", [
            ("decision=\"kept\"", statistics.spansKept), ("decision=\"dropped\"", statistics.spansDropped),
        ])
        family("meshtrace_sampling_traces_total", "counter", "Traces the sampler decided, by decision.", [
            ("decision=\"kept\"", statistics.tracesKept), ("decision=\"dropped\"", statistics.tracesDropped),
        ])
        family("meshtrace_sampling_decisions_total", "counter", "Trace decisions by what made them due; forced_* came early.", [
            ("reason=\"decision_wait\"", statistics.decidedAtWait), ("reason=\"root\"", statistics.decidedAtRoot),
            ("reason=\"forced_bytes\"", statistics.forcedByBytes), ("reason=\"forced_traces\"", statistics.forcedByTraces),
            ("reason=\"forced_size\"", statistics.forcedBySize), ("reason=\"shutdown\"", statistics.forcedAtShutdown),
        ])
        family("meshtrace_sampling_trace_id_decided_spans_total", "counter", "Spans decided by trace id alone, without waiting.", [
            ("", statistics.decidedByTraceID),
        ])
        family("meshtrace_sampling_late_spans_total", "counter", "Spans that arrived after their trace was decided and followed the decision.", [
            ("decision=\"kept\"", statistics.lateSpansKept), ("decision=\"dropped\"", statistics.lateSpansDropped),
        ])
        family("meshtrace_sampling_kept_traces_by_policy_total", "counter", "Kept traces, by the policy whose threshold kept them.",
               statistics.keptByPolicy.sorted { $0.key < $1.key }.map { ("policy=\"\(escape($0.key))\"", $0.value) })
        family("meshtrace_sampling_open_traces", "gauge", "Traces waiting for their decision.", [("", statistics.openTraces)])
        family("meshtrace_sampling_held_spans", "gauge", "Spans waiting for their trace's decision.", [("", statistics.heldSpans)])
        family("meshtrace_sampling_buffer_bytes", "gauge", "Bytes the tail buffer holds.", [("", statistics.heldBytes)])
        family("meshtrace_sampling_buffer_limit_bytes", "gauge", "The tail buffer's byte budget (max_buffer_bytes).", [
            ("", sampler.policy.maxBufferBytes),
        ])
        family("meshtrace_sampling_policy_reloads_total", "counter", "Policy file reloads, by result.", [
            ("result=\"ok\"", reloads), ("result=\"rejected\"", rejections),
        ])
        return text
    }

    private func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }

    private static func modificationDate(_ path: String) -> Date? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
    }

    /// Reloads the policy on SIGHUP for as long as the returned source lives.
    func watchHangup() -> any DispatchSourceSignal {
        signal(SIGHUP, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        source.setEventHandler { [self] in reload(reason: "SIGHUP") }
        source.resume()
        return source
    }
}

private extension UInt64 {
    func saturatingSubtract(_ other: UInt64) -> UInt64 { self > other ? self - other : 0 }
}
