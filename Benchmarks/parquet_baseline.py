"""The Parquet baseline for meshtrace's segment size: the same spans as a flat,
Tempo-like Parquet table (one row per span, rows sorted by trace id, dictionary
encoding, zstd), written with pyarrow.

    python parquet_baseline.py CORPUS OUT.parquet

CORPUS holds OTLP ExportTraceServiceRequest messages, each preceded by its length
as a little-endian u32 (meshtrace-bench storage writes it). Prints
"parquet bytes: N" and "parquet spans: N".

The columns follow Tempo's vParquet4 span schema flattened: ids, name, kind, start,
duration, status, the resource's service name, namespace and pod as dedicated
columns, the remaining resource attributes as a generic list, the dedicated span
attributes Tempo v4 had (method, URL, status code) and every other span attribute
in a generic typed list (key, string, int, double, bool).
"""
import struct
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

DEDICATED_SPAN = {"http.request.method": "http_method", "url.path": "http_url", "http.response.status_code": "http_status_code"}
DEDICATED_RESOURCE = {"service.name": "service_name", "k8s.namespace.name": "namespace", "k8s.pod.name": "pod"}
ATTR = pa.struct([("key", pa.string()), ("value", pa.string()), ("value_int", pa.int64()),
                  ("value_double", pa.float64()), ("value_bool", pa.bool_())])


def attribute(kv):
    which = kv.value.WhichOneof("value")
    row = {"key": kv.key, "value": None, "value_int": None, "value_double": None, "value_bool": None}
    if which == "string_value":
        row["value"] = kv.value.string_value
    elif which == "int_value":
        row["value_int"] = kv.value.int_value
    elif which == "double_value":
        row["value_double"] = kv.value.double_value
    elif which == "bool_value":
        row["value_bool"] = kv.value.bool_value
    else:
        row["value"] = kv.value.SerializeToString().hex()
    return row


def scalar(kv):
    which = kv.value.WhichOneof("value")
    return getattr(kv.value, which) if which else None


def main(corpus, out):
    data = Path(corpus).read_bytes()
    rows = []
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(data[offset + 4:offset + 4 + length])
        offset += 4 + length
        for rs in request.resource_spans:
            resource = {name: None for name in DEDICATED_RESOURCE.values()}
            resource_attrs = []
            for kv in rs.resource.attributes:
                if kv.key in DEDICATED_RESOURCE:
                    resource[DEDICATED_RESOURCE[kv.key]] = scalar(kv)
                else:
                    resource_attrs.append(attribute(kv))
            for ss in rs.scope_spans:
                for span in ss.spans:
                    row = {"trace_id": span.trace_id, "span_id": span.span_id, "parent_span_id": span.parent_span_id,
                           "name": span.name, "kind": span.kind, "start_time_unix_nano": span.start_time_unix_nano,
                           "duration_nano": span.end_time_unix_nano - span.start_time_unix_nano,
                           "status_code": span.status.code, "status_message": span.status.message,
                           "trace_state": span.trace_state, "flags": span.flags,
                           "scope_name": ss.scope.name, "scope_version": ss.scope.version,
                           **resource, "resource_attrs": resource_attrs,
                           "http_method": None, "http_url": None, "http_status_code": None, "attrs": []}
                    for kv in span.attributes:
                        if kv.key in DEDICATED_SPAN:
                            row[DEDICATED_SPAN[kv.key]] = scalar(kv)
                        else:
                            row["attrs"].append(attribute(kv))
                    rows.append(row)
    rows.sort(key=lambda r: (r["trace_id"], r["start_time_unix_nano"]))
    schema = pa.schema([
        ("trace_id", pa.binary(16)), ("span_id", pa.binary(8)), ("parent_span_id", pa.binary()),
        ("name", pa.string()), ("kind", pa.int32()), ("start_time_unix_nano", pa.uint64()),
        ("duration_nano", pa.uint64()), ("status_code", pa.int32()), ("status_message", pa.string()),
        ("trace_state", pa.string()), ("flags", pa.uint32()), ("scope_name", pa.string()), ("scope_version", pa.string()),
        ("service_name", pa.string()), ("namespace", pa.string()), ("pod", pa.string()),
        ("resource_attrs", pa.list_(ATTR)),
        ("http_method", pa.string()), ("http_url", pa.string()), ("http_status_code", pa.int64()),
        ("attrs", pa.list_(ATTR)),
    ])
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, out, compression="zstd", use_dictionary=True, row_group_size=1_000_000)
    print(f"parquet bytes: {Path(out).stat().st_size}")
    print(f"parquet spans: {len(rows)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
