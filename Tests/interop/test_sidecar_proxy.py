"""meshtrace-sidecar as an HTTP/1.1 proxy: bodies of every framing pass through
whole and are counted in the span, keep-alive connections to the workload are
reused, and an upstream that is down, closes, or is slow gets the status and
Envoy response flag a mesh operator expects, recorded in the span."""
import hashlib
import http.server
import socket
import time

import pytest
import requests

from test_sidecar import answer, serve, start_sidecar


def read_chunked(rfile):
    body = b""
    while True:
        size = int(rfile.readline().split(b";")[0], 16)
        if size == 0:
            rfile.readline()
            return body
        body += rfile.read(size)
        rfile.readline()


class Workload:
    """Answers POST with the body's length and SHA-256 (in a chunked response),
    GET /slow after two seconds, GET /close by closing the connection unanswered;
    notes each connection's client port."""

    def __init__(self):
        self.client_ports = []
        self.received = []
        workload = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                workload.client_ports.append(self.client_address[1])
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = read_chunked(self.rfile)
                else:
                    body = self.rfile.read(int(self.headers["Content-Length"]))
                workload.received.append((dict(self.headers), body))
                answer = f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode()
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, len(answer), 16):
                    piece = answer[start:start + 16]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")

            def do_GET(self):
                workload.client_ports.append(self.client_address[1])
                workload.received.append((dict(self.headers), b""))
                if self.path == "/close":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if self.path == "/slow":
                    time.sleep(2)
                    try:
                        answer(self, 200)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the proxy stopped waiting first, as the test means it to
                    return
                answer(self, 200)

        self.port = serve(Handler)


def traceparent(n):
    return f"00-{n:032x}-00f067aa0ba902b7-01", f"{n:032x}"


def spans_of(c, trace_id, count=1):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reply = requests.get(f"{c.query_url}/api/traces/{trace_id}", timeout=10)
        if reply.status_code == 200 and len(reply.json()["data"][0]["spans"]) >= count:
            return [{t["key"]: t["value"] for t in span["tags"]} for span in reply.json()["data"][0]["spans"]]
        time.sleep(0.2)
    raise AssertionError(f"trace {trace_id} not stored")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bodies_pass_through_whole_and_connections_are_reused(collector):
    c = collector()
    app = Workload()
    proc, addresses = start_sidecar("orders", app.port, {}, c.otlp_url)
    try:
        inbound = f"http://{addresses['inbound']}"
        body = bytes(range(256)) * 4096  # 1 MiB, every byte value
        parent, trace_id = traceparent(0xA1)
        with requests.Session() as session:
            # Content-Length framing.
            answer = session.post(f"{inbound}/api/orders", data=body, headers={"traceparent": parent}, timeout=30)
            assert answer.status_code == 200
            assert answer.text == f"{len(body)} {hashlib.sha256(body).hexdigest()}\n"
            # Chunked framing, from a generator.
            chunked_parent, chunked_trace = traceparent(0xA2)
            answer = session.post(f"{inbound}/api/orders", data=(body[i:i + 10_000] for i in range(0, len(body), 10_000)),
                                  headers={"traceparent": chunked_parent}, timeout=30)
            assert answer.status_code == 200
            assert answer.text == f"{len(body)} {hashlib.sha256(body).hexdigest()}\n"
            for _ in range(5):
                assert session.get(f"{inbound}/api/orders/7", timeout=10).status_code == 200
        # One downstream connection, one upstream connection for all seven requests.
        assert len(app.client_ports) == 7
        assert len(set(app.client_ports)) == 1
        # The workload sees the sidecar's span as parent and no hop-by-hop headers.
        headers = app.received[0][0]
        assert headers["traceparent"].split("-")[1] == trace_id
        assert headers["traceparent"].split("-")[2] != "00f067aa0ba902b7"
        assert "x-request-id" in {k.lower() for k in headers}
        assert {k.lower(): v for k, v in app.received[1][0].items()}["transfer-encoding"] == "chunked"
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    for trace, framing in ((trace_id, "content-length"), (chunked_trace, "chunked")):
        (tags,) = spans_of(c, trace)
        assert tags["http.request.body.size"] == len(body), framing
        assert tags["http.response.body.size"] == len(f"{len(body)} {hashlib.sha256(body).hexdigest()}\n"), framing
        assert tags["http.response.status_code"] == 200
        assert tags["response_flags"] == "-"
        assert tags["span.kind"] == "server"


@pytest.mark.parametrize("case", ["down", "closes", "slow"])
def test_upstream_failures_answer_and_are_recorded_with_envoy_flags(collector, case):
    c = collector()
    app = Workload()
    port = free_port() if case == "down" else app.port
    proc, addresses = start_sidecar("orders", port, {}, c.otlp_url, extra=["--upstream-timeout", "1"])
    try:
        parent, trace_id = traceparent({"down": 0xB1, "closes": 0xB2, "slow": 0xB3}[case])
        path = {"down": "/api/orders/1", "closes": "/close", "slow": "/slow"}[case]
        answer = requests.get(f"http://{addresses['inbound']}{path}", headers={"traceparent": parent}, timeout=30)
        expected_status, expected_flag = {"down": (503, "UF"), "closes": (503, "UC"), "slow": (504, "UT")}[case]
        assert answer.status_code == expected_status
        # The proxy still serves the next request.
        if case != "down":
            assert requests.get(f"http://{addresses['inbound']}/api/orders/2", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    (tags,) = spans_of(c, trace_id)
    assert tags["response_flags"] == expected_flag
    assert tags["http.response.status_code"] == expected_status
    assert tags.get("error") is True
