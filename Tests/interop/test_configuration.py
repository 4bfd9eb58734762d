"""The YAML configuration file: the documented example works, flags override it,
and a file that cannot be used stops the collector with the file, line and key."""
import subprocess

import requests

from conftest import BIN, ROOT


def budget_limit(c):
    for line in requests.get(f"{c.query_url}/metrics", timeout=10).text.splitlines():
        if line.startswith('meshtrace_memory_budget_bytes{state="limit"}'):
            return int(float(line.split()[-1]))


def test_the_documented_example_starts_a_collector(collector):
    c = collector(extra_args=["--config", str(ROOT / "docs" / "collector.example.yaml")])
    assert budget_limit(c) == 536870912


def test_file_settings_apply_and_flags_override_them(collector, tmp_path):
    config = tmp_path / "collector.yaml"
    config.write_text("memory_budget_bytes: 1234567\nreceivers:\n  zipkin:\n    endpoint: \"off\"\n"
                      "store:\n  block_spans: 128\n")
    c = collector(extra_args=["--config", str(config)])
    assert budget_limit(c) == 1234567
    d = collector(data_dir=tmp_path / "other", extra_args=["--config", str(config), "--memory-budget", "7654321"])
    assert budget_limit(d) == 7654321


def refused(tmp_path, text):
    config = tmp_path / "collector.yaml"
    config.write_text(text)
    run = subprocess.run([str(BIN / "meshtrace-collector"), "--config", str(config), "--data-dir", str(tmp_path / "data")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert not (tmp_path / "data").exists(), "nothing is opened before the configuration is valid"
    return run.stderr


def test_a_file_that_cannot_be_used_names_file_line_and_key(tmp_path):
    assert "collector.yaml:3: unknown setting store.blok_spans" in refused(tmp_path, "log_level: info\nstore:\n  blok_spans: 10\n")
    assert "collector.yaml:2: receivers.otlp_grpc.endpoint: expected host:port or off" in refused(
        tmp_path, "receivers:\n  otlp_grpc: {endpoint: 4317}\n")
    assert "store.compression_level: expected 1 to 19" in refused(tmp_path, "store:\n  compression_level: 42\n")
    assert "collector.yaml:1: unknown setting storage" in refused(tmp_path, "storage:\n  x: 1\n")
    assert "not valid YAML" in refused(tmp_path, "store: [unclosed\n")
    assert "--memory-budget: memory_budget_bytes: expected a positive whole number" in subprocess.run(
        [str(BIN / "meshtrace-collector"), "--memory-budget", "0"], capture_output=True, text=True, timeout=60).stderr
