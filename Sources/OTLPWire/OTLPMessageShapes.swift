/// What a decoded `AnyValue` holds, as far as the columns need to know.
enum AnyValueShape {
    case none
    case string(Range<Int>)
    case int(Int64)
    case other
}

/// A validated `KeyValue`: its key's bytes and its value's shape.
struct KeyValueShape {
    var key: Range<Int>
    var value: AnyValueShape
    /// The last `value` field's payload (an `AnyValue`), if there is one.
    var lastValue: Range<Int>?
}

/// Validation of the OTLP messages the store keeps as bytes (attributes, resources,
/// scopes, events, links): every string is UTF-8 and every nested message parses,
/// as swift-protobuf would require. A known field with an unexpected wire type is an
/// unknown field, as it is to swift-protobuf.
extension ProtobufCursor {
    @inline(__always)
    private func enter(_ range: Range<Int>, depth: Int) throws(OTLPDecodingError) -> ProtobufCursor {
        guard depth <= Self.depthLimit else { throw OTLPDecodingError(reason: .tooDeep, offset: range.lowerBound) }
        return ProtobufCursor(base, range)
    }

    /// `opentelemetry.proto.common.v1.KeyValue`.
    @inline(__always)
    func keyValue(_ range: Range<Int>, depth: Int) throws(OTLPDecodingError) -> KeyValueShape {
        if let shape = commonKeyValue(range, depth: depth) { return shape }
        var cursor = try enter(range, depth: depth)
        var shape = KeyValueShape(key: range.lowerBound..<range.lowerBound, value: .none)
        while !cursor.isAtEnd {
            let (field, wireType) = try cursor.tag()
            switch (field, wireType) {
            case (1, 2):
                let key = try cursor.lengthDelimited()
                try cursor.validateUTF8(key)
                shape.key = key
            case (2, 2):
                // A repeated `value` merges into the earlier one, as protobuf merges messages.
                let value = try cursor.lengthDelimited()
                try cursor.anyValue(value, depth: depth + 1, into: &shape.value)
                shape.lastValue = value
            default:
                try cursor.skip(field: field, wireType: wireType, depth: depth)
            }
        }
        return shape
    }

    /// The `KeyValue` almost every attribute is, read without the general loop: an
    /// ASCII key then a value holding an ASCII string or an integer, each field once,
    /// every length one byte. Nil for any other shape, which the general reading then
    /// takes.
    @inline(__always)
    private func commonKeyValue(_ range: Range<Int>, depth: Int) -> KeyValueShape? {
        let count = range.count
        guard count >= 4, depth &+ 1 <= Self.depthLimit else { return nil }
        let bytes = base + range.lowerBound
        let keyEnd = 2 &+ Int(bytes[1])
        guard bytes[0] == 0x0A, bytes[1] < 0x80, keyEnd &+ 2 <= count, bytes[keyEnd] == 0x12, bytes[keyEnd &+ 1] < 0x80,
              keyEnd &+ 2 &+ Int(bytes[keyEnd &+ 1]) == count
        else { return nil }
        let key = range.lowerBound &+ 2..<range.lowerBound &+ keyEnd
        let value = range.lowerBound &+ keyEnd &+ 2..<range.upperBound
        if value.isEmpty {
            return isASCII(bytes, keyEnd) ? KeyValueShape(key: key, value: .none, lastValue: value) : nil
        }
        let valueBytes = base + value.lowerBound
        switch valueBytes[0] {
        case 0x0A where value.count >= 2 && 2 &+ Int(valueBytes[1]) == value.count:
            // The key, the value's tag and length (under 0x80 when ASCII) and the text.
            guard isASCII(bytes, count) else { return nil }
            return KeyValueShape(key: key, value: .string(value.lowerBound &+ 2..<value.upperBound), lastValue: value)
        case 0x18:
            var integer = ProtobufCursor(base, value.lowerBound &+ 1..<value.upperBound)
            guard let number = try? integer.varint(), integer.isAtEnd, isASCII(bytes, keyEnd) else { return nil }
            return KeyValueShape(key: key, value: .int(Int64(bitPattern: number)), lastValue: value)
        default:
            return nil
        }
    }

    /// `opentelemetry.proto.common.v1.AnyValue`; the last member of the oneof seen decides the shape.
    func anyValue(_ range: Range<Int>, depth: Int, into shape: inout AnyValueShape) throws(OTLPDecodingError) {
        var cursor = try enter(range, depth: depth)
        while !cursor.isAtEnd {
            let (field, wireType) = try cursor.tag()
            switch (field, wireType) {
            case (1, 2):
                let text = try cursor.lengthDelimited()
                try cursor.validateUTF8(text)
                shape = .string(text)
            case (3, 0):
                shape = .int(Int64(bitPattern: try cursor.varint()))
            case (5, 2):
                try cursor.repeatedAnyValue(try cursor.lengthDelimited(), depth: depth + 1)
                shape = .other
            case (6, 2):
                try cursor.keyValueList(try cursor.lengthDelimited(), depth: depth + 1)
                shape = .other
            case (2, 0), (4, 1), (7, 2), (8, 0):
                try cursor.skip(field: field, wireType: wireType, depth: depth)
                shape = .other
            default:
                try cursor.skip(field: field, wireType: wireType, depth: depth)
            }
        }
    }

