"""OTLP/HTTP bodies compressed with gzip, deflate or zstd land like plain ones; a body
that decompresses past the size limit, a corrupt one, and an unknown encoding are
refused with a clear status, and the collector keeps serving."""
import gzip
import json
import zlib

import requests
import zstandard
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from conftest import meshtrace
from test_bad_input import PROTOBUF, assert_still_serving, protobuf_status, valid_request
from test_sdk_interop import check_read_back, send_trace


def post(c, body, encoding):
    return requests.post(f"{c.otlp_url}/v1/traces", data=body,
                         headers={**PROTOBUF, "Content-Encoding": encoding}, timeout=10)


def test_sdk_gzip_exporter_reads_back_unchanged(collector):
    c = collector()
    sent = send_trace(exporter=OTLPSpanExporter(endpoint=f"{c.otlp_url}/v1/traces", timeout=10,
                                                compression=Compression.Gzip))
    answer = meshtrace("trace", format(sent[0].context.trace_id, "032x"), "--output", "json", "--server", c.query_url)
    assert answer.returncode == 0, answer.stderr
    check_read_back(json.loads(answer.stdout), sent)


def test_deflate_and_streamed_zstd_bodies_are_stored(collector):
    c = collector()
    plain = valid_request(0x31).SerializeToString()
    assert post(c, zlib.compress(plain), "deflate").status_code == 200
    # A streaming compressor does not record the content size in the frame.
    streamed = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    body = streamed.compress(valid_request(0x32).SerializeToString()) + streamed.flush()
    response = post(c, body, "zstd")
    assert response.status_code == 200, response.content
    # Two gzip members, as concatenated files are.
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(valid_request(0x33).SerializeToString())
    whole = request.SerializeToString()
    assert post(c, gzip.compress(whole[:10]) + gzip.compress(whole[10:]), "gzip").status_code == 200
    for trace_byte in (0x31, 0x32, 0x33):
        found = meshtrace("trace", (bytes([trace_byte]) * 16).hex(), "--server", c.query_url)
        assert found.returncode == 0, found.stderr


def test_bodies_that_expand_past_the_limit_or_do_not_decompress_are_refused(collector):
    c = collector(extra_args=["--max-request-bytes", "1000000"])
    bomb = gzip.compress(b"\x0a" * 50_000_000)  # 50 MB of zeros in about 50 kB
    assert len(bomb) < 1_000_000
    for body, encoding in [(bomb, "gzip"), (zstandard.ZstdCompressor().compress(b"\x0a" * 50_000_000), "zstd")]:
        response = post(c, body, encoding)
        assert response.status_code == 413, encoding
        assert "decompresses to more than the limit of 1000000 bytes" in protobuf_status(response).message

    plain = valid_request(0x34).SerializeToString()
    for body, encoding in [(gzip.compress(plain)[:-6], "gzip"), (b"not zstd at all", "zstd"), (b"\x78\x9c garbage", "deflate")]:
        response = post(c, body, encoding)
        assert response.status_code == 400, encoding
        assert f"cannot decompress the {encoding} body" in protobuf_status(response).message

    response = post(c, plain, "br")
    assert response.status_code == 415
    assert "unsupported content encoding" in protobuf_status(response).message
    assert_still_serving(c, 0x35)
