import CCRC32C

/// CRC-32C (Castagnoli), the checksum of every WAL record, column chunk and footer.
/// It uses the CPU's CRC-32C instruction (SSE 4.2) when there is one, and tables
/// (slicing-by-8) otherwise.
public enum CRC32C {
    /// Whether this CPU computes CRC-32C in hardware.
    public static let hardwareAvailable = meshtrace_crc32c_hardware_available() != 0

    /// Eight 256-entry tables for slicing-by-8 over the reflected polynomial 0x82F63B78.
    private static let tables: [[UInt32]] = {
        var tables = [[UInt32]](repeating: [UInt32](repeating: 0, count: 256), count: 8)
        for byte in 0..<256 {
            var crc = UInt32(byte)
            for _ in 0..<8 { crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
            tables[0][byte] = crc
        }
        for byte in 0..<256 {
            var crc = tables[0][byte]
            for slice in 1..<8 {
                crc = tables[0][Int(crc & 0xFF)] ^ (crc >> 8)
                tables[slice][byte] = crc
            }
        }
        return tables
    }()

    /// The checksum of `bytes`, continuing from `crc` (the result of an earlier call) when given.
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        guard hardwareAvailable, let base = bytes.baseAddress else { return tableChecksum(bytes, continuing: crc) }
        return ~meshtrace_crc32c_update(~crc, base, bytes.count)
    }

    /// The checksum computed from tables alone, as on a CPU without the instruction.
    public static func tableChecksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        var value = ~crc
        var index = 0
        let count = bytes.count
        tables.withUnsafeBufferPointer { t in
            let t0 = t[0], t1 = t[1], t2 = t[2], t3 = t[3], t4 = t[4], t5 = t[5], t6 = t[6], t7 = t[7]
            while count - index >= 8 {
                let low = UInt32(bytes[index]) | UInt32(bytes[index + 1]) << 8
                    | UInt32(bytes[index + 2]) << 16 | UInt32(bytes[index + 3]) << 24
                let one = low ^ value
                value = t7[Int(one & 0xFF)] ^ t6[Int((one >> 8) & 0xFF)]
                    ^ t5[Int((one >> 16) & 0xFF)] ^ t4[Int(one >> 24)]
                    ^ t3[Int(bytes[index + 4])] ^ t2[Int(bytes[index + 5])]
                    ^ t1[Int(bytes[index + 6])] ^ t0[Int(bytes[index + 7])]
                index += 8
            }
            while index < count {
                value = t0[Int((value ^ UInt32(bytes[index])) & 0xFF)] ^ (value >> 8)
                index += 1
            }
        }
        return ~value
    }

    /// The checksum of `bytes`, continuing from `crc` when given.
    public static func checksum(_ bytes: [UInt8], continuing crc: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0, continuing: crc) }
    }

    /// The checksum of `bytes`, continuing from `crc` when given.
    public static func checksum(_ bytes: ArraySlice<UInt8>, continuing crc: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0, continuing: crc) }
    }
}
