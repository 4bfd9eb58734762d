"""mTLS with SPIFFE identities: the Python OpenTelemetry SDK's exporters with client
certificates from `meshtrace ca`, against a collector in strict mode."""
import json
import time
import urllib.error
import urllib.request

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPExporter

from conftest import Collector, meshtrace
from test_sdk_interop import check_read_back, send_trace


@pytest.fixture
def ca(tmp_path):
    """A dev CA for shop.local, a collector certificate, and a certificate for `checkout`."""
    directory = tmp_path / "ca"
    made = meshtrace("ca", "init", "--dir", directory, "--trust-domain", "shop.local")
    assert made.returncode == 0, made.stderr
    for sa in ("checkout", "cart"):
        issued = meshtrace("ca", "issue", "--dir", directory, "--spiffe-id", f"spiffe://shop.local/ns/shop/sa/{sa}", "--ttl", "1h")
        assert issued.returncode == 0, issued.stderr
    return directory


def credentials(ca, workload):
    return grpc.ssl_channel_credentials(
        root_certificates=(ca / "ca.pem").read_bytes(),
        private_key=(ca / f"{workload}-key.pem").read_bytes(),
        certificate_chain=(ca / f"{workload}.pem").read_bytes())


def read_trace(c, trace_id):
    answer = meshtrace("trace", trace_id, "--output", "json", "--server", c.query_url)
    assert answer.returncode == 0, answer.stderr
    return json.loads(answer.stdout)


