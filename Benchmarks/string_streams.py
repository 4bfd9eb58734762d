"""What splitting a string column's coded parts into streams of their own would save.

    python string_streams.py CORPUS [KEY] [SPANS]

CORPUS holds OTLP ExportTraceServiceRequest messages, each preceded by its length
as a little-endian u32 (`meshtrace-bench storage --directory DIR` leaves it in
DIR/corpus.otlp). KEY is a span attribute with string values (default
`peer.address`), SPANS how many spans to read (default 200,000, a segment's worth).

The spans are put in segment order (trace id, start, span id) and cut into blocks
of 4,096 spans and runs of 256, as the segment writer does; each value is then
coded the way storage/FORMAT.md codes a string attribute value (a move-to-front
position of the whole value; else a UUID's 16 bytes, or the text before its last
number, the number and the text after it, each part by its own move-to-front list
of 64; else the text), and each block's
bytes are compressed with zstd at level 3:

- as the format writes them, every part in one stream per block;
- with each kind of part (tags and positions, head positions, literal text,
  numbers) in a stream of its own;
- the same with lists of 256 instead of 64;
- split streams without runs (move-to-front lists kept across the block).

It prints bytes per span for each, raw and compressed, and the compressed bytes of
each stream in the split coding. A model, not the writer: the writer's own figure
for the column is in `meshtrace segments inspect`.
"""

import collections
import re
import struct
import sys

import zstandard
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

BLOCK_SPANS = 4096
RUN_SPANS = 256
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def read_values(path, key, limit):
    data = open(path, "rb").read()
    spans = []
    offset = 0
    while offset < len(data) and len(spans) < limit:
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(data[offset:offset + length])
        offset += length
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    value = None
                    for attribute in span.attributes:
                        if attribute.key == key and attribute.value.HasField("string_value"):
                            value = attribute.value.string_value.encode()
                    spans.append((span.trace_id, span.start_time_unix_nano, span.span_id, value))
    spans = spans[:limit]
    spans.sort(key=lambda span: span[:3])
    return [span[3] for span in spans]


def varint(number):
    out = bytearray()
    while number >= 0x80:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


class MoveToFront:
    def __init__(self, capacity):
        self.items = []
        self.capacity = capacity

    def use(self, value):
        """The value's position from the front (moved to the front), or None."""
        for position in range(len(self.items)):
            if self.items[-1 - position] == value:
                self.items.append(self.items.pop(-1 - position))
                return position
        return None

    def insert(self, value):
        self.items.append(value)
        if len(self.items) > self.capacity:
            self.items.pop(0)


def split_number(value):
    """The text before the last run of digits, the number, and the text after, or None."""
    def is_digit(byte):
        return 0x30 <= byte <= 0x39  # ASCII only, as the writer reads digits

    last = len(value) - 1
    while last >= 0 and not is_digit(value[last]):
        last -= 1
    if last < 0:
        return None
    first = last
    while first > 0 and is_digit(value[first - 1]):
        first -= 1
    digits = value[first:last + 1]
    if len(digits) > 18 or (len(digits) > 1 and digits[:1] == b"0"):
        return None
    return value[:first], int(digits), value[last + 1:]


def code_block(values, capacity, split, run):
    streams = collections.defaultdict(bytearray)

    def out(kind):
        return streams[kind if split else "all"]

    for index, value in enumerate(values):
        if index % run == 0:
            recent, heads, tails = MoveToFront(capacity), MoveToFront(capacity), MoveToFront(capacity)
        if value is None:
            continue
        position = recent.use(value)
        if position is not None:
            out("tags").extend(varint(position + 3))
            continue
        recent.insert(value)
        if UUID.fullmatch(value):
            out("tags").extend(varint(2))
            out("literals").extend(bytes.fromhex(value.replace(b"-", b"").decode()))
            continue
        parts = split_number(value)
        if parts is None:
            out("tags").extend(varint(0))
            out("literals").extend(varint(len(value)) + value)
            continue
        head, number, tail = parts
        out("tags").extend(varint(1))
        for part, lst in ((head, heads), (None, None), (tail, tails)):
            if lst is None:
                out("numbers").extend(varint(number))
                continue
            found = lst.use(part)
            if found is not None:
                out("parts").extend(varint(found + 1))
            else:
                out("parts").extend(varint(0))
                out("literals").extend(varint(len(part)) + part)
                lst.insert(part)
    return streams


def measure(values, capacity=64, split=False, run=RUN_SPANS):
    raw = collections.Counter()
    compressed = collections.Counter()
    compressor = zstandard.ZstdCompressor(level=3)
    for start in range(0, len(values), BLOCK_SPANS):
        for kind, data in code_block(values[start:start + BLOCK_SPANS], capacity, split, run).items():
            raw[kind] += len(data)
            compressed[kind] += len(compressor.compress(bytes(data)))
    return raw, compressed


def main():
    path = sys.argv[1]
    key = sys.argv[2] if len(sys.argv) > 2 else "peer.address"
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 200_000
    values = read_values(path, key, limit)
    count = len(values)
    with_key = sum(value is not None for value in values)
    print(f"{count} spans, {with_key} with {key}, {len(set(values) - {None})} distinct values")
    for label, options in (
        ("as written (one stream)", {}),
        ("streams apart", {"split": True}),
        ("one stream, lists of 256", {"capacity": 256}),
        ("streams apart, lists of 256", {"split": True, "capacity": 256}),
        ("streams apart, no runs", {"split": True, "run": 1 << 62}),
    ):
        raw, compressed = measure(values, **options)
        print(f"{label}: {sum(raw.values()) / count:.3f} B/span raw, {sum(compressed.values()) / count:.3f} compressed")
        if options == {"split": True}:
            for kind in sorted(compressed):
                print(f"  {kind}: {raw[kind] / count:.3f} B/span raw, {compressed[kind] / count:.3f} compressed")


if __name__ == "__main__":
    main()
