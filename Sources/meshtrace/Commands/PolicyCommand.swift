import ArgumentParser
import Foundation
import MeshCore
import MeshSim
import OTLPWire
import Sampling

/// `meshtrace policy`: check a sampling policy file, or replay traffic through it.
struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Check a sampling policy file, or measure what it keeps.",
        subcommands: [Check.self, Test.self, Show.self])

    /// `meshtrace policy check FILE`
    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate a policy file and explain each policy.",
            discussion: "Exits 1 with the file, line, column and reason when the file is invalid.")

        @Argument(help: "The policy file (YAML).")
        var file: String

        func run() throws {
            let policy = try load(file)
            print("\(file): valid, \(policy.policies.count) \(policy.policies.count == 1 ? "policy" : "policies")")
            print(describe(policy))
        }
    }

    /// `meshtrace policy show`
    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the built-in default policy, as a file to start from.")

        func run() throws {
            print(PolicyFile.defaultYAML)
        }
    }

    /// `meshtrace policy test FILE`
    struct Test: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Replay traffic through a policy file and report what it keeps.",
            discussion: """
                Traffic is simulated by MeshSim (--sim, the default) or read from --corpus: OTLP \
                ExportTraceServiceRequest protobuf, or OTLP JSON with one request per line (what the \
                OpenTelemetry Collector's file exporter writes). slow_for_edge reads each edge's p99 \
                from the replayed traffic itself, as the live golden signals would. Reports, per \
                policy, the traces it kept and the bytes they take in a segment per 1,000 requests, \
                and the share of error and slow traces kept whole.
                """)

        @Argument(help: "The policy file (YAML).")
        var file: String

        @Flag(help: "Replay simulated mesh traffic (the default).")
        var sim = false

        @Option(help: "Replay this file instead: OTLP protobuf, or OTLP JSON lines.")
        var corpus: String?

        @Option(help: "Requests to simulate.")
        var requests = 20_000

        @Option(help: "Simulated requests per second.")
        var rate = 200

        @Option(help: "Share of simulated requests that fail somewhere, 0…1.")
        var errorRate = 0.01

        @Option(help: "Seed for MeshSim.")
        var seed: UInt64 = 42

        @Option(name: [.short, .long], help: "Output format: table or json.")
        var output: OutputFormat = .table

        func validate() throws {
            guard !(sim && corpus != nil) else { throw ValidationError("give --sim or --corpus, not both") }
            guard (1...2_000_000).contains(requests) else { throw ValidationError("--requests must be in 1…2000000") }
            guard (1...1_000_000).contains(rate) else { throw ValidationError("--rate must be in 1…1000000") }
            guard (0..<1).contains(errorRate) else { throw ValidationError("--error-rate must be in [0, 1)") }
        }

        func run() throws {
            let policy = try load(file)
            let traffic = try corpus.map(Self.read(corpus:)) ?? MeshSim.arrivals(requests: requests, rate: rate, requestErrorRate: errorRate, seed: seed)
            let report = try PolicyReplay.run(policy: policy, traffic: traffic)
            switch output {
            case .json:
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(PolicyTestJSON(report, policy: policy)), as: UTF8.self))
            case .table:
                print(Self.table(report, policy: policy, source: corpus ?? "MeshSim (seed \(seed), \(requests) requests at \(rate)/s)"))
            }
        }

        /// OTLP export requests from a file: one protobuf message, or JSON lines. Each
        /// request arrives when its last span ends.
        static func read(corpus path: String) throws -> [(batch: SpanBatch, at: UInt64)] {
            guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("\(path): cannot read the corpus") }
            var requests: [ExportTraceServiceRequest] = []
            if data.first == UInt8(ascii: "{") {
                for (number, line) in data.split(separator: UInt8(ascii: "\n")).enumerated() where !line.allSatisfy({ $0 == 32 || $0 == 13 }) {
                    do {
                        requests.append(try OTLPJSON.decode(ExportTraceServiceRequest.self, from: Array(line)))
                    } catch {
                        throw ValidationError("\(path):\(number + 1): not an OTLP JSON trace request: \(error)")
                    }
                }
            } else {
                do {
                    requests.append(try ExportTraceServiceRequest(serializedBytes: Array(data)))
                } catch {
                    throw ValidationError("\(path): not an OTLP protobuf trace request: \(error)")
                }
            }
            var traffic: [(batch: SpanBatch, at: UInt64)] = []
            for request in requests {
                var batch = SpanBatch()
                _ = batch.append(request)
                if !batch.isEmpty { traffic.append((batch, batch.endTimes.max() ?? 0)) }
            }
            return traffic.sorted { $0.at < $1.at }
        }

        static func table(_ report: PolicyReplay.Report, policy: PolicyFile, source: String) -> String {
            func share(_ part: Int, _ whole: Int) -> String { whole == 0 ? "-" : String(format: "%.2f%%", 100 * Double(part) / Double(whole)) }
            var lines = ["Replayed \(report.traces) traces (\(report.spans) spans) from \(source).", ""]
            let header = ["policy", "type", "kept traces", "keep rate", "bytes / 1,000 requests"]
            var rows: [[String]] = []
            for (policyEntry, counts) in zip(policy.policies, report.policies) {
                rows.append([counts.name, policyEntry.typeName, "\(counts.traces)", share(counts.traces, report.traces),
                             String(format: "%.0f", report.bytesPerThousand(spans: counts.spans))])
            }
            rows.append(["all", "", "\(report.keptTraces)", share(report.keptTraces, report.traces),
                         String(format: "%.0f", report.bytesPerThousand(spans: report.keptSpans))])
            let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max()! }
            for row in [header] + rows {
                let cells = row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }
                lines.append(cells.joined(separator: "  ").replacingOccurrences(of: " +$", with: "", options: .regularExpression))
            }
            lines.append("")
            lines.append("spans stored: \(report.keptSpans) of \(report.spans) (\(share(report.keptSpans, report.spans)))")
            lines.append("error traces kept whole: \(report.errorTracesKept) of \(report.errorTraces) (\(share(report.errorTracesKept, report.errorTraces)))")
            lines.append("slow traces kept whole (entry call over its edge's p99): \(report.slowTracesKept) of \(report.slowTraces) (\(share(report.slowTracesKept, report.slowTraces)))")
            lines.append("kept traces missing spans: \(report.partialTraces)")
            lines.append(String(format: "requests estimated from stored spans, by adjusted count: %.0f (true %d, %+.2f%%); error requests %.0f (true %d)",
                                report.estimatedTraces, report.traces, 100 * (report.estimatedTraces / Double(max(1, report.traces)) - 1),
                                report.estimatedErrorTraces, report.errorTraces))
            let statistics = report.statistics
            lines.append("decisions forced early: \(statistics.forcedByBytes) by bytes, \(statistics.forcedByTraces) by trace count, \(statistics.forcedBySize) by size; late spans: \(statistics.lateSpansKept) kept, \(statistics.lateSpansDropped) dropped")
            return lines.joined(separator: "\n")
        }
    }
}

