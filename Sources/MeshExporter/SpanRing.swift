#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CCacheHints
import MeshCore
import Synchronization

/// The fixed-size part of a recorded span; its strings follow in the slot's bytes.
struct SlotHeader {
    var traceHigh: UInt64 = 0
    var traceLow: UInt64 = 0
    var spanID: UInt64 = 0
    var parentSpanID: UInt64 = 0
    var startTime: UInt64 = 0
    var endTime: UInt64 = 0
    var requestBytes: UInt64 = 0
    var responseBytes: UInt64 = 0
    var httpStatus: UInt16 = 0
    var kind: UInt8 = 0
    /// `SlotHeader.failedBit` and the others below.
    var bits: UInt8 = 0

    static let failedBit: UInt8 = 1
    static let exportBit: UInt8 = 2
    static let securityKnownBit: UInt8 = 4
    static let mutualTLSBit: UInt8 = 8
    static let truncatedBit: UInt8 = 16

    /// Set in a string's length: the field holds a label (its index in the low bits), not bytes.
    static let labelFlag: UInt16 = 0x8000
}

/// The strings of a recorded span, in the order their lengths open the slot's bytes.
@_spi(CABI) public enum SlotString: Int, CaseIterable, Sendable {
    case name, method, path, peerService, upstreamCluster, peerAddress, responseFlags, requestID, userAgent, traceState
}

/// Spans recorded and not yet exported: a fixed number of fixed-size slots, split
/// into shards by trace id, each shard a ring behind its own lock. Nothing is
/// allocated after `init`; a span that finds its shard full is dropped and counted.
///
/// A slot is one run of bytes: the header, the lengths of the strings, the strings.
/// Recording a span writes a few adjacent cache lines of it, which the span before
/// it in the same shard asked the CPU to fetch (`prefetchSlot`).
final class SpanRing: @unchecked Sendable {
    /// Bytes of strings a slot holds, after the lengths; longer strings are cut.
    let stringBytes: Int
    let slotsPerShard: Int
    /// Bytes from one slot to the next.
    private let slotSize: Int
    /// How much of a slot `prefetchSlot` covers: the header, the lengths and the
    /// strings of a typical proxy span (about 200 bytes of them), not the whole slot.
    private let prefetchedBytes: Int
    private let shardMask: UInt64
    private let shards: [Shard]
    /// The same shards, unretained: recording reaches its shard without a retain and a
    /// release (`shards` keeps them alive).
    private let shardRefs: UnsafeMutablePointer<Unmanaged<Shard>>

    private final class Shard: @unchecked Sendable {
        struct Indices {
            var head = 0
            var count = 0
            /// Spans taken in, taken in without the export bit, and turned away (full).
            var recorded: UInt64 = 0
            var unexported: UInt64 = 0
            var dropped: UInt64 = 0
        }

        /// The slots, `slotSize` bytes each.
        let bytes: UnsafeMutableRawPointer
        /// Guarded by `lock()`, which is the exclusivity the runtime would otherwise check on every access.
        @exclusivity(unchecked) var indices = Indices()
        private let held = Atomic<Bool>(false)

        /// A spin lock: the code it guards copies a few hundred bytes, and taking it
        /// is one atomic exchange when uncontended. Recording writes its span's strings
        /// between `lock()` and `unlock()` directly, with no closure that would copy
        /// the span (and retain its ten strings) on the way.
        @inline(__always)
        func lock() {
            while !held.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {
                var spins = 0
                while held.load(ordering: .relaxed) {
                    spins += 1
                    // The holder may have been preempted: let it run.
                    if spins & 63 == 0 { sched_yield() }
                }
            }
        }

        @inline(__always)
        func unlock() {
            held.store(false, ordering: .releasing)
        }

        @inline(__always)
        func withLock<Result>(_ body: (inout Indices) -> Result) -> Result {
            lock()
            defer { unlock() }
            return body(&indices)
        }

        /// Bytes mapped for the slots; 0 when they came from the heap instead.
        private let mappedBytes: Int

        /// The slots are anonymous pages mapped from the kernel, each taking memory only
        /// once it is first written. An empty shard starts again at its first slot, so a
        /// proxy whose exporter keeps up holds the pages of a few slots, not its whole
        /// bound; a page's first write costs one page fault, once in the process's life.
        init(slots: Int, slotSize: Int) {
            let byteCount = slots * slotSize
            if let mapped = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), mapped != MAP_FAILED {
                bytes = mapped
                mappedBytes = byteCount
            } else {
                bytes = .allocate(byteCount: byteCount, alignment: MemoryLayout<SlotHeader>.alignment)
                mappedBytes = 0
            }
        }

