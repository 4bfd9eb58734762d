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
        var position = 0
        while position < bytes.count {
            if let (attribute, end) = scanShortKeyValue(bytes, at: position) {
                attributes.append(attribute)
                position = end
                continue
            }
            var reader = WireReader(bytes, position..<bytes.count)
            guard let (field, wireType) = reader.tag(), field == 1, wireType == 2,
                  let keyValue = reader.lengthDelimited(),
                  let attribute = scanKeyValue(bytes, keyValue)
            else { return false }
            attributes.append(attribute)
            position = reader.position
        }
        return true
    }

    /// The common case of `scanKeyValue`, read with no reader: an entry under 128
    /// bytes with a key and a string, integer or boolean value, each length in one
    /// byte. Nil for anything else, which the general path then reads (and refuses
    /// if it must). Returns the attribute and where the entry ends.
    @inline(__always)
    private static func scanShortKeyValue(_ bytes: UnsafeBufferPointer<UInt8>, at start: Int) -> (RawAttribute, Int)? {
        // 0x0A L  0x0A kl key  0x12 vl value: the shortest is 6 bytes (an empty key and a bool).
        guard start + 6 <= bytes.count, bytes[start] == 0x0A, bytes[start + 2] == 0x0A else { return nil }
        let length = Int(bytes[start + 1])
        let keyLength = Int(bytes[start + 3])
        let end = start + 2 + length
        let keyStart = start + 4
        let valueTag = keyStart + keyLength
        guard length < 0x80, keyLength < 0x80, end <= bytes.count, valueTag + 3 <= end,
              bytes[valueTag] == 0x12
        else { return nil }
        let valueLength = Int(bytes[valueTag + 1])
        let valueStart = valueTag + 2
        guard valueLength < 0x80, valueStart + valueLength == end, valueLength >= 2 else { return nil }
        let key = keyStart..<valueTag
        switch bytes[valueStart] {
        case 0x0A:
            let textLength = Int(bytes[valueStart + 1])
            guard textLength + 2 == valueLength else { return nil }
            return (RawAttribute(key: key, type: .string, value: valueStart + 2..<end, scalar: 0), end)
        case 0x18:
            // A varint to the entry's end: every byte but the last has its high bit set.
            var number: UInt64 = 0
            var shift: UInt64 = 0
            var index = valueStart + 1
            guard end - index <= 9 else { return nil }
            while index < end {
                let byte = bytes[index]
                guard (byte & 0x80 != 0) == (index + 1 < end) else { return nil }
                number |= UInt64(byte & 0x7F) << shift
                shift += 7
                index += 1
            }
            return (RawAttribute(key: key, type: .int, value: 0..<0, scalar: number), end)
        case 0x10:
            guard valueLength == 2, bytes[valueStart + 1] <= 1 else { return nil }
            return (RawAttribute(key: key, type: .bool, value: 0..<0, scalar: UInt64(bytes[valueStart + 1])), end)
        default:
            return nil
        }
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

