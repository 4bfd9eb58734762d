import GoldenSignals
import ArgumentParser
import Collector
import Foundation
import MeshCore
import QueryEngine
import SegmentStore

/// `meshtrace topology`: the service graph of a time window.
struct TopologyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "topology",
        abstract: "Show the service graph: every caller → callee edge with requests, errors and latency.")

    @OptionGroup var source: SourceOptions

    @Option(name: .long, help: "Look back this far: 30s, 15m, 1h, 2d.")
    var since = "1h"

    func validate() throws {
        guard DurationText.nanoseconds(since) != nil else { throw ValidationError("--since must be a duration like 15m, got \(since)") }
    }

    func run() async throws {
        do {
            let topology = try await fetch()
            switch source.output {
            case .json:
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
                print(String(decoding: try encoder.encode(topology), as: UTF8.self))
            case .table:
                print(TopologyTable.render(topology), terminator: "")
            }
        } catch let failure as CLIFailure {
            FileHandle.standardError.write(Data("meshtrace: \(failure.message)\n".utf8))
            throw failure.exitCode
        }
    }

    private func fetch() async throws -> TopologyJSON {
        if let dataDir = source.dataDir {
            guard case .success(let window) = TimeWindow.parse(since: since, start: nil, end: nil) else {
                throw CLIFailure.server("bad window")
            }
            var configuration = SpanStore.Configuration(dataDirectory: dataDir)
            configuration.readOnly = true
            var series = GoldenSignals.Configuration(directory: dataDir + "/series")
            series.readOnly = true
            do {
                // The series files, and what the WAL holds beyond them.
                let golden = try GoldenSignals(configuration: series)
                _ = try SpanStore(configuration: configuration, follower: golden)
                return TopologyJSON(golden.serviceGraph(in: window))
            } catch {
                throw CLIFailure.server("cannot read \(dataDir): \(error)")
            }
        }
        let query = since.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? since
        guard let bytes = try await QueryClient(baseURL: source.server).get("/api/v1/topology?since=\(query)", accept: "application/json") else {
            throw CLIFailure.server("\(source.server) has no topology API")
        }
        do {
            return try JSONDecoder().decode(TopologyJSON.self, from: Data(bytes))
        } catch {
            throw CLIFailure.server("the server's topology is not valid JSON: \(error)")
        }
    }
}
