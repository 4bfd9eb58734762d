import MeshCore

/// A trace drawn as an indented tree: one line per span, children under their parent.
public enum TraceTree {
    /// Renders the spans of one trace; spans whose parent is missing are drawn as roots.
    public static func render(_ batch: SpanBatch) -> String {
        guard !batch.isEmpty else { return "" }
        var children: [SpanID: [Int]] = [:]
        var roots: [Int] = []
        let present = Set(batch.spanIDs)
        for row in 0..<batch.count {
            let parent = batch.parentSpanIDs[row]
            if parent != .zero && present.contains(parent) && parent != batch.spanIDs[row] {
                children[parent, default: []].append(row)
            } else {
                roots.append(row)
            }
        }
        let traceStart = batch.startTimes.min() ?? 0
        let traceEnd = batch.endTimes.max() ?? traceStart
        let services = Set((0..<batch.count).map { batch.serviceName(at: $0) })
        let errors = batch.statusCodes.filter { $0 == .error }.count

        var lines: [[String]] = []
        var visited = Set<Int>()
        func visit(_ row: Int, depth: Int) {
            guard visited.insert(row).inserted else { return }
            let indent = String(repeating: "  ", count: depth)
            let code = batch.httpStatusCodes[row] > 0 ? String(batch.httpStatusCodes[row]) : ""
            let status = batch.statusCodes[row] == .error ? (code.isEmpty ? "ERROR" : code + " ERROR") : code
            lines.append([
                indent + batch.serviceName(at: row),
                batch.names[row],
                batch.kinds[row].name,
                "+" + DurationText.format(nanoseconds: batch.startTimes[row] &- traceStart),
                DurationText.format(nanoseconds: batch.duration(at: row)),
                status,
            ])
            let ordered = (children[batch.spanIDs[row]] ?? []).sorted { batch.startTimes[$0] < batch.startTimes[$1] }
            for child in ordered { visit(child, depth: depth + 1) }
        }
        for root in roots.sorted(by: { batch.startTimes[$0] < batch.startTimes[$1] }) { visit(root, depth: 0) }

        var output = "trace \(batch.traceIDs[0].hex): \(batch.count) spans, \(services.count) services, "
        output += "\(DurationText.format(nanoseconds: traceEnd &- traceStart)), \(errors) errors\n"
        output += Table.render(header: ["SERVICE", "OPERATION", "KIND", "START", "DURATION", "STATUS"], rows: lines)
        return output
    }
}

/// Left-aligned text tables with upper-case headers.
public enum Table {
    public static func render(header: [String], rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for row in rows {
            for (column, cell) in row.enumerated() { widths[column] = max(widths[column], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { column, cell in
                column == cells.count - 1 ? cell : cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
            }.joined(separator: "  ").trimmingTrailingSpaces() + "\n"
        }
        return line(header) + rows.map(line).joined()
    }
}

extension String {
    fileprivate func trimmingTrailingSpaces() -> String {
        var result = Substring(self)
        while result.last == " " { result = result.dropLast() }
        return String(result)
    }
}
