"""`meshtrace demo` sends MeshSim traffic over real OTLP/HTTP to an embedded collector;
the topology it reads back equals MeshSim's own ground truth."""
import json

from conftest import meshtrace


def test_demo_topology_equals_ground_truth():
    run = meshtrace("demo", "--duration", "3", "--rate", "100", "--error-rate", "0.05", "--seed", "7", "-o", "json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["requests"] == 300
    assert 6 <= report["hops_per_request"] <= 10
    edges = {(e["source"], e["target"]): e for e in report["topology"]["edges"] if e["connection_type"] == ""}
    truth = {(e["source"], e["target"]): e for e in report["truth"]}
    assert edges.keys() == truth.keys()
    assert sum(e["errors"] for e in truth.values()) > 0
    for key, expected in truth.items():
        got = edges[key]
        assert (got["requests"], got["errors"]) == (expected["requests"], expected["errors"]), key
        # Percentiles come from exponential histograms, within their stated relative error.
        bound = got["latency_relative_error"]
        assert 0 < bound <= 0.022, key
        for q in ("p50", "p95", "p99"):
            exact = expected[f"latency_ms_{q}"]
            assert abs(got[f"latency_ms_{q}"] - exact) <= bound * exact * 1.000001, (key, q)
    # Every request entered the mesh from outside: the virtual `user` node.
    entry = [e for e in report["topology"]["edges"] if e["source"] == "user"]
    assert [e["connection_type"] for e in entry] == ["virtual_node"]
    assert entry[0]["requests"] == 300
    assert {"name": "user", "virtual": True} in report["topology"]["nodes"]
    assert report["slow_trace_spans"] > 1


def test_demo_prints_topology_and_a_trace_tree():
    run = meshtrace("demo", "--duration", "1", "--rate", "50")
    assert run.returncode == 0, run.stderr
    assert "SRC" in run.stdout and "frontend" in run.stdout
    assert "Slowest trace:" in run.stdout
    tree = run.stdout.split("Slowest trace:")[1]
    assert "server" in tree and "client" in tree and "\n  " in tree  # indented children


def test_topology_from_a_data_directory_matches_the_demo(tmp_path):
    data = tmp_path / "demo-data"
    run = meshtrace("demo", "--duration", "1", "--rate", "50", "--seed", "3", "--data-dir", data, "-o", "json")
    assert run.returncode == 0, run.stderr
    served = json.loads(run.stdout)["topology"]["edges"]
    assert list(data.glob("segments/*.mts")), "the demo's collector sealed its head block on shutdown"
    offline = meshtrace("topology", "--data-dir", data, "--since", "1h", "-o", "json")
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["edges"] == served
    table = meshtrace("topology", "--data-dir", data)
    assert table.stdout.splitlines()[0].split() == ["SRC", "DST", "REQUESTS", "ERRORS", "ERROR%", "P50", "P95", "P99"]


def test_demo_with_sidecars_counts_every_call_the_services_made():
    """`--sidecars`: six HTTP services, each behind a meshtrace-sidecar process; the
    topology, from the sidecars' spans, counts exactly the calls the services made."""
    run = meshtrace("demo", "--sidecars", "--duration", "2", "--rate", "20", "--error-rate", "0.05", "-o", "json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["requests"] == 40
    edges = {(e["source"], e["target"]): e for e in report["topology"]["edges"] if e["connection_type"] == ""}
    truth = {(e["source"], e["target"]): e for e in report["truth"]}
    assert set(truth) == {("frontend", "catalog"), ("frontend", "cart"), ("cart", "checkout"),
                          ("checkout", "payments"), ("checkout", "inventory")}
    assert edges.keys() == truth.keys()
    for key, expected in truth.items():
        assert (edges[key]["requests"], edges[key]["errors"]) == (expected["requests"], expected["errors"]), key
    # The slowest request's trace, as the sidecars recorded it: a SERVER span at
    # frontend, and a CLIENT and a SERVER span per call.
    assert report["slow_trace_spans"] == 11
