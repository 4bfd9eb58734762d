import Foundation
import SwiftProtobuf

/// OTLP's JSON encoding: proto3 JSON with lowerCamelCase names, enums as integers,
/// and trace and span ids as hex strings rather than base64.
public enum OTLPJSON {
    /// Keys whose values OTLP/JSON writes as hex where proto3 JSON would use base64.
    private static let idKeys: Set<String> = ["traceId", "spanId", "parentSpanId"]

    /// Why a body is not OTLP/JSON.
    public enum DecodingError: Error, CustomStringConvertible {
        case notJSON(String)
        case notOTLP(String)

        public var description: String {
            switch self {
            case .notJSON(let reason): return "body is not valid JSON: \(reason)"
            case .notOTLP(let reason): return "JSON is not an OTLP message: \(reason)"
            }
        }
    }

    /// Decodes an OTLP/JSON message. Unknown fields are ignored, as the specification requires.
    public static func decode<M: SwiftProtobuf.Message>(_ type: M.Type, from bytes: [UInt8]) throws(DecodingError) -> M {
        let tree: Any
        do {
            tree = try JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])
        } catch {
            throw .notJSON(error.localizedDescription)
        }
        guard tree is [String: Any] else {
            throw .notOTLP("the top level must be an object")
        }
        let canonical: Data
        do {
            canonical = try JSONSerialization.data(withJSONObject: rewriteIDs(tree, hexToBase64: true))
        } catch {
            throw .notJSON(error.localizedDescription)
        }
        var options = JSONDecodingOptions()
        options.ignoreUnknownFields = true
        do {
            return try M(jsonUTF8Data: canonical, options: options)
        } catch {
            throw .notOTLP("\(error)")
        }
    }

    /// Encodes a message as OTLP/JSON.
    public static func encode(_ message: some SwiftProtobuf.Message) throws -> Data {
        var options = JSONEncodingOptions()
        options.alwaysPrintEnumsAsInts = true
        let proto3 = try message.jsonUTF8Data(options: options)
        let tree = try JSONSerialization.jsonObject(with: proto3)
        return try JSONSerialization.data(withJSONObject: rewriteIDs(tree, hexToBase64: false), options: [.sortedKeys])
    }

    private static func rewriteIDs(_ node: Any, hexToBase64: Bool) -> Any {
        if let object = node as? [String: Any] {
            var result = [String: Any](minimumCapacity: object.count)
            for (key, value) in object {
                if idKeys.contains(key), let text = value as? String {
                    result[key] = hexToBase64 ? base64(fromHex: text) ?? text : hex(fromBase64: text) ?? text
                } else {
                    result[key] = rewriteIDs(value, hexToBase64: hexToBase64)
                }
            }
            return result
        }
        if let array = node as? [Any] {
            return array.map { rewriteIDs($0, hexToBase64: hexToBase64) }
        }
        return node
    }

    private static func base64(fromHex text: String) -> String? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var bytes = [UInt8]()
        bytes.reserveCapacity(digits.count / 2)
        var index = 0
        while index < digits.count {
            guard let high = nibble(digits[index]), let low = nibble(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return Data(bytes).base64EncodedString()
    }

    private static func hex(fromBase64 text: String) -> String? {
        guard let data = Data(base64Encoded: text) else { return nil }
        return data.map { String(format: "%02x", $0) }.joined()
    }

    private static func nibble(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return digit - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return digit - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
