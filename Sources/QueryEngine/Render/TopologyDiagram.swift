import MeshCore

/// The service graph as a text diagram: Graphviz `dot` or Mermaid.
public enum TopologyDiagram {
    /// A `digraph`: one node per service (virtual ones dashed), one labelled edge per caller → callee.
    public static func dot(_ topology: TopologyJSON) -> String {
        var lines = ["digraph meshtrace {", "  rankdir=LR;", "  node [shape=box];"]
        for node in topology.nodes {
            lines.append("  \(quoted(node.name))\(node.virtual == true ? " [style=dashed]" : "");")
        }
        for edge in topology.edges {
            let colour = edge.errors > 0 ? ", color=red" : ""
            lines.append("  \(quoted(edge.source)) -> \(quoted(edge.target)) [label=\(quoted(label(edge)))\(colour)];")
        }
        lines.append("}")
        return lines.joined(separator: "\n") + "\n"
    }

    /// A Mermaid `flowchart LR`; node ids are `n0`, `n1`, … in name order.
    public static func mermaid(_ topology: TopologyJSON) -> String {
        var names = Set(topology.nodes.map(\.name))
        for edge in topology.edges { names.formUnion([edge.source, edge.target]) }
        let ordered = names.sorted()
        let ids = Dictionary(uniqueKeysWithValues: ordered.enumerated().map { ($1, "n\($0)") })
        let virtual = Set(topology.nodes.filter { $0.virtual == true }.map(\.name))
        var lines = ["flowchart LR"]
        for name in ordered {
            let text = name.replacingOccurrences(of: "\"", with: "#quot;")
            lines.append(virtual.contains(name) ? "  \(ids[name]!)([\"\(text)\"])" : "  \(ids[name]!)[\"\(text)\"]")
        }
        for edge in topology.edges {
            lines.append("  \(ids[edge.source]!) -->|\"\(label(edge))\"| \(ids[edge.target]!)")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private static func label(_ edge: TopologyJSON.Edge) -> String {
        "\(edge.requests) req, \(percentText(edge.error_rate)) err, p99 \(DurationText.format(nanoseconds: UInt64(edge.latency_ms_p99 * 1e6)))"
    }

    private static func quoted(_ text: String) -> String {
        "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }
}
