import Foundation

/// An attribute's value as read from protobuf bytes.
public struct AttributeValue: Sendable, Equatable {
    public var string: String?
    public var bool: Bool?
    public var int: Int64?
    public var double: Double?
    /// Set for values that are none of the above: bytes, arrays, key/value lists.
    public var other = false

    public init() {}

    /// The number it holds: an integer, or decimal text (Envoy's tags are text).
    public var integer: Int64? { int ?? string.flatMap { Int64($0) } }

    /// Whether an entry of the `KeyValue` list in `bytes` (a `KeyValueList`, or a
    /// `Resource`, whose attributes are field 1 too) has `key` and a value satisfying `test`.
    public static func find(_ key: [UInt8], in bytes: ArraySlice<UInt8>, _ test: (AttributeValue) -> Bool) -> Bool {
        bytes.withUnsafeBufferPointer { buffer in
            var reader = WireReader(buffer, 0..<buffer.count)
            while let (field, wireType) = reader.tag() {
                guard field == 1, wireType == 2 else {
                    if !reader.skip(wireType: wireType) { return false }
                    continue
                }
                guard let pair = reader.lengthDelimited() else { return false }
                var inner = WireReader(buffer, pair)
                var matches = false
                var valueRange: Range<Int>?
                while let (innerField, innerType) = inner.tag() {
                    if innerField == 1, innerType == 2, let range = inner.lengthDelimited() {
                        matches = range.count == key.count && key.withUnsafeBufferPointer { expected in
                            memcmp(expected.baseAddress!, buffer.baseAddress! + range.lowerBound, key.count) == 0
                        }
                        if !matches { break }
                    } else if innerField == 2, innerType == 2, let range = inner.lengthDelimited() {
                        valueRange = range
                    } else if !inner.skip(wireType: innerType) {
                        break
                    }
                }
                if matches, let valueRange, test(value(buffer, valueRange)) { return true }
            }
            return false
        }
    }

    /// Like `find(_:in:_:)`, over the resource attributes of a protobuf `ResourceSpans`
    /// (field 1, the `Resource`, whose attributes are its field 1).
    public static func find(_ key: [UInt8], inResourceSpans bytes: [UInt8], _ test: (AttributeValue) -> Bool) -> Bool {
        guard let resource = resource(inResourceSpans: bytes) else { return false }
        return find(key, in: bytes[resource], test)
    }

    /// The range of the `Resource` (field 1) in protobuf `ResourceSpans` bytes.
    public static func resource(inResourceSpans bytes: [UInt8]) -> Range<Int>? {
        bytes.withUnsafeBufferPointer { buffer in
            var reader = WireReader(buffer, 0..<buffer.count)
            while let (field, wireType) = reader.tag() {
                if field == 1 && wireType == 2 { return reader.lengthDelimited() }
                if !reader.skip(wireType: wireType) { return nil }
            }
            return nil
        }
    }

    /// Calls `body` with the key and value of each entry of the `KeyValue` list in
    /// `bytes` (a `KeyValueList` or a `Resource`), in order, until it returns false.
    public static func forEach(in bytes: ArraySlice<UInt8>, _ body: (String, AttributeValue) -> Bool) {
        bytes.withUnsafeBufferPointer { buffer in
            var reader = WireReader(buffer, 0..<buffer.count)
            while let (field, wireType) = reader.tag() {
                guard field == 1, wireType == 2 else {
                    if !reader.skip(wireType: wireType) { return }
                    continue
                }
                guard let pair = reader.lengthDelimited() else { return }
                var inner = WireReader(buffer, pair)
                var key = ""
                var value = AttributeValue()
                while let (innerField, innerType) = inner.tag() {
                    if innerField == 1, innerType == 2, let range = inner.lengthDelimited() {
                        key = String(decoding: UnsafeBufferPointer(rebasing: buffer[range]), as: UTF8.self)
                    } else if innerField == 2, innerType == 2, let range = inner.lengthDelimited() {
                        value = Self.value(buffer, range)
                    } else if !inner.skip(wireType: innerType) {
                        break
                    }
                }
                if !body(key, value) { return }
            }
        }
    }

    private static func value(_ buffer: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> AttributeValue {
        var result = AttributeValue()
        var reader = WireReader(buffer, range)
        while let (field, wireType) = reader.tag() {
            switch (field, wireType) {
            case (1, 2):
                if let text = reader.lengthDelimited() {
                    result.string = String(decoding: UnsafeBufferPointer(rebasing: buffer[text]), as: UTF8.self)
                }
            case (2, 0): result.bool = reader.varint().map { $0 != 0 }
            case (3, 0): result.int = reader.varint().map { Int64(bitPattern: $0) }
            case (4, 1): result.double = reader.fixed64().map { Double(bitPattern: $0) }
            default:
                result.other = true
                if !reader.skip(wireType: wireType) { return result }
            }
        }
        return result
    }
}