        deinit {
            if mappedBytes > 0 { munmap(bytes, mappedBytes) } else { bytes.deallocate() }
        }
    }

    /// Bytes one slot takes: its header, the string lengths and the strings, rounded up
    /// so that the next slot's header is aligned.
    static func slotSize(stringBytes: Int) -> Int {
        let alignment = MemoryLayout<SlotHeader>.alignment
        return (MemoryLayout<SlotHeader>.stride + lengthBytes + stringBytes + alignment - 1) / alignment * alignment
    }

    /// Where a slot's string lengths start, after its header.
    private static let lengthBytes = SlotString.allCases.count * 2

    /// A ring of about `byteBudget` bytes (at least one slot per shard).
    init(byteBudget: Int, stringBytes: Int = 384, shards requested: Int) {
        self.stringBytes = stringBytes
        var count = 1
        while count < min(max(requested, 1), 64) { count <<= 1 }
        shardMask = UInt64(count - 1)
        let slots = max(1, byteBudget / Self.slotSize(stringBytes: stringBytes) / count)
        slotsPerShard = slots
        slotSize = Self.slotSize(stringBytes: stringBytes)
        prefetchedBytes = min(slotSize, MemoryLayout<SlotHeader>.stride + Self.lengthBytes + 224)
        shards = (0..<count).map { [slotSize] _ in Shard(slots: slots, slotSize: slotSize) }
        shardRefs = .allocate(capacity: count)
        shardRefs.initialize(from: shards.map { Unmanaged.passUnretained($0) }, count: count)
    }

    deinit {
        shardRefs.deallocate()
    }

    var capacity: Int { slotsPerShard * shards.count }

    /// Copies `span` into a free slot; false when its shard is full.
    func push(_ span: borrowing RequestSpan, bits: UInt8) -> Bool {
        let header = SlotHeader(
            traceHigh: span.traceID.high, traceLow: span.traceID.low, spanID: span.spanID.value,
            parentSpanID: span.parentSpanID.value, startTime: span.startTime, endTime: span.endTime,
            requestBytes: span.requestBytes, responseBytes: span.responseBytes, httpStatus: span.httpStatus,
            kind: span.kind.rawValue, bits: bits | Self.bits(failed: span.failed, mutualTLS: span.mutualTLS))
        return shardRef(header)._withUnsafeGuaranteedRef { shard in
            shard.lock()
            defer { shard.unlock() }
            guard var writer = claim(shard) else { return false }
            let labels = span.labels
            writer.put(span.name, or: labels.name)
            writer.put(span.method, or: labels.method)
            writer.put(span.path)
            writer.put(span.peerService, or: labels.peerService)
            writer.put(span.upstreamCluster, or: labels.upstreamCluster)
            writer.put(span.peerAddress)
            writer.put(span.responseFlags, or: labels.responseFlags)
            writer.put(span.requestID)
            writer.put(span.userAgent, or: labels.userAgent)
            writer.put(span.traceState)
            commit(header, writer, in: shard)
            return true
        }
    }

    /// Copies a span whose strings are C strings (`strings` gives each, in `SlotString`
    /// order; nil for none): a string at a label's text in `labels` is recorded as the label.
    func push(_ header: SlotHeader, labels: LabelTable, strings: (SlotString) -> UnsafePointer<CChar>?) -> Bool {
        return shardRef(header)._withUnsafeGuaranteedRef { shard in
            shard.lock()
            defer { shard.unlock() }
            guard var writer = claim(shard) else { return false }
            for field in SlotString.allCases {
                guard let text = strings(field) else {
                    writer.put(UnsafeRawBufferPointer(start: nil, count: 0))
                    continue
                }
                if let label = labels.label(at: text) {
                    writer.put(label)
                } else {
                    writer.put(UnsafeRawBufferPointer(start: text, count: strlen(text)))
                }
            }
            commit(header, writer, in: shard)
            return true
        }
    }

    static func bits(failed: Bool, mutualTLS: Bool?) -> UInt8 {
        var bits: UInt8 = failed ? SlotHeader.failedBit : 0
        if let mutualTLS { bits |= SlotHeader.securityKnownBit | (mutualTLS ? SlotHeader.mutualTLSBit : 0) }
        return bits
    }

    /// Writes a slot's strings, in `SlotString` order, cutting what does not fit.
    struct StringWriter: ~Copyable {
        let lengths: UnsafeMutablePointer<UInt16>
        var cursor: UnsafeMutableRawPointer
        var room: Int
        /// The slot written.
        let slot: Int
        var field = 0
        var truncated = false

        @inline(__always)
        mutating func put(_ bytes: UnsafeRawBufferPointer) {
            let written = min(bytes.count, room)
            if written > 0 { cursor.copyMemory(from: bytes.baseAddress!, byteCount: written) }
            finish(written: written, of: bytes.count)
        }

        @inline(__always)
        mutating func put(_ string: borrowing String) {
            // Native strings, small or not, are contiguous: one copy, no allocation, no retain.
            let copied: Void? = string.utf8.withContiguousStorageIfAvailable { put(UnsafeRawBufferPointer($0)) }
            if copied == nil { putByteByByte(string) }
        }

        /// `label` when there is one (its handle, not its bytes), `string` otherwise.
        @inline(__always)
        mutating func put(_ string: borrowing String, or label: SpanLabel?) {
            if let label { put(label) } else { put(string) }
        }

        /// A label's handle in place of its bytes.
        @inline(__always)
        mutating func put(_ label: SpanLabel) {
            lengths[field] = SlotHeader.labelFlag | label.index
            field += 1
        }

        /// A string without contiguous UTF-8 (bridged from elsewhere): out of line, so
        /// that `put` stays small enough to inline at every field.
        @inline(never)
        mutating func putByteByByte(_ string: borrowing String) {
            var written = 0
            var count = 0
            for byte in string.utf8 {
                count += 1
                if written < room {
                    cursor.storeBytes(of: byte, toByteOffset: written, as: UInt8.self)
                    written += 1
                }
            }
            finish(written: written, of: count)
        }

        @inline(__always)
        mutating func finish(written: Int, of count: Int) {
            if written < count { truncated = true }
            lengths[field] = UInt16(written)
            field += 1
            cursor += written
            room -= written
        }
    }

    /// The shard a span of `header`'s trace goes to.
    @inline(__always)
    private func shardRef(_ header: SlotHeader) -> Unmanaged<Shard> {
        // Trace ids are random, but not every producer's low bits are: mix before choosing.
        shardRefs[Int((header.traceLow &* 0x9E37_79B9_7F4A_7C15) >> 40 & shardMask)]
    }

    /// With `shard` locked: a writer into its next free slot, or nil (counted) when it is full.
    @inline(__always)
    private func claim(_ shard: Shard) -> StringWriter? {
        guard shard.indices.count < slotsPerShard else {
            shard.indices.dropped += 1
            return nil
        }
        // An empty shard starts again at its first slot: while the exporter keeps up,
        // spans are written to the same few slots, which stay in the CPU's cache,
        // instead of walking through the whole ring.
        if shard.indices.count == 0 { shard.indices.head = 0 }
        var slot = shard.indices.head + shard.indices.count
        if slot >= slotsPerShard { slot -= slotsPerShard }
        let lengths = shard.bytes + slot * slotSize + MemoryLayout<SlotHeader>.stride
        prefetchSlot(after: slot, in: shard)
        return StringWriter(
            lengths: lengths.assumingMemoryBound(to: UInt16.self), cursor: lengths + Self.lengthBytes, room: stringBytes, slot: slot)
    }

    /// Starts bringing the slot after `slot` into this core's cache, owned for writing,
    /// while this one is written: the export loop, on another core, last read it, and
    /// a store to a line another core holds waits for that line. The next span then
    /// finds its slot ready; a hint, not a wait.
    @inline(__always)
    private func prefetchSlot(after slot: Int, in shard: Shard) {
        let next = slot + 1 == slotsPerShard ? 0 : slot + 1
        let base = shard.bytes + next * slotSize
        var offset = 0
        while offset < prefetchedBytes {
            meshtrace_prefetch_for_write(base + offset)
            offset += 64
        }
        // The line the last of those bytes is in, when the slot does not start a line.
        meshtrace_prefetch_for_write(base + (prefetchedBytes - 1))
    }

    /// With `shard` locked: stores the header of the slot `writer` filled, and counts the span.
    @inline(__always)
    private func commit(_ header: SlotHeader, _ writer: consuming StringWriter, in shard: Shard) {
        var stored = header
        if writer.truncated { stored.bits |= SlotHeader.truncatedBit }
        (shard.bytes + writer.slot * slotSize).storeBytes(of: stored, as: SlotHeader.self)
        shard.indices.count += 1
        shard.indices.recorded += 1
        if header.bits & SlotHeader.exportBit == 0 { shard.indices.unexported += 1 }
    }

    /// Moves up to `limit` spans, oldest first shard by shard, into `batch`.
    func drain(into batch: inout DrainedSpans, limit: Int) {
        let slotSize = self.slotSize
        for shard in shards where batch.count < limit {
            shard.withLock { indices in
                while indices.count > 0 && batch.count < limit {
                    let slot = shard.bytes + indices.head * slotSize
                    batch.append(header: slot.load(as: SlotHeader.self), slot: slot + MemoryLayout<SlotHeader>.stride)
                    indices.head = indices.head + 1 == slotsPerShard ? 0 : indices.head + 1
                    indices.count -= 1
                }
            }
        }
    }

    /// Spans waiting, over every shard.
    var count: Int { shards.reduce(0) { $0 + $1.withLock { $0.count } } }

    /// Spans taken in, taken in without the export bit, and dropped because their shard was full.
    var totals: (recorded: UInt64, unexported: UInt64, dropped: UInt64) {
        shards.reduce((0, 0, 0)) { sum, shard in
            let indices = shard.withLock { $0 }
            return (sum.0 + indices.recorded, sum.1 + indices.unexported, sum.2 + indices.dropped)
        }
    }
}