    /// `opentelemetry.proto.common.v1.ArrayValue`.
    func repeatedAnyValue(_ range: Range<Int>, depth: Int) throws(OTLPDecodingError) {
        var cursor = try enter(range, depth: depth)
        while !cursor.isAtEnd {
            let (field, wireType) = try cursor.tag()
            if field == 1 && wireType == 2 {
                var ignored = AnyValueShape.none
                try cursor.anyValue(try cursor.lengthDelimited(), depth: depth + 1, into: &ignored)
            } else {
                try cursor.skip(field: field, wireType: wireType, depth: depth)
            }
        }
    }

    /// `opentelemetry.proto.common.v1.KeyValueList`.
    func keyValueList(_ range: Range<Int>, depth: Int) throws(OTLPDecodingError) {
        try messageWithAttributes(range, depth: depth, attributeField: 1)
    }

    /// A message whose only fields needing more than a skip are strings and one
    /// repeated `KeyValue` field: `InstrumentationScope` (strings 1, 2; attributes 3),
    /// `Span.Event` (string 2; attributes 3), `Span.Link` (string 3; attributes 4).
    func messageWithAttributes(
        _ range: Range<Int>, depth: Int, attributeField: Int, stringFields: (Int, Int) = (0, 0)
    ) throws(OTLPDecodingError) {
        var cursor = try enter(range, depth: depth)
        while !cursor.isAtEnd {
            let (field, wireType) = try cursor.tag()
            if wireType == 2 && field == attributeField {
                _ = try cursor.keyValue(try cursor.lengthDelimited(), depth: depth + 1)
            } else if wireType == 2 && (field == stringFields.0 || field == stringFields.1) {
                try cursor.validateUTF8(try cursor.lengthDelimited())
            } else {
                try cursor.skip(field: field, wireType: wireType, depth: depth)
            }
        }
    }

    /// `opentelemetry.proto.common.v1.InstrumentationScope`.
    func instrumentationScope(_ range: Range<Int>, depth: Int) throws(OTLPDecodingError) {
        try messageWithAttributes(range, depth: depth, attributeField: 3, stringFields: (1, 2))
    }

    /// `opentelemetry.proto.trace.v1.Span.Event`.
    func spanEvent(_ range: Range<Int>, depth: Int) throws(OTLPDecodingError) {
        try messageWithAttributes(range, depth: depth, attributeField: 3, stringFields: (2, 0))
    }

    /// `opentelemetry.proto.trace.v1.Span.Link`.
    func spanLink(_ range: Range<Int>, depth: Int) throws(OTLPDecodingError) {
        try messageWithAttributes(range, depth: depth, attributeField: 4, stringFields: (3, 0))
    }

    /// `opentelemetry.proto.resource.v1.Resource`; reports the first attribute named
    /// `service.name` to `serviceName` (nil once it is found not to be a string).
    func resource(
        _ range: Range<Int>, depth: Int, serviceName: inout FirstAttribute<Range<Int>>
    ) throws(OTLPDecodingError) {
        var cursor = try enter(range, depth: depth)
        while !cursor.isAtEnd {
            let (field, wireType) = try cursor.tag()
            switch (field, wireType) {
            case (1, 2):
                let attribute = try cursor.keyValue(try cursor.lengthDelimited(), depth: depth + 1)
                if !serviceName.isDecided, cursor.equals(attribute.key, "service.name") {
                    if case .string(let value) = attribute.value { serviceName.decide(value) } else { serviceName.decide(nil) }
                }
            case (3, 2):
                // EntityRef: four string fields.
                var entity = try cursor.enter(try cursor.lengthDelimited(), depth: depth + 1)
                while !entity.isAtEnd {
                    let (entityField, entityWireType) = try entity.tag()
                    if entityWireType == 2 && (1...4).contains(entityField) {
                        try entity.validateUTF8(try entity.lengthDelimited())
                    } else {
                        try entity.skip(field: entityField, wireType: entityWireType, depth: depth + 1)
                    }
                }
            default:
                try cursor.skip(field: field, wireType: wireType, depth: depth)
            }
        }
    }
}

/// The value of the first attribute with a given key: undecided until one is seen,
/// then its value, or nil if that attribute's value has another type.
struct FirstAttribute<Value> {
    private(set) var isDecided = false
    private(set) var value: Value?

    mutating func decide(_ value: Value?) {
        isDecided = true
        self.value = value
    }
}
