import ArgumentParser
import Foundation

/// `meshtrace`: ask the collector (or a data directory) about traces and topology.
@main
struct MeshtraceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meshtrace",
        abstract: "Query meshtrace: traces and the service topology.",
        discussion: """
            Exit codes: 0 ok (also an empty result), 1 usage error, \
            2 server or store error, 3 not found.
            """,
        subcommands: [TraceCommand.self, TopologyCommand.self, SegmentsCommand.self, DemoCommand.self, LoadgenCommand.self, PolicyCommand.self])

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

/// Where answers come from, shared by the query commands.
struct SourceOptions: ParsableArguments {
    @Option(name: .long, help: "Query API base URL.")
    var server = "http://127.0.0.1:16686"

    @Option(name: .long, help: "Read a data directory directly instead of asking a server.")
    var dataDir: String?

    @Option(name: [.short, .long], help: "Output format: table or json.")
    var output: OutputFormat = .table
}

/// Failures that map to documented exit codes.
enum CLIFailure: Error {
    case notFound(String)
    case server(String)

    var exitCode: ExitCode {
        switch self {
        case .notFound: return ExitCode(3)
        case .server: return ExitCode(2)
        }
    }

    var message: String {
        switch self {
        case .notFound(let message), .server(let message): return message
        }
    }
}
