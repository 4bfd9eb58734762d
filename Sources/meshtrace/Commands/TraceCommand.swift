import ArgumentParser
import Foundation
import MeshCore
import OTLPWire
import QueryEngine
import SegmentStore

/// `meshtrace trace <id>`: one trace, as a tree or as OTLP/JSON.
struct TraceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trace",
        abstract: "Show one trace: an indented tree (table) or OTLP/JSON (json).",
        discussion: "Exit code 3 when no span of the trace is stored.")

    @Argument(help: "Trace id: 32 hex digits (or 16 for a 64-bit id).")
    var id: String

    @OptionGroup var source: SourceOptions

    func validate() throws {
        guard TraceID(hex: id) != nil else { throw ValidationError("trace id must be 16 or 32 hex digits, got \(id)") }
    }

    func run() async throws {
        let traceID = TraceID(hex: id)!
        do {
            let data = try await fetch(traceID)
            switch source.output {
            case .json:
                print(String(decoding: try OTLPJSON.encode(data), as: UTF8.self))
            case .table:
                var batch = SpanBatch()
                batch.append(ExportTraceServiceRequest.with { $0.resourceSpans = data.resourceSpans })
                print(TraceTree.render(batch.sortedByTrace()), terminator: "")
            }
        } catch let failure as CLIFailure {
            FileHandle.standardError.write(Data("meshtrace: \(failure.message)\n".utf8))
            throw failure.exitCode
        }
    }

    private func fetch(_ traceID: TraceID) async throws -> TracesData {
        if let dataDir = source.dataDir {
            var configuration = SpanStore.Configuration(dataDirectory: dataDir)
            configuration.readOnly = true
            do {
                let store = try SpanStore(configuration: configuration)
                guard let batch = try QueryEngine(snapshot: store.snapshot()).trace(traceID) else {
                    throw CLIFailure.notFound("trace \(traceID.hex) not found in \(dataDir)")
                }
                return try batch.tracesData()
            } catch let failure as CLIFailure {
                throw failure
            } catch {
                throw CLIFailure.server("cannot read \(dataDir): \(error)")
            }
        }
        let client = QueryClient(baseURL: source.server)
        guard let bytes = try await client.get("/api/traces/\(traceID.hex)", accept: "application/protobuf") else {
            throw CLIFailure.notFound("trace \(traceID.hex) not found")
        }
        do {
            return try TracesData(serializedBytes: bytes)
        } catch {
            throw CLIFailure.server("the server's answer is not OTLP TracesData: \(error)")
        }
    }
}
