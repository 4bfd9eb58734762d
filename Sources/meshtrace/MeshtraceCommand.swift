import ArgumentParser
import Foundation

/// `meshtrace`: ask the collector (or a data directory) about traces and topology.
@main
struct MeshtraceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meshtrace",
        abstract: "Ask meshtrace about the mesh: topology, golden signals, traces; and run its tools.",
        discussion: """
            Exit codes: 0 ok (also an empty result), 1 usage error, \
            2 server or store error, 3 not found.
            """,
        subcommands: [
            ServicesCommand.self, OperationsCommand.self, TopologyCommand.self, EdgesCommand.self, StatCommand.self,
            LatencyCommand.self, TraceCommand.self, SearchCommand.self, TopCommand.self, AuditCommand.self, CompareCommand.self,
            SegmentsCommand.self, PolicyCommand.self, DemoCommand.self, LoadgenCommand.self, CACommand.self,
        ])

    /// Runs the command, mapping usage errors to exit code 1 as documented
    /// (ArgumentParser's own default is 64).
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure {
                FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
                Foundation.exit(1)
            }
            exit(withError: error)
        }
    }
}

/// How results are printed.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table
    case json
}

/// Failures that map to documented exit codes.
enum CLIFailure: Error {
    /// The server refused a parameter (HTTP 400).
    case usage(String)
    case notFound(String)
    case server(String)

    var exitCode: ExitCode {
        switch self {
        case .usage: return ExitCode(1)
        case .notFound: return ExitCode(3)
        case .server: return ExitCode(2)
        }
    }

    var message: String {
        switch self {
        case .usage(let message), .notFound(let message), .server(let message): return message
        }
    }
}
