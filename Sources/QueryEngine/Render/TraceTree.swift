import MeshCore

/// A trace drawn as a waterfall: one line per span, children indented under their
/// parent, and a bar showing when each span ran within the trace.
public enum TraceTree {
    /// Renders the spans of one trace; spans whose parent is missing are drawn as roots.
    /// `barWidth` characters stand for the trace's whole duration (0: no bars).
    public static func render(_ batch: SpanBatch, barWidth: Int = 30, colour: Bool = false) -> String {
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

        let total = max(traceEnd &- traceStart, 1)
        func bar(_ row: Int) -> String {
            let offset = min(Int(Double(batch.startTimes[row] &- traceStart) / Double(total) * Double(barWidth)), barWidth - 1)
            let length = min(max(Int((Double(batch.duration(at: row)) / Double(total) * Double(barWidth)).rounded()), 1), barWidth - offset)
            return String(repeating: " ", count: offset) + String(repeating: "█", count: length)
        }

        var lines: [[String]] = []
        var styles: [[Table.Style]] = []
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
            ] + (barWidth > 0 ? [bar(row)] : []))
            let style: Table.Style = batch.statusCodes[row] == .error ? .red : .plain
            styles.append([.plain, .plain, .dim, .plain, .plain, style] + (barWidth > 0 ? [style == .red ? .red : .green] : []))
            let ordered = (children[batch.spanIDs[row]] ?? []).sorted { batch.startTimes[$0] < batch.startTimes[$1] }
            for child in ordered { visit(child, depth: depth + 1) }
        }
        for root in roots.sorted(by: { batch.startTimes[$0] < batch.startTimes[$1] }) { visit(root, depth: 0) }

        var output = "trace \(batch.traceIDs[0].hex): \(batch.count) spans, \(services.count) services, "
        output += "\(DurationText.format(nanoseconds: traceEnd &- traceStart)), \(errors) errors\n"
        output += Table.render(header: ["SERVICE", "OPERATION", "KIND", "START", "DURATION", "STATUS"] + (barWidth > 0 ? ["WATERFALL"] : []),
                               rows: lines, styles: styles, colour: colour)
        return output
    }
}

/// Left-aligned text tables with upper-case headers; cells may carry a colour,
/// written only when asked (on a terminal, without `NO_COLOR`).
public enum Table {
    /// A cell's colour, as ANSI SGR codes.
    public enum Style: String, Sendable {
        case plain = ""
        case red = "31"
        case green = "32"
        case yellow = "33"
        case dim = "2"
    }

    public static func render(header: [String], rows: [[String]], styles: [[Style]]? = nil, colour: Bool = false) -> String {
        var widths = header.map(\.count)
        for row in rows {
            for (column, cell) in row.enumerated() { widths[column] = max(widths[column], cell.count) }
        }
        func line(_ cells: [String], _ styles: [Style]?) -> String {
            cells.enumerated().map { column, cell in
                let padded = column == cells.count - 1 ? cell : cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
                guard colour, let style = styles?[column], style != .plain, !cell.isEmpty else { return padded }
                // Colour the text, not the padding, so columns stay aligned.
                return "\u{1B}[\(style.rawValue)m\(cell)\u{1B}[0m" + String(repeating: " ", count: padded.count - cell.count)
            }.joined(separator: "  ").trimmingTrailingSpaces() + "\n"
        }
        return line(header, nil) + rows.enumerated().map { index, row in line(row, styles?[index]) }.joined()
    }
}

extension String {
    fileprivate func trimmingTrailingSpaces() -> String {
        var result = Substring(self)
        while result.last == " " { result = result.dropLast() }
        return String(result)
    }
}