def wait_for(predicate, what, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(what)


def test_sdk_grpc_exporter_with_a_client_certificate_in_strict_mode(collector, ca):
    c = collector(extra_args=["--tls-dir", str(ca)])
    port = c.otlp_grpc.rsplit(":", 1)[1]
    exporter = GRPCExporter(endpoint=f"localhost:{port}", credentials=credentials(ca, "checkout"), timeout=10)
    sent = send_trace(exporter=exporter)
    document = read_trace(c, format(sent[0].context.trace_id, "032x"))
    check_read_back(document, sent)
    resource = {a["key"]: a["value"] for a in document["resourceSpans"][0]["resource"]["attributes"]}
    assert resource["meshtrace.peer.id"] == {"stringValue": "spiffe://shop.local/ns/shop/sa/checkout"}
    assert resource["meshtrace.peer.transport"] == {"stringValue": "mtls"}

    # Without a client certificate, and in plaintext, nothing gets in.
    bare = GRPCExporter(endpoint=f"localhost:{port}", credentials=grpc.ssl_channel_credentials((ca / "ca.pem").read_bytes()), timeout=3)
    plain = GRPCExporter(endpoint=f"http://{c.otlp_grpc}", insecure=True, timeout=3)
    for exporter in (bare, plain):
        refused = send_trace(exporter=exporter)
        missing = meshtrace("trace", format(refused[0].context.trace_id, "032x"), "--server", c.query_url)
        assert missing.returncode != 0
    wait_for(lambda: any("no client certificate presented" in line for line in c.stderr_lines), "no-certificate refusal logged")
    wait_for(lambda: any("plaintext connection (TLS mode strict requires mTLS)" in line for line in c.stderr_lines), "plaintext refusal logged")


def test_sdk_http_exporter_with_a_client_certificate_and_a_spoofed_service(collector, ca, monkeypatch):
    # requests lets these variables override a session's own CA file.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    c = collector(extra_args=["--tls-dir", str(ca)])
    url = c.otlp_url.replace("http://127.0.0.1", "https://localhost") + "/v1/traces"
    # `cart` may claim only `cart`; send_trace's spans say `checkout`.
    spoofer = HTTPExporter(endpoint=url, certificate_file=str(ca / "ca.pem"), client_certificate_file=str(ca / "cart.pem"),
                           client_key_file=str(ca / "cart-key.pem"), timeout=10)
    spoofed = send_trace(exporter=spoofer)
    missing = meshtrace("trace", format(spoofed[0].context.trace_id, "032x"), "--server", c.query_url)
    assert missing.returncode != 0, "spans claiming another identity's service must not be stored"
    honest = HTTPExporter(endpoint=url, certificate_file=str(ca / "ca.pem"), client_certificate_file=str(ca / "checkout.pem"),
                          client_key_file=str(ca / "checkout-key.pem"), timeout=10)
    sent = send_trace(exporter=honest)
    check_read_back(read_trace(c, format(sent[0].context.trace_id, "032x")), sent)

    audit = meshtrace("audit", "--output", "json", "--server", c.query_url)
    assert audit.returncode == 0, audit.stderr
    findings = json.loads(audit.stdout)["findings"]
    mismatch = [f for f in findings if f["kind"] == "identity_mismatch"]
    assert mismatch == [{"kind": "identity_mismatch", "source": "spiffe://shop.local/ns/shop/sa/cart", "target": "checkout",
                         "requests": 3, "detail": 'may claim "cart"; spans rejected'}], findings
    table = meshtrace("audit", "--server", c.query_url)
    assert "identity_mismatch" in table.stdout and "spiffe://shop.local/ns/shop/sa/cart" in table.stdout


def test_misconfigured_tls_and_an_exposed_query_api_fail_at_start(tmp_path, ca):
    def start_fails(args, message):
        c = Collector(tmp_path / "data", args)
        with pytest.raises(RuntimeError) as failure:
            c.start(timeout=30)
        assert message in str(failure.value), str(failure.value)

    start_fails(["--tls-mode", "strict"], "needs tls.cert_file, tls.key_file and tls.trust_bundle")
    start_fails(["--tls-dir", str(ca), "--tls-allow", "spiffe://shop.local/a/**/b"], "'**' may only be the last segment")
    start_fails(["--tls-cert", str(ca / "ca-key.pem"), "--tls-key", str(ca / "collector-key.pem"),
                 "--tls-trust-bundle", str(ca / "ca.pem")], "ca-key.pem")
    start_fails(["--query", "0.0.0.0:0"], "set query.token_file")

    wrong_domain = meshtrace("ca", "issue", "--dir", ca, "--spiffe-id", "spiffe://other.local/ns/x/sa/y")
    assert wrong_domain.returncode != 0 and "outside the CA's trust domain shop.local" in wrong_domain.stderr


def test_tls_settings_from_the_configuration_file(collector, ca, tmp_path):
    config = tmp_path / "collector.yaml"
    config.write_text(f"""
tls:
  dir: {ca}
  allow:
    - spiffe://shop.local/ns/shop/sa/checkout
identity:
  bind:
    - "ns/{{ns}}/sa/{{sa}} => {{sa}}"
    - "ns/shop/sa/cart => checkout"
  on_mismatch: relabel
""")
    c = collector(extra_args=["--config", str(config)])
    port = c.otlp_grpc.rsplit(":", 1)[1]
    sent = send_trace(exporter=GRPCExporter(endpoint=f"localhost:{port}", credentials=credentials(ca, "checkout"), timeout=10))
    check_read_back(read_trace(c, format(sent[0].context.trace_id, "032x")), sent)
    # cart is not on the allow-list, though a binding would let it claim checkout.
    refused = send_trace(exporter=GRPCExporter(endpoint=f"localhost:{port}", credentials=credentials(ca, "cart"), timeout=3))
    assert meshtrace("trace", format(refused[0].context.trace_id, "032x"), "--server", c.query_url).returncode != 0
    wait_for(lambda: any("is not on the allow-list" in line for line in c.stderr_lines), "allow-list refusal logged")

    bad = tmp_path / "bad.yaml"
    bad.write_text("identity:\n  bind:\n    - \"ns/{ns} => {sa}\"\n")
    failed = Collector(tmp_path / "data2", ["--config", str(bad)])
    with pytest.raises(RuntimeError) as failure:
        failed.start(timeout=30)
    assert "bad.yaml:2: identity.bind" in str(failure.value) and "{sa} is not captured" in str(failure.value), str(failure.value)


def test_the_query_api_asks_for_a_bearer_token(collector, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# operators\nd6f1c2a9e4b7405f9a3e8c1b\n")
    c = collector(extra_args=["--api-token-file", str(tokens)])
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{c.query_url}/api/services", timeout=10)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = urllib.request.Request(f"{c.query_url}/api/services", headers={"Authorization": "Bearer not-the-token-at-all"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(wrong, timeout=10)
    assert refused.value.code == 401
    right = urllib.request.Request(f"{c.query_url}/api/services", headers={"Authorization": "Bearer d6f1c2a9e4b7405f9a3e8c1b"})
    assert urllib.request.urlopen(right, timeout=10).status == 200
    assert urllib.request.urlopen(f"{c.query_url}/ready", timeout=10).status == 200
