import ArgumentParser
import Foundation
import GoldenSignals
import MeshCore
import QueryEngine
import SegmentStore

/// How query commands print: a table (`wide` adds columns), JSON, or for the topology a diagram.
enum QueryOutput: String, ExpressibleByArgument, CaseIterable {
    case table, wide, json, dot, mermaid
}

/// Options every query command shares: where answers come from, the window, the
/// namespace and the output.
struct QueryOptions: ParsableArguments {
    @Option(name: .long, help: "Query API base URL.")
    var server = "http://127.0.0.1:16686"

    @Option(name: .long, help: "Read a data directory directly instead of asking a server.")
    var dataDir: String?

    @Option(name: [.short, .long], help: "Output: table, wide or json.")
    var output: QueryOutput = .table

    @Option(name: .long, help: "Look back this far (15m, 1h, 2d) or from this RFC 3339 time.")
    var since: String?

    @Option(name: .long, help: "Up to this long ago (5m) or this RFC 3339 time; default now.")
    var until: String?

    @Option(name: [.short, .customLong("namespace")], help: "Only workloads in this namespace.")
    var namespace: String?

    func validate() throws {
        for (name, value) in [("since", since), ("until", until)] {
            if let value, DurationText.nanoseconds(value) == nil, TimeWindow.rfc3339Nanoseconds(value) == nil {
                throw ValidationError("--\(name) must be a duration like 15m or an RFC 3339 time, got \(value)")
            }
        }
    }

    /// Whether to colour tables: only on a terminal, and never with `NO_COLOR` set.
    var colour: Bool {
        isatty(STDOUT_FILENO) != 0 && ProcessInfo.processInfo.environment["NO_COLOR"].map(\.isEmpty) ?? true
    }

    /// The window and namespace as query parameters; `defaultSince` when `--since` is not given.
    func parameters(defaultSince: String) -> QueryParameters {
        var parameters = QueryParameters()
        let since = self.since ?? defaultSince
        if DurationText.nanoseconds(since) != nil { parameters.set("since", since) } else { parameters.set("start", since) }
        parameters.set("until", until)
        parameters.set("namespace", namespace)
        return parameters
    }

    /// GETs `path` from the server, or answers it from `--data-dir`; a 404 is `CLIFailure.notFound`.
    func fetch(_ path: String, _ parameters: QueryParameters, accept: String = "application/json") async throws -> [UInt8] {
        let response: QueryService.Response
        if let dataDir {
            response = try LocalStore.service(dataDir).answer(path: path, parameters: parameters, accept: accept)
        } else {
            let query = parameters.encoded
            response = try await QueryClient(baseURL: server).fetch(path + (query.isEmpty ? "" : "?" + query), accept: accept)
        }
        switch response.status {
        case 200: return response.body
        case 400: throw CLIFailure.usage(Self.message(response))
        case 404: throw CLIFailure.notFound(Self.message(response))
        default: throw CLIFailure.server("\(path) answered \(response.status): \(Self.message(response))")
        }
    }

    /// Fetches and decodes a JSON answer.
    func fetch<T: Decodable>(_ type: T.Type, _ path: String, _ parameters: QueryParameters) async throws -> T {
        let bytes = try await fetch(path, parameters)
        do {
            return try JSONDecoder().decode(T.self, from: Data(bytes))
        } catch {
            throw CLIFailure.server("the answer to \(path) is not what was expected: \(error)")
        }
    }

    private static func message(_ response: QueryService.Response) -> String {
        if let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any] {
            if let message = object["error"] as? String { return message }
            if let errors = object["errors"] as? [[String: Any]], let message = errors.first?["msg"] as? String { return message }
        }
        return String(response.text.prefix(500))
    }

    /// Prints `value` as indented JSON.
    func printJSON(_ value: some Encodable) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        print(String(decoding: try encoder.encode(value), as: UTF8.self))
    }
}

/// A data directory opened read-only: its segments, its WAL, and its series.
enum LocalStore {
    static func service(_ dataDir: String) throws -> QueryService {
        var configuration = SpanStore.Configuration(dataDirectory: dataDir)
        configuration.readOnly = true
        var series = GoldenSignals.Configuration(directory: dataDir + "/series")
        series.readOnly = true
        do {
            // The series files, and what the WAL holds beyond them.
            let golden = try GoldenSignals(configuration: series)
            let store = try SpanStore(configuration: configuration, follower: golden)
            return QueryService(engine: { QueryEngine(snapshot: store.snapshot()) }, golden: golden)
        } catch {
            throw CLIFailure.server("cannot read \(dataDir): \(error)")
        }
    }
}

/// Runs a command's body, printing a failure and exiting with its documented code.
func reportingFailures(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let failure as CLIFailure {
        FileHandle.standardError.write(Data("meshtrace: \(failure.message)\n".utf8))
        throw failure.exitCode
    }
}