/// Spans taken out of the ring for one export: headers and string bytes, read by the
/// encoder. Labels are written out here, so a span's strings read the same whether
/// they were copied or labelled.
struct DrainedSpans {
    private(set) var headers: [SlotHeader] = []
    private(set) var bytes: [UInt8] = []
    /// Where each span's record starts in `bytes`: the lengths of its strings, then the strings.
    private var starts: [Int] = []
    let labels: LabelTable

    init(capacity: Int, slotBytes: Int, labels: LabelTable) {
        self.labels = labels
        headers.reserveCapacity(capacity)
        starts.reserveCapacity(capacity)
        bytes.reserveCapacity(capacity * slotBytes)
    }

    var count: Int { headers.count }

    private static let fields = SlotString.allCases.count

    /// Appends the span of a slot: `header`, and the lengths and strings at `source`.
    mutating func append(header: SlotHeader, slot source: UnsafeRawPointer) {
        headers.append(header)
        let start = bytes.count
        starts.append(start)
        bytes.append(contentsOf: repeatElement(0, count: Self.fields * 2))
        var cursor = source + Self.fields * 2
        for field in 0..<Self.fields {
            let stored = source.loadUnaligned(fromByteOffset: 2 * field, as: UInt16.self)
            let length: Int
            if stored & SlotHeader.labelFlag != 0 {
                let label = labels.bytes(of: Int(stored & ~SlotHeader.labelFlag))
                bytes.append(contentsOf: label)
                length = label.count
            } else {
                length = Int(stored)
                bytes.append(contentsOf: UnsafeRawBufferPointer(start: cursor, count: length))
                cursor += length
            }
            bytes[start + 2 * field] = UInt8(truncatingIfNeeded: length)
            bytes[start + 2 * field + 1] = UInt8(truncatingIfNeeded: length >> 8)
        }
    }

    mutating func removeAll() {
        headers.removeAll(keepingCapacity: true)
        starts.removeAll(keepingCapacity: true)
        bytes.removeAll(keepingCapacity: true)
    }

    private func length(_ base: Int, _ field: Int) -> Int { Int(bytes[base + 2 * field]) | Int(bytes[base + 2 * field + 1]) << 8 }

    /// String `field` of span `index`.
    func string(_ index: Int, _ field: SlotString) -> ArraySlice<UInt8> {
        let base = starts[index]
        var offset = base + Self.fields * 2
        for earlier in 0..<field.rawValue { offset += length(base, earlier) }
        return bytes[offset..<offset + length(base, field.rawValue)]
    }

    /// The strings of span `index`, in `SlotString` order.
    func strings(_ index: Int) -> [ArraySlice<UInt8>] {
        let base = starts[index]
        var offset = base + Self.fields * 2
        var result: [ArraySlice<UInt8>] = []
        result.reserveCapacity(Self.fields)
        for field in 0..<Self.fields {
            let length = length(base, field)
            result.append(bytes[offset..<offset + length])
            offset += length
        }
        return result
    }
}
