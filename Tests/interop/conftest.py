"""Shared fixtures: real meshtrace processes on loopback ports, and the CLI."""
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("MESHTRACE_BIN", ROOT / ".build" / "debug"))
KEEP_ALL = Path(__file__).resolve().parent / "keep_all.yaml"
LISTEN = re.compile(r"^meshtrace-collector: (\S+) listening on (\S+)$")


class Collector:
    """A meshtrace-collector process with its data directory and bound ports."""

    def __init__(self, data_dir, extra_args=()):
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args)
        # Tests not about sampling keep every trace; the others name their policy
        # (or "--policy", "default" for the built-in one).
        if "--policy" not in self.extra_args:
            self.extra_args += ["--policy", str(KEEP_ALL)]
        elif self.extra_args[self.extra_args.index("--policy") + 1] == "default":
            at = self.extra_args.index("--policy")
            del self.extra_args[at:at + 2]
        self.proc = None
        self.otlp_url = None
        self.otlp_grpc = None
        self.zipkin_url = None
        self.query_url = None
        self.stderr_lines = []

    def start(self, timeout=60):
        self.proc = subprocess.Popen(
            [str(BIN / "meshtrace-collector"), "--data-dir", str(self.data_dir),
             "--otlp-http", "127.0.0.1:0", "--otlp-grpc", "127.0.0.1:0", "--zipkin", "127.0.0.1:0", "--query", "127.0.0.1:0", *self.extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        addresses = {}
        deadline = time.monotonic() + timeout
        # A listener switched off (`--otlp-grpc off`) prints no address.
        expected = 4 - sum(1 for i, arg in enumerate(self.extra_args[:-1])
                           if arg in ("--otlp-grpc", "--otlp-http", "--zipkin") and self.extra_args[i + 1] == "off")
        while len(addresses) < expected:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"collector did not start: {''.join(self.stderr_lines)}")
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"collector exited with {self.proc.wait()}: {''.join(self.stderr_lines)}")
            match = LISTEN.match(line.strip())
            if match:
                addresses[match.group(1)] = match.group(2)
        self.otlp_url = f"http://{addresses['otlp-http']}" if "otlp-http" in addresses else None
        self.otlp_grpc = addresses.get("otlp-grpc")
        self.zipkin_url = f"http://{addresses['zipkin']}" if "zipkin" in addresses else None
        self.query_url = f"http://{addresses['query']}"
        return self

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=60):
        """Graceful shutdown (SIGTERM): drain, seal, exit 0."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout=timeout)
        return self.proc.returncode

    def kill(self):
        """Crash (SIGKILL): no chance to seal or flush."""
        if self.alive():
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def collector(tmp_path):
    """Starts collectors on free ports; all are stopped at the end of the test."""
    started = []

    def start(data_dir=None, extra_args=()):
        c = Collector(data_dir or tmp_path / "data", extra_args).start()
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()


def meshtrace(*args, timeout=120):
    """Runs the meshtrace CLI and returns the completed process."""
    return subprocess.run([str(BIN / "meshtrace"), *map(str, args)], capture_output=True, text=True, timeout=timeout)
