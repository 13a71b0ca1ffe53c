"""Several worker processes behind one gRPC port and one HTTP port (``lmaas worker --processes N``).

The supervisor picks the ports, starts N children that bind them with
SO_REUSEPORT (the kernel spreads connections over them), and serves one
/metrics endpoint that aggregates the children through prometheus_client's
multiprocess mode. SIGTERM/SIGINT are forwarded; each child drains as a single
worker would. Per-process state (ModelStatistics) stays per process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["supervise"]


def _reserve_port(host: str) -> int:
    """A free port that SO_REUSEPORT sockets can share (picked the way the children will bind it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def supervise(
    argv: Sequence[str], *, processes: int, host: str, grpc_port: int, metrics_port: int, http_port: int = 0
) -> int:
    """Run ``processes`` children of ``lmaas worker ARGV`` on one gRPC and one HTTP port; returns the exit code."""
    prom_dir = tempfile.mkdtemp(prefix="lmaas-metrics-")
    port = grpc_port or _reserve_port(host)
    http = http_port or _reserve_port(host)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": prom_dir, "PYTHONUNBUFFERED": "1"}
    child_args = [
        *argv, "--processes", "1", "--reuse-port", "--no-metrics", "--grpc-port", str(port), "--http-port", str(http)
    ]
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "lmaas.cli", "worker", *child_args], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    ready = threading.Semaphore(0)

    def relay(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "listening grpc=" in line:
                ready.release()
            else:
                sys.stdout.write(line)
        ready.release()  # exited: do not wait for it forever

    for child in children:
        threading.Thread(target=relay, args=(child,), daemon=True).start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in children:
        ready.acquire()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=prom_dir)  # type: ignore[no-untyped-call]
    httpd, _ = start_http_server(metrics_port, addr=host, registry=registry)
    if all(c.poll() is None for c in children):
        print(
            f"lmaas worker listening grpc={host}:{port} metrics={host}:{httpd.server_port} processes={processes}"
            f" http={host}:{http}",
            flush=True,
        )
    else:
        forward(signal.SIGTERM, None)
    codes = [c.wait() for c in children]
    httpd.shutdown()
    shutil.rmtree(prom_dir, ignore_errors=True)
    return max(codes, key=abs)
