"""meshtrace-sidecar end to end: three small HTTP services, each behind its own
sidecar process, calling each other through their sidecars; the spans the
sidecars record reach a real collector, whole and correctly parented, and the
topology shows the three edges."""
import http.server
import re
import subprocess
import threading
import time
import urllib.request

import pytest
import requests

from conftest import BIN, meshtrace

LISTEN = re.compile(r"^meshtrace-sidecar: (\w+) listening on (\S+)$")


def answer(handler, status, body=b"ok\n"):
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def serve(handler_class):
    """Serves `handler_class` on a loopback port in the background; returns the port."""
    handler_class.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


class App:
    """A workload: answers GET /..., calling its downstreams through its sidecar's
    outbound listener, passing on the traceparent it received (as instrumented or
    header-forwarding applications do)."""

    def __init__(self, calls):
        self.calls = calls
        self.outbound = None
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                status = 200
                for service, path in app.calls:
                    request = urllib.request.Request(f"http://{app.outbound}{path}", headers={
                        "Host": service, "traceparent": self.headers["traceparent"], "x-request-id": self.headers["x-request-id"]})
                    try:
                        urllib.request.urlopen(request, timeout=10).read()
                    except urllib.error.HTTPError as error:
                        status = max(status, error.code)
                answer(self, status)

        self.port = serve(Handler)


def start_sidecar(service, app_port, routes, collector_url, ca=None, extra=()):
    args = [str(BIN / "meshtrace-sidecar"), "--service", service, "--app", f"127.0.0.1:{app_port}",
            "--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0", "--collector", collector_url, *extra]
    if ca:
        args += ["--tls-ca", str(ca / "ca.pem"), "--tls-cert", str(ca / f"{service}.pem"), "--tls-key", str(ca / f"{service}-key.pem")]
    for name, address in routes.items():
        args += ["--route", f"{name}={address}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    addresses = {}
    deadline = time.monotonic() + 60
    while len(addresses) < 2 and time.monotonic() < deadline:
        match = LISTEN.match(proc.stdout.readline().strip())
        if match:
            addresses[match.group(1)] = match.group(2)
    assert len(addresses) == 2, proc.stderr.read() if proc.poll() is not None else "sidecar did not start"
    return proc, addresses


@pytest.mark.parametrize("mtls", [False, True])
def test_three_services_behind_sidecars_make_whole_traces_and_the_topology(collector, mtls, tmp_path):
    ca = None
    if mtls:
        # Each sidecar proves its workload's identity; the collector runs strict mTLS.
        ca = tmp_path / "ca"
        assert meshtrace("ca", "init", "--dir", ca, "--trust-domain", "shop.local").returncode == 0
        for service in ("frontend", "checkout", "payments"):
            assert meshtrace("ca", "issue", "--dir", ca, "--spiffe-id", f"spiffe://shop.local/ns/shop/sa/{service}").returncode == 0
    c = collector(extra_args=["--tls-dir", str(ca)] if mtls else [])
    otlp_url = c.otlp_url.replace("http://127.0.0.1", "https://localhost") if mtls else c.otlp_url
    # frontend -> checkout -> payments, and frontend -> payments.
    payments = App([])
    checkout = App([("payments", "/api/payments/17")])
    frontend = App([("checkout", "/api/checkout"), ("payments", "/api/payments/42")])
    procs = []
    try:
        payments_sidecar, payments_addresses = start_sidecar("payments", payments.port, {}, otlp_url, ca)
        checkout_sidecar, checkout_addresses = start_sidecar(
            "checkout", checkout.port, {"payments": payments_addresses["inbound"]}, otlp_url, ca)
        frontend_sidecar, frontend_addresses = start_sidecar(
            "frontend", frontend.port,
            {"checkout": checkout_addresses["inbound"], "payments": payments_addresses["inbound"]}, otlp_url, ca)
        procs = [payments_sidecar, checkout_sidecar, frontend_sidecar]
        payments.outbound = payments_addresses["outbound"]
        checkout.outbound = checkout_addresses["outbound"]
        frontend.outbound = frontend_addresses["outbound"]

        # A request from outside, with a context of its own.
        parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        answer = requests.get(f"http://{frontend_addresses['inbound']}/", headers={"traceparent": parent}, timeout=30)
        assert answer.status_code == 200
        for _ in range(20):
            requests.get(f"http://{frontend_addresses['inbound']}/", timeout=30)
        # An unknown route answers 404 NR and is recorded too.
        assert requests.get(f"http://{frontend_addresses['outbound']}/x", headers={"Host": "nowhere"}, timeout=10).status_code == 404
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            # The sidecar flushes its exporter on SIGTERM before it exits.
            proc.wait(timeout=30)

    deadline = time.monotonic() + 20
    spans = []
    while time.monotonic() < deadline:
        reply = requests.get(f"{c.query_url}/api/traces/4bf92f3577b34da6a3ce929d0e0e4736", timeout=10)
        if reply.status_code == 200:
            spans = reply.json()["data"][0]["spans"]
            if len(spans) == 7:
                break
        time.sleep(0.2)
    processes = reply.json()["data"][0]["processes"]

    def describe(span):
        tags = {t["key"]: t["value"] for t in span["tags"]}
        return processes[span["processID"]]["serviceName"], tags["span.kind"], tags.get("peer.service", "")

    for process in processes.values():
        tags = {t["key"]: t["value"] for t in process["tags"]}
        if mtls:
            assert tags["meshtrace.peer.id"] == f"spiffe://shop.local/ns/shop/sa/{process['serviceName']}"
        else:
            assert "meshtrace.peer.id" not in tags
    by_id = {span["spanID"]: span for span in spans}
    # SERVER at frontend; CLIENT+SERVER per hop: frontend->checkout, checkout->payments, frontend->payments.
    assert sorted(describe(span) for span in spans) == sorted([
        ("frontend", "server", ""),
        ("frontend", "client", "checkout"), ("checkout", "server", ""),
        ("checkout", "client", "payments"), ("payments", "server", ""),
        ("frontend", "client", "payments"), ("payments", "server", ""),
    ])
    for span in spans:
        service, kind, peer = describe(span)
        parent_id = span["references"][0]["spanID"] if span["references"] else None
        if (service, kind) == ("frontend", "server"):
            # The external caller's span is the parent; it is not stored.
            assert parent_id == "00f067aa0ba902b7"
            continue
        parent_span = by_id[parent_id]
        if kind == "server":
            # Each SERVER span is the child of the CLIENT span that called it, in another service.
            assert describe(parent_span)[1] == "client" and describe(parent_span)[2] == service
        else:
            # Each CLIENT span is the child of its own service's SERVER span.
            assert describe(parent_span) == (service, "server", "")

    # The service graph has the three edges, with every request counted.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        edges = requests.get(f"{c.query_url}/api/v1/topology?since=1h", timeout=10).json()["edges"]
        pairs = {(e["source"], e["target"]): e for e in edges}
        if {("frontend", "checkout"), ("checkout", "payments"), ("frontend", "payments")} <= set(pairs):
            break
        time.sleep(0.5)
    assert pairs[("frontend", "checkout")]["requests"] == 21
    assert pairs[("checkout", "payments")]["requests"] == 21
    assert pairs[("frontend", "payments")]["requests"] == 21
