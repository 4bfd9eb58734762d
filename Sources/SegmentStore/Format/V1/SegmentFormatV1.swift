import Compression
import MeshCore

/// Version 1 of the span segment file. storage/FORMAT.md is the specification;
/// this file and `SegmentReader` implement it.
///
/// ```
/// "MTSEG\0\0\1"                      8-byte header magic
/// column chunk × N                   each one zstd frame
/// footer                             see `SegmentFooter.encode`
/// footer length u32 | CRC32C(footer) u32 | "MTSEGEND"
/// ```
public enum SegmentFormatV1 {
    static let headerMagic: [UInt8] = Array("MTSEG".utf8) + [0, 0, 1]
    static let trailerMagic: [UInt8] = Array("MTSEGEND".utf8)
    static let trailerSize = 16
    static let version: UInt16 = 1
    /// File name suffix of sealed segments.
    public static let fileExtension = ".mts"

    /// The columns of a v1 segment, in file order.
    enum Column: String, CaseIterable, Sendable {
        /// 16 bytes per row, big-endian; rows are sorted by this column.
        case traceID = "trace_id"
        /// 8 bytes per row, big-endian.
        case spanID = "span_id"
        /// 8 bytes per row, big-endian; zero for a root span.
        case parentSpanID = "parent_span_id"
        /// Varint count, that many strings, then one varint index per row.
        case name = "name"
        /// One byte per row: OTLP SpanKind.
        case kind = "kind"
        /// Zig-zag varint per row: start time minus the previous row's, in nanoseconds.
        case startTime = "start_time"
        /// Zig-zag varint per row: end time minus start time, in nanoseconds.
        case duration = "duration"
        /// One byte per row: OTLP StatusCode.
        case statusCode = "status_code"
        /// Length-prefixed UTF-8 per row.
        case statusMessage = "status_message"
        /// Varint per row: `http.response.status_code`, 0 when absent.
        case httpStatusCode = "http_status_code"
        /// Varint count, then per resource a service name and a protobuf `ResourceSpans`
        /// (both length-prefixed); then one varint resource index per row.
        case resource = "resource"
        /// Varint count, then per scope a protobuf `ScopeSpans` (length-prefixed);
        /// then one varint scope index per row.
        case scope = "scope"
        /// Length-prefixed protobuf `KeyValueList` per row.
        case attributes = "attributes"
        /// Length-prefixed protobuf `Span` per row holding trace state, flags, events,
        /// links and dropped counts.
        case extras = "extras"
    }
}
