import ArgumentParser
import Foundation
import MeshCore
import QueryEngine
import SegmentStore

/// `meshtrace segments list|inspect|verify|compact|retain`: what the store holds on disk.
struct SegmentsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "segments",
        abstract: "List, inspect, verify, compact and expire the segments of a data directory.",
        subcommands: [List.self, Inspect.self, Verify.self, Compact.self, Retain.self])

    struct Options: ParsableArguments {
        @Option(name: .long, help: "The data directory.")
        var dataDir = "./meshtrace-data"

        @Option(name: [.short, .long], help: "Output format: table or json.")
        var output: OutputFormat = .table

        var segmentDirectory: String { dataDir + "/segments" }

        func segmentPaths() throws -> [String] {
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: segmentDirectory) else {
                FileHandle.standardError.write(Data("meshtrace: no segments folder in \(dataDir)\n".utf8))
                throw ExitCode(2)
            }
            return names.filter { $0.hasSuffix(SegmentFile.fileExtension) }.sorted().map { segmentDirectory + "/" + $0 }
        }
    }

    struct SegmentRow: Encodable {
        var file: String
        var version: Int
        var spans: Int
        var traces: Int
        var blocks: Int
        var bytes: Int
        var bytes_per_span: Double
        var start: String
        var end: String
        var services: Int
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One line per segment: spans, size, bytes per span, time range.")

        @OptionGroup var options: Options

        func run() throws {
            var rows: [SegmentRow] = []
            var unreadable: [(String, String)] = []
            for path in try options.segmentPaths() {
                do {
                    let segment = try SegmentReader(path: path)
                    let footer = segment.footer
                    rows.append(SegmentRow(
                        file: (path as NSString).lastPathComponent, version: Int(footer.version), spans: footer.spanCount,
                        traces: footer.traceCount, blocks: max(1, footer.blocks.count), bytes: segment.fileSize,
                        bytes_per_span: footer.spanCount == 0 ? 0 : Double(segment.fileSize) / Double(footer.spanCount),
                        start: rfc3339(footer.minStartTime), end: rfc3339(footer.maxEndTime), services: footer.services.count))
                } catch {
                    unreadable.append(((path as NSString).lastPathComponent, "\(error)"))
                }
            }
            switch options.output {
            case .json:
                printJSON(rows)
            case .table:
                print(Table.render(
                    header: ["FILE", "VERSION", "SPANS", "TRACES", "BLOCKS", "BYTES", "B/SPAN", "START", "END", "SERVICES"],
                    rows: rows.map { [$0.file, String($0.version), String($0.spans), String($0.traces), String($0.blocks),
                                      String($0.bytes), String(format: "%.2f", $0.bytes_per_span), $0.start, $0.end, String($0.services)] }),
                      terminator: "")
                let spans = rows.reduce(0) { $0 + $1.spans }
                let bytes = rows.reduce(0) { $0 + $1.bytes }
                print("\(rows.count) segments, \(spans) spans, \(bytes) bytes" + (spans > 0 ? String(format: ", %.2f B/span", Double(bytes) / Double(spans)) : ""))
            }
            for (file, reason) in unreadable {
                FileHandle.standardError.write(Data("meshtrace: unreadable segment \(file): \(reason)\n".utf8))
            }
            if !unreadable.isEmpty { throw ExitCode(2) }
        }
    }

    struct ColumnRow: Encodable {
        var column: String
        var chunks: Int
        var compressed_bytes: Int
        var raw_bytes: Int
        var bytes_per_span: Double
        var ratio: Double
    }

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Per column: compressed and raw bytes, bytes per span, compression ratio.")

        @OptionGroup var options: Options

        @Argument(help: "Segment files (all segments of --data-dir when none are given).")
        var files: [String] = []

        func run() throws {
            var totals: [String: ColumnRow] = [:]
            var spans = 0
            for path in files.isEmpty ? try options.segmentPaths() : files {
                let segment: SegmentReader
                do {
                    segment = try SegmentReader(path: path)
                } catch {
                    FileHandle.standardError.write(Data("meshtrace: \(error)\n".utf8))
                    throw ExitCode(2)
                }
                spans += segment.footer.spanCount
                for chunk in segment.footer.columns {
                    // Block columns are named "<block>/<column>"; sum them over blocks.
                    let name = chunk.column.firstIndex(of: "/").map { index in
                        chunk.column[..<index].allSatisfy(\.isNumber) ? String(chunk.column[chunk.column.index(after: index)...]) : chunk.column
                    } ?? chunk.column
                    var row = totals[name] ?? ColumnRow(column: name, chunks: 0, compressed_bytes: 0, raw_bytes: 0, bytes_per_span: 0, ratio: 0)
                    row.chunks += 1
                    row.compressed_bytes += chunk.compressedSize
                    row.raw_bytes += chunk.rawSize
                    totals[name] = row
                }
            }
            let rows = totals.values.map { row -> ColumnRow in
                var row = row
                row.bytes_per_span = spans == 0 ? 0 : Double(row.compressed_bytes) / Double(spans)
                row.ratio = row.compressed_bytes == 0 ? 0 : Double(row.raw_bytes) / Double(row.compressed_bytes)
                return row
            }.sorted { $0.compressed_bytes > $1.compressed_bytes }
            switch options.output {
            case .json:
                printJSON(rows)
            case .table:
                print(Table.render(
                    header: ["COLUMN", "CHUNKS", "COMPRESSED", "RAW", "B/SPAN", "RATIO"],
                    rows: rows.map { [$0.column, String($0.chunks), String($0.compressed_bytes), String($0.raw_bytes),
                                      String(format: "%.3f", $0.bytes_per_span), String(format: "%.1f", $0.ratio)] }),
                      terminator: "")
                let compressed = rows.reduce(0) { $0 + $1.compressed_bytes }
                print("\(spans) spans, \(compressed) bytes in column chunks" + (spans > 0 ? String(format: ", %.2f B/span", Double(compressed) / Double(spans)) : ""))
            }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check every checksum and decode every segment.",
            discussion: "Exit code 2 when any segment is damaged; the report names the file and column.")

        @OptionGroup var options: Options

        func run() throws {
            var damaged = 0
            var results: [[String: String]] = []
            for path in try options.segmentPaths() {
                let file = (path as NSString).lastPathComponent
                do {
                    let segment = try SegmentReader(path: path)
                    for chunk in segment.footer.columns { _ = try segment.columnBytes(named: chunk.column) }
                    let batch = try segment.readBatch()
                    guard batch.count == segment.footer.spanCount else {
                        throw StoreError.corruptSegment(file: path, reason: "decoded \(batch.count) spans, footer says \(segment.footer.spanCount)")
                    }
                    results.append(["file": file, "status": "ok", "spans": String(batch.count)])
                } catch {
                    damaged += 1
                    results.append(["file": file, "status": "damaged", "reason": "\(error)"])
                }
            }
            switch options.output {
            case .json:
                printJSON(results)
            case .table:
                print(Table.render(header: ["FILE", "STATUS", "DETAIL"],
                                   rows: results.map { [$0["file"]!, $0["status"]!, $0["reason"] ?? "\($0["spans"]!) spans"] }),
                      terminator: "")
            }
            if damaged > 0 { throw ExitCode(2) }
        }
    }
}