private func load(_ file: String) throws -> PolicyFile {
    do {
        return try PolicyFile.load(path: file)
    } catch {
        FileHandle.standardError.write(Data("meshtrace policy: \(error.description)\n".utf8))
        throw ExitCode(1)
    }
}

/// The settings and policies of a policy file, explained.
private func describe(_ policy: PolicyFile) -> String {
    var lines: [String] = []
    func seconds(_ duration: Duration) -> String {
        DurationText.format(nanoseconds: UInt64(duration.components.seconds) * 1_000_000_000 + UInt64(duration.components.attoseconds / 1_000_000_000))
    }
    lines.append("  decision: \(seconds(policy.decisionWait)) after a trace's first span, or \(seconds(policy.rootWait)) after its root span")
    lines.append("  buffer: at most \(policy.maxBufferBytes >> 20) MiB and \(policy.maxTraces) traces (oldest decided first past either); a trace is decided at \(policy.maxSpansPerTrace) spans")
    lines.append("  late spans follow the last \(policy.decisionCacheSize) decisions")
    for policy in policy.policies {
        lines.append("  \(policy.name) (\(policy.typeName)): \(policy.explanation)")
    }
    lines.append("  A trace is kept when any policy keeps it and no drop policy matches; kept spans record in tracestate the probability they were kept with.")
    for warning in policy.ignored { lines.append("  note: \(warning)") }
    return lines.joined(separator: "\n")
}

/// `meshtrace policy test -o json`.
struct PolicyTestJSON: Encodable {
    struct PolicyCounts: Encodable {
        var name: String
        var type: String
        var kept_traces: Int
        var kept_spans: Int
        var bytes_per_1000_requests: Double
    }

    var traces: Int
    var spans: Int
    var kept_traces: Int
    var kept_spans: Int
    var stored_bytes: Int
    var bytes_per_1000_requests: Double
    var error_traces: Int
    var error_traces_kept: Int
    var slow_traces: Int
    var slow_traces_kept: Int
    var partial_traces: Int
    var estimated_traces: Double
    var estimated_error_traces: Double
    var policies: [PolicyCounts]

    init(_ report: PolicyReplay.Report, policy: PolicyFile) {
        traces = report.traces
        spans = report.spans
        kept_traces = report.keptTraces
        kept_spans = report.keptSpans
        stored_bytes = report.storedBytes
        bytes_per_1000_requests = report.bytesPerThousand(spans: report.keptSpans)
        error_traces = report.errorTraces
        error_traces_kept = report.errorTracesKept
        slow_traces = report.slowTraces
        slow_traces_kept = report.slowTracesKept
        partial_traces = report.partialTraces
        estimated_traces = report.estimatedTraces
        estimated_error_traces = report.estimatedErrorTraces
        policies = zip(policy.policies, report.policies).map { entry, counts in
            PolicyCounts(name: counts.name, type: entry.typeName, kept_traces: counts.traces, kept_spans: counts.spans,
                         bytes_per_1000_requests: report.bytesPerThousand(spans: counts.spans))
        }
    }
}
