"""`meshtrace segments`: listing, inspection, verification, and compaction that
survives being killed at any point."""
import json
import random
import signal
import subprocess
import time

import requests

from conftest import BIN, meshtrace
from test_durability import SPANS_PER_TRACE, request_for

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def build_store(collector, data_dir, rounds=5, traces_per_round=40):
    """A data directory with one sealed segment per round."""
    c = collector(data_dir, extra_args=["--max-head-spans", "100", "--compact-below", "0"])
    sent = []
    n = 1
    for _ in range(rounds):
        for _ in range(traces_per_round):
            response = requests.post(f"{c.otlp_url}/v1/traces", data=request_for(n).SerializeToString(), headers=PROTOBUF, timeout=10)
            assert response.status_code == 200
            sent.append(n)
            n += 1
        time.sleep(1.3)  # the collector checks every second whether the head block is due
    assert c.stop() == 0
    return sent


def listed(data_dir):
    run = meshtrace("segments", "list", "--data-dir", data_dir, "-o", "json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_list_inspect_verify(collector, tmp_path):
    data = tmp_path / "store"
    sent = build_store(collector, data)
    segments = listed(data)
    assert len(segments) >= 4
    assert sum(s["spans"] for s in segments) == len(sent) * SPANS_PER_TRACE
    assert all(s["bytes_per_span"] > 0 and s["version"] == 4 for s in segments)

    inspect = meshtrace("segments", "inspect", "--data-dir", data)
    assert inspect.returncode == 0, inspect.stderr
    assert inspect.stdout.splitlines()[0].split() == ["COLUMN", "CHUNKS", "COMPRESSED", "RAW", "B/SPAN", "RATIO"]
    assert any(line.startswith("span.id ") for line in inspect.stdout.splitlines())
    # Version 4: every block's summary, for searches to skip blocks by.
    assert any(line.startswith("block.summaries ") for line in inspect.stdout.splitlines())

    verify = meshtrace("segments", "verify", "--data-dir", data)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # Flip one byte inside a column chunk of the first segment.
    victim = data / "segments" / segments[0]["file"]
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0x20
    victim.write_bytes(bytes(raw))
    damaged = meshtrace("segments", "verify", "--data-dir", data, "-o", "json")
    assert damaged.returncode == 2
    report = {r["file"]: r for r in json.loads(damaged.stdout)}
    assert report[victim.name]["status"] == "damaged"
    assert victim.name in report[victim.name]["reason"] and "column" in report[victim.name]["reason"]
    assert sum(r["status"] == "ok" for r in report.values()) == len(segments) - 1

    # The rest stays queryable: the last trace sent lives in another segment.
    assert meshtrace("trace", f"{sent[-1]:032x}", "--data-dir", data).returncode == 0


def test_collector_quarantines_unreadable_segments(collector, tmp_path):
    data = tmp_path / "store"
    sent = build_store(collector, data, rounds=2)
    (data / "segments" / "seg-00000000000000ff.mts").write_bytes(b"\x00" * 64)
    c = collector(data)
    assert (data / "quarantine" / "seg-00000000000000ff.mts").exists()
    response = requests.get(f"{c.query_url}/api/traces/{sent[0]:032x}", timeout=10)
    assert response.status_code == 200


def test_compaction_killed_at_random_points_loses_and_duplicates_nothing(collector, tmp_path):
    data = tmp_path / "store"
    sent = build_store(collector, data, rounds=6)
    before = sum(s["spans"] for s in listed(data))
    rng = random.Random(7)
    for _ in range(8):
        process = subprocess.Popen([str(BIN / "meshtrace"), "segments", "compact", "--data-dir", str(data)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, 0.25))
        process.send_signal(signal.SIGKILL)
        process.wait()
    final = meshtrace("segments", "compact", "--data-dir", data)
    assert final.returncode == 0, final.stderr
    segments = listed(data)
    assert len(segments) == 1
    assert sum(s["spans"] for s in segments) == before
    assert not list((data / "segments").glob("*.tmp"))
    for n in rng.sample(sent, 25):
        answer = meshtrace("trace", f"{n:032x}", "-o", "json", "--data-dir", data)
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.count('"spanId"') == SPANS_PER_TRACE


def test_retention_killed_at_random_points_keeps_whole_segments(collector, tmp_path):
    data = tmp_path / "store"
    sent = build_store(collector, data, rounds=6)
    before = sorted(listed(data), key=lambda s: s["end"])
    total = sum(s["bytes"] for s in before)
    limit = total // 2
    # Retention by size keeps the newest segments that fit together under the limit.
    kept, size = [], 0
    for segment in reversed(before):
        if size + segment["bytes"] > limit:
            break
        kept.append(segment["file"])
        size += segment["bytes"]
    assert 0 < len(kept) < len(before)

    rng = random.Random(11)
    for step in range(8):
        # Each run has something left to delete: the bound tightens towards the limit.
        bound = total - (total - limit) * (step + 1) // 8
        process = subprocess.Popen([str(BIN / "meshtrace"), "segments", "retain", "--data-dir", str(data),
                                    "--max-bytes", str(bound)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, 0.15))
        process.send_signal(signal.SIGKILL)
        process.wait()
    final = meshtrace("segments", "retain", "--data-dir", data, "--max-bytes", limit)
    assert final.returncode == 0, final.stderr
    after = listed(data)
    assert sorted(s["file"] for s in after) == sorted(kept)
    assert meshtrace("segments", "verify", "--data-dir", data).returncode == 0
    assert not list((data / "segments").glob("*.tmp"))

    # Every trace is whole or gone, and the ones kept are the newest.
    c = collector(data, extra_args=["--compact-below", "0"])
    found = []
    for n in sent:
        response = requests.get(f"{c.query_url}/api/traces/{n:032x}", timeout=10)
        assert response.status_code in (200, 404), response.text
        if response.status_code == 200:
            assert len(response.json()["data"][0]["spans"]) == SPANS_PER_TRACE
            found.append(n)
    assert found == sent[len(sent) - len(found):]
    assert len(found) * SPANS_PER_TRACE == sum(s["spans"] for s in after)

    bad = meshtrace("segments", "retain", "--data-dir", data)
    assert bad.returncode != 0 and "--older-than" in bad.stderr


def test_block_size_and_compression_level_are_configurable(collector, tmp_path):
    data = tmp_path / "store"
    c = collector(data, extra_args=["--block-spans", "64", "--compression-level", "19", "--compact-below", "0"])
    session = requests.Session()
    for n in range(1, 201):
        response = session.post(f"{c.otlp_url}/v1/traces", data=request_for(n).SerializeToString(), headers=PROTOBUF, timeout=10)
        assert response.status_code == 200
    assert c.stop() == 0  # seals the head block
    segments = listed(data)
    assert sum(s["spans"] for s in segments) == 200 * SPANS_PER_TRACE
    # A block closes at the first trace boundary after 64 spans: 66 spans, 22 traces of 3.
    assert sum(s["blocks"] for s in segments) >= 200 * SPANS_PER_TRACE // 66
    assert meshtrace("trace", f"{150:032x}", "--data-dir", data).returncode == 0

    for flag, value in (("--block-spans", "10"), ("--compression-level", "0")):
        run = subprocess.run([str(BIN / "meshtrace-collector"), "--data-dir", str(tmp_path / "refused"), flag, value],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode != 0 and flag in run.stderr, run.stderr