extension SegmentsCommand {
    struct Compact: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Merge small segments into larger ones (the collector also does this on its own).",
            discussion: "Do not run it while a collector writes to the same directory.")

        @OptionGroup var options: Options

        @Option(help: "Merge segments with fewer spans than this.")
        var targetSpans = SpanStore.Configuration(dataDirectory: "").compactionTargetSpans

        @Option(help: "The most spans read into memory by one merge (about 400 bytes each).")
        var maxSpans = SpanStore.Configuration(dataDirectory: "").compactionMaxSpans

        func run() throws {
            var configuration = SpanStore.Configuration(dataDirectory: options.dataDir)
            configuration.compactionTargetSpans = targetSpans
            configuration.compactionMaxSpans = maxSpans
            do {
                let store = try SpanStore(configuration: configuration)
                var rounds = 0
                while true {
                    let merged = try store.compact()
                    if merged.isEmpty { break }
                    rounds += 1
                    print("merged \(merged.count) segments")
                }
                print("\(rounds) compactions; \(store.snapshot().segments.count) segments remain")
            } catch {
                FileHandle.standardError.write(Data("meshtrace: \(error)\n".utf8))
                throw ExitCode(2)
            }
        }
    }
}

extension SegmentsCommand {
    struct Retain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete the segments retention no longer keeps (the collector also does this on its own).",
            discussion: """
                Deletes segments whose newest span ended more than --older-than ago, then the oldest \
                segments while all of them together exceed --max-bytes. Do not run it while a collector \
                writes to the same directory.
                """)

        @OptionGroup var options: Options

        @Option(help: "Delete segments that ended longer ago than this (72h, 14d, …).")
        var olderThan: String?

        @Option(help: "Delete the oldest segments while all segments together exceed this many bytes.")
        var maxBytes: Int?

        func validate() throws {
            guard olderThan != nil || maxBytes != nil else { throw ValidationError("give --older-than, --max-bytes or both") }
            if let olderThan, DurationText.nanoseconds(olderThan) == nil {
                throw ValidationError("--older-than must be a duration like 72h or 14d, got \(olderThan)")
            }
            if let maxBytes, maxBytes < 0 { throw ValidationError("--max-bytes must not be negative") }
        }

        func run() throws {
            var configuration = SpanStore.Configuration(dataDirectory: options.dataDir)
            if let olderThan, let nanoseconds = DurationText.nanoseconds(olderThan) {
                configuration.retention = .nanoseconds(Int64(nanoseconds))
            }
            configuration.maxSegmentBytes = maxBytes
            do {
                let store = try SpanStore(configuration: configuration)
                let now = UInt64(Date().timeIntervalSince1970 * 1e9)
                let deleted = try store.enforceRetention(now: now)
                for path in deleted { print("deleted \((path as NSString).lastPathComponent)") }
                print("\(deleted.count) segments deleted; \(store.snapshot().segments.count) remain")
            } catch {
                FileHandle.standardError.write(Data("meshtrace: \(error)\n".utf8))
                throw ExitCode(2)
            }
        }
    }
}

func printJSON(_ value: some Encodable) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
    print(String(decoding: (try? encoder.encode(value)) ?? Data(), as: UTF8.self))
}
