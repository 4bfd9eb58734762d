"""DuckDB's side of `meshtrace-bench query`: the same spans as a Parquet table, and
the same four questions asked in SQL.

    python query_duckdb.py DIR

DIR holds what meshtrace-bench wrote: one little-endian binary file per column
(`trace_id` 16 bytes, `span_id` and `parent_span_id` 8 bytes, `service` u16 and
`name` u32 indexes into `dictionaries.json`, `kind` and `status` u8, `http_status`
u16, `start_ns` and `duration_ns` u64) and `questions.json` (the windows, the trace
ids to look up, the search). The table is written to DIR/spans.parquet sorted by
trace id, zstd-compressed, so a lookup reads one row group. Prints one JSON object:
per question the timings in milliseconds and what was answered.
"""
import json
import statistics
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def load_table(directory):
    names = json.loads((directory / "dictionaries.json").read_text())
    rows = (directory / "start_ns").stat().st_size // 8

    def column(name, dtype, width=None):
        data = np.fromfile(directory / name, dtype=dtype)
        return data.reshape(rows, width) if width else data

    trace = column("trace_id", np.uint8, 16)
    span = column("span_id", np.uint8, 8)
    parent = column("parent_span_id", np.uint8, 8)
    table = pa.table({
        "trace_id": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), rows, [None, pa.py_buffer(trace.tobytes())]),
        "span_id": pa.FixedSizeBinaryArray.from_buffers(pa.binary(8), rows, [None, pa.py_buffer(span.tobytes())]),
        "parent_span_id": pa.FixedSizeBinaryArray.from_buffers(pa.binary(8), rows, [None, pa.py_buffer(parent.tobytes())]),
        "service": pa.DictionaryArray.from_arrays(pa.array(column("service", np.uint16).astype(np.int32)), pa.array(names["services"])),
        "name": pa.DictionaryArray.from_arrays(pa.array(column("name", np.uint32).astype(np.int32)), pa.array(names["names"])),
        "kind": pa.array(column("kind", np.uint8)),
        "status": pa.array(column("status", np.uint8)),
        "http_status": pa.array(column("http_status", np.uint16)),
        "start_ns": pa.array(column("start_ns", np.uint64).astype(np.int64)),
        "duration_ns": pa.array(column("duration_ns", np.uint64).astype(np.int64)),
    })
    return table.sort_by("trace_id")


def timed(runs, work):
    """Median and all timings of `runs` calls after one warm-up; the last answer."""
    answer = work()
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        answer = work()
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings), timings, answer


def main(directory):
    directory = Path(directory)
    questions = json.loads((directory / "questions.json").read_text())
    parquet = directory / "spans.parquet"
    started = time.perf_counter()
    table = load_table(directory)
    pq.write_table(table, parquet, compression="zstd", row_group_size=122_880)
    written = time.perf_counter() - started
    del table

    con = duckdb.connect()
    con.execute(f"CREATE VIEW spans AS SELECT * FROM read_parquet('{parquet}')")
    runs = questions["runs"]
    result = {"duckdb": duckdb.__version__, "rows": con.execute("SELECT count(*) FROM spans").fetchone()[0],
              "parquet_bytes": parquet.stat().st_size, "parquet_seconds": round(written, 1),
              "threads": con.execute("SELECT current_setting('threads')").fetchone()[0]}

    # 1. Trace by id: every span of the trace.
    ids = [bytes.fromhex(h) for h in questions["trace_ids"]]
    lookup = con.cursor()
    lookups, found = [], 0
    for trace_id in ids:
        lookup.execute("SELECT * FROM spans WHERE trace_id = ?", [trace_id]).fetchall()  # warm
        start = time.perf_counter()
        rows = lookup.execute("SELECT * FROM spans WHERE trace_id = ?", [trace_id]).fetchall()
        lookups.append((time.perf_counter() - start) * 1000)
        found += bool(rows)
    result["trace_by_id"] = {"median_ms": statistics.median(lookups), "found": found, "lookups": len(ids)}

    # 2. Search: the newest traces with a span of the service, in error, slower than the bound; their spans.
    search = questions["search"]
    search_sql = """
        WITH matched AS (
            SELECT trace_id, max(start_ns) AS latest FROM spans
            WHERE service = ? AND status = 2 AND duration_ns > ? AND start_ns BETWEEN ? AND ?
            GROUP BY trace_id ORDER BY latest DESC LIMIT ?)
        SELECT s.*, m.latest FROM spans s JOIN matched m USING (trace_id)"""
    median, timings, rows = timed(runs, lambda: con.execute(
        search_sql, [search["service"], search["min_duration_ns"], questions["day"][0], questions["day"][1], search["limit"]]).fetchall())
    result["search"] = {"median_ms": median, "timings_ms": timings, "traces": sorted({r[0].hex() for r in rows}), "spans": len(rows)}

    # 3 and 4. Edges: a CLIENT span and its SERVER child; requests, errors and percentiles.
    edge_sql = """
        SELECT c.service AS client, s.service AS server, count(*) AS requests,
               sum(CASE WHEN c.status = 2 OR c.http_status >= 500 THEN 1 ELSE 0 END) AS errors,
               quantile_cont(c.duration_ns, [0.5, 0.95, 0.99]) AS latency
        FROM spans c JOIN spans s ON s.trace_id = c.trace_id AND s.parent_span_id = c.span_id
        WHERE c.kind = 3 AND s.kind = 2 AND c.start_ns BETWEEN ? AND ?
        GROUP BY 1, 2"""
    median, timings, rows = timed(runs, lambda: con.execute(edge_sql, questions["day"]).fetchall())
    result["topology_24h"] = {"median_ms": median, "timings_ms": timings,
                              "edges": {f"{r[0]}->{r[1]}": {"requests": r[2], "errors": r[3], "p99_ms": r[4][2] / 1e6} for r in rows}}
    p99_sql = """
        SELECT c.service, s.service, count(*), quantile_cont(c.duration_ns, 0.99)
        FROM spans c JOIN spans s ON s.trace_id = c.trace_id AND s.parent_span_id = c.span_id
        WHERE c.kind = 3 AND s.kind = 2 AND c.start_ns BETWEEN ? AND ?
        GROUP BY 1, 2"""
    median, timings, rows = timed(runs, lambda: con.execute(p99_sql, questions["hour"]).fetchall())
    result["p99_per_edge_1h"] = {"median_ms": median, "timings_ms": timings,
                                 "edges": {f"{r[0]}->{r[1]}": {"requests": r[2], "p99_ms": r[3] / 1e6} for r in rows}}
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
