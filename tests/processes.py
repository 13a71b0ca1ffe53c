"""Real LMaaS server processes for tests: start on port 0, read the bound ports, stop by PID."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_LISTENING = re.compile(r"listening grpc=(?P<grpc>\S+) metrics=(?P<metrics>\S+)")
_HTTP = re.compile(r"\shttp=(?P<http>\S+)")


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    grpc: str
    metrics: str
    log: list[str] = field(default_factory=list)
    http: str = ""  # HOST:PORT of the HTTP port, when the server printed one

    @property
    def http_url(self) -> str:
        return f"http://{self.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics}/metrics"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def output(self) -> str:
        return "\n".join(self.log)


def start_server(
    args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
) -> ServerProcess:
    """Run ``lmaas ARGS`` and wait for its 'listening grpc=… metrics=…' line."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmaas.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        cwd=cwd,
    )
    log: list[str] = []
    found: dict[str, str] = {}
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line.rstrip("\n"))
            m = _LISTENING.search(line)
            if m and not ready.is_set():
                found.update(m.groupdict())
                h = _HTTP.search(line)
                if h:
                    found.update(h.groupdict())
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("server did not start in time:\n" + "\n".join(log))
    if not found:
        proc.wait(5)
        raise RuntimeError(f"server exited with {proc.returncode}:\n" + "\n".join(log))
    return ServerProcess(proc, found["grpc"], found["metrics"], log, found.get("http", ""))


def start_worker(repository: Path | None = None, *extra: str, env: dict[str, str] | None = None) -> ServerProcess:
    args = ["worker", "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0", "--host", "127.0.0.1", *extra]
    if repository is not None:
        args += ["--model-repository", str(repository)]
    return start_server(args, env=env)


def wait_for_workers(control_plane: str, count: int = 1, timeout: float = 30) -> None:
    """Until ``count`` workers are connected to the control plane at ``control_plane`` (host:port, gRPC)."""
    from lmaas.client import ControlPlaneClient

    with ControlPlaneClient(control_plane) as client:
        deadline = time.monotonic() + timeout
        while len(client.workers()) < count:
            assert time.monotonic() < deadline, f"{count} worker(s) never connected"
            time.sleep(0.05)


@dataclass
class UpProcess:
    """A running ``lmaas up``: the fields of its ready line (``worker=…``, ``control-plane-http=…``) and its output."""

    fields: dict[str, str]
    lines: list[str]
    ready_line: str


@contextlib.contextmanager
def running_up(
    args: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> Iterator[UpProcess]:
    """Run ``lmaas up ARGS`` until its 'lmaas up ready' line; on exit, Ctrl-C it and require exit code 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmaas.cli", "up", *args], cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("lmaas up ready"):
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(timeout) and proc.poll() is None, "".join(lines)
        ready_line = next(x for x in lines if x.startswith("lmaas up ready"))
        yield UpProcess(dict(f.split("=", 1) for f in ready_line.split()[3:]), lines, ready_line)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, "".join(lines)
