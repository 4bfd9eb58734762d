import MeshCore

/// The value types an attribute column can hold.
enum AttributeType: UInt8, Sendable {
    /// The KeyValue has no value at all.
    case absent = 0
    case string = 1
    case bool = 2
    case int = 3
    case double = 4
    /// Anything else (bytes, arrays, key/value lists, an empty AnyValue), kept as its
    /// protobuf-encoded `AnyValue`.
    case other = 5
}

/// One attribute as scanned from protobuf bytes, without building messages.
struct ScannedAttribute {
    var key: ArraySlice<UInt8>
    var type: AttributeType
    /// For `.string`: the UTF-8 bytes; for `.other`: the whole AnyValue message.
    var bytes: ArraySlice<UInt8>
    /// For `.bool`, `.int`: the varint; for `.double`: the bit pattern.
    var scalar: UInt64
}

/// One attribute as scanned from protobuf bytes: offsets into the scanned buffer,
/// so a writer can scan every row into one reused array without allocating.
struct RawAttribute {
    var key: Range<Int>
    var type: AttributeType
    /// For `.string`: the UTF-8 bytes; for `.other`: the whole AnyValue message.
    var value: Range<Int>
    /// For `.bool`, `.int`: the varint; for `.double`: the bit pattern.
    var scalar: UInt64
}

/// Reads and writes OTLP `KeyValueList` protobuf bytes directly, so the segment
/// writer and reader move attributes in and out of columns without building
/// message objects.
enum AttributeCoding {
    /// Scans a protobuf `KeyValueList`. Returns nil when the bytes hold anything the
    /// columns cannot reproduce exactly (unknown fields, string-table indexes,
    /// malformed input); the caller then keeps the bytes as they are.
    static func scan(_ bytes: [UInt8]) -> [ScannedAttribute]? {
        var raw: [RawAttribute] = []
        let complete = bytes.withUnsafeBufferPointer { scan($0, into: &raw) }
        guard complete else { return nil }
        return raw.map { ScannedAttribute(key: bytes[$0.key], type: $0.type, bytes: bytes[$0.value], scalar: $0.scalar) }
    }

    /// Scans a protobuf `KeyValueList` into `attributes` (emptied first); false when
    /// the bytes hold anything the columns cannot reproduce exactly.
    static func scan(_ bytes: UnsafeBufferPointer<UInt8>, into attributes: inout [RawAttribute]) -> Bool {
        attributes.removeAll(keepingCapacity: true)
        var reader = WireReader(bytes, 0..<bytes.count)
        while !reader.isAtEnd {
            guard let (field, wireType) = reader.tag(), field == 1, wireType == 2,
                  let keyValue = reader.lengthDelimited(),
                  let attribute = scanKeyValue(bytes, keyValue)
            else { return false }
            attributes.append(attribute)
        }
        return true
    }

    @inline(__always)
    private static func scanKeyValue(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> RawAttribute? {
        var reader = WireReader(bytes, range)
        var key: Range<Int>?
        var value: Range<Int>?
        while !reader.isAtEnd {
            guard let (field, wireType) = reader.tag(), wireType == 2, let payload = reader.lengthDelimited() else { return nil }
            switch field {
            case 1 where key == nil: key = payload
            case 2 where value == nil: value = payload
            default: return nil
            }
        }
        // Canonical encoders write the key first; a different order would not round-trip byte for byte.
        guard let key, value.map({ key.lowerBound < $0.lowerBound }) ?? true else { return nil }
        guard let value else { return RawAttribute(key: key, type: .absent, value: 0..<0, scalar: 0) }

        var valueReader = WireReader(bytes, value)
        if valueReader.isAtEnd { return RawAttribute(key: key, type: .other, value: value, scalar: 0) }
        guard let (field, wireType) = valueReader.tag() else { return nil }
        var attribute: RawAttribute
        switch (field, wireType) {
        case (1, 2):
            guard let text = valueReader.lengthDelimited() else { return nil }
            attribute = RawAttribute(key: key, type: .string, value: text, scalar: 0)
        case (2, 0):
            guard let flag = valueReader.varint(), flag <= 1 else { return nil }
            attribute = RawAttribute(key: key, type: .bool, value: 0..<0, scalar: flag)
        case (3, 0):
            guard let number = valueReader.varint() else { return nil }
            attribute = RawAttribute(key: key, type: .int, value: 0..<0, scalar: number)
        case (4, 1):
            guard let bits = valueReader.fixed64() else { return nil }
            attribute = RawAttribute(key: key, type: .double, value: 0..<0, scalar: bits)
        case (5, 2), (6, 2), (7, 2):
            guard valueReader.lengthDelimited() != nil else { return nil }
            attribute = RawAttribute(key: key, type: .other, value: value, scalar: 0)
        default:
            return nil
        }
        // A second field in the AnyValue (a repeated oneof) would be lost.
        return valueReader.isAtEnd ? attribute : nil
    }

    /// Appends one attribute as a `KeyValueList` entry (field 1) to `output`.
    static func appendEntry(key: [UInt8], type: AttributeType, bytes: ArraySlice<UInt8>, scalar: UInt64, to output: inout [UInt8]) {
        var value: [UInt8] = []
        switch type {
        case .absent:
            break
        case .string:
            value = [0x0A]
            appendVarint(UInt64(bytes.count), to: &value)
            value += bytes
        case .bool:
            value = [0x10]
            appendVarint(scalar, to: &value)
        case .int:
            value = [0x18]
            appendVarint(scalar, to: &value)
        case .double:
            value = [0x21]
            for shift in stride(from: 0, to: 64, by: 8) { value.append(UInt8(truncatingIfNeeded: scalar >> UInt64(shift))) }
        case .other:
            value = Array(bytes)
        }
        var keyValue: [UInt8] = [0x0A]
        appendVarint(UInt64(key.count), to: &keyValue)
        keyValue += key
        if type != .absent {
            keyValue.append(0x12)
            appendVarint(UInt64(value.count), to: &keyValue)
            keyValue += value
        }
        output.append(0x0A)
        appendVarint(UInt64(keyValue.count), to: &output)
        output += keyValue
    }

    static func appendVarint(_ value: UInt64, to output: inout [UInt8]) {
        var remaining = value
        while remaining >= 0x80 {
            output.append(UInt8(truncatingIfNeeded: remaining) | 0x80)
            remaining >>= 7
        }
        output.append(UInt8(remaining))
    }
}

