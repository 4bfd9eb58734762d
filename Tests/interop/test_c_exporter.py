"""The C interface of MeshExporter: a C program, compiled here against
meshexporter.h and libmeshexporter.so, records spans and exports them to a real
collector, over OTLP/HTTP and OTLP/gRPC; the collector stores them as recorded."""
import shutil
import subprocess

import pytest
import requests

from conftest import BIN, ROOT, meshtrace

HEADER_DIR = ROOT / "Sources" / "MeshExporterABI" / "include"
PROGRAM = ROOT / "Tests" / "capi" / "record_spans.c"


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    library = BIN / "libmeshexporter.so"
    assert library.exists(), f"{library} is missing: swift build --product meshexporter"
    compiler = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
    assert compiler, "no C compiler"
    output = tmp_path_factory.mktemp("capi") / "record_spans"
    subprocess.run([compiler, "-std=gnu11", "-Wall", "-Werror", "-o", str(output), str(PROGRAM), f"-I{HEADER_DIR}",
                    f"-L{BIN}", "-lmeshexporter", f"-Wl,-rpath,{BIN}"], check=True)
    return output


@pytest.mark.parametrize("transport,mtls", [("http", False), ("grpc", False), ("http", True), ("grpc", True)])
def test_a_c_program_records_and_exports_through_the_c_interface(collector, program, transport, mtls, tmp_path):
    tls = []
    if mtls:
        ca = tmp_path / "ca"
        assert meshtrace("ca", "init", "--dir", ca, "--trust-domain", "shop.local").returncode == 0
        assert meshtrace("ca", "issue", "--dir", ca, "--spiffe-id", "spiffe://shop.local/ns/shop/sa/checkout").returncode == 0
        tls = [str(ca)]
    c = collector(extra_args=["--tls-dir", tls[0]] if mtls else [])
    endpoint = c.otlp_url if transport == "http" else c.otlp_grpc
    if mtls:
        # The collector's certificate names localhost.
        endpoint = endpoint.replace("http://", "https://").replace("127.0.0.1", "localhost")
    run = subprocess.run([str(program), endpoint, transport, "50", *tls], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    traces = [line.split()[1] for line in lines if line.startswith("trace ")]
    counters = dict(line.split() for line in lines if not line.startswith("trace "))
    assert len(traces) == 50
    assert counters["recorded"] == "100" and counters["exported"] == "100" and counters["dropped"] == "0"

    for trace_id in traces[:10]:
        answer = requests.get(f"{c.query_url}/api/traces/{trace_id}", timeout=10).json()
        spans = answer["data"][0]["spans"]
        assert len(spans) == 2
        by_kind = {next(t["value"] for t in span["tags"] if t["key"] == "span.kind"): span for span in spans}
        server, client = by_kind["server"], by_kind["client"]
        # The CLIENT span is the SERVER span's child, as recorded.
        assert client["references"][0]["spanID"] == server["spanID"]
        # Name, peer service and cluster were recorded by label: they read as their text.
        assert client["operationName"] == "GET /api/payments/{id}"
        assert server["operationName"] == "POST /api/checkout"
        tags = {t["key"]: t["value"] for t in client["tags"]}
        assert tags["peer.service"] == "payments"
        assert tags["upstream_cluster"] == "outbound|8080||payments.shop.svc.cluster.local"
        assert tags["connection_security_policy"] == "mutual_tls"
        process = answer["data"][0]["processes"][server["processID"]]
        assert process["serviceName"] == "checkout"
        assert {"key": "k8s.pod.name", "type": "string", "value": "checkout-7d4f9"} in process["tags"]
        transport_tag = {"key": "meshtrace.peer.transport", "type": "string", "value": "mtls"}
        assert (transport_tag in process["tags"]) == mtls
