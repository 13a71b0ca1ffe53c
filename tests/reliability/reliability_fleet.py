"""Real control-plane and worker processes for the reliability tests, started through the test harnesses
(``cp_harness.start_control_plane``, ``processes.start_worker``) and tracked so that teardown stops every one."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from cp_harness import start_control_plane
from etcd_cluster import free_port
from processes import ServerProcess, start_worker

__all__ = ["Fleet"]


@dataclass
class Fleet:
    """Processes of one test. Fixed ports (``free_port``) let a restarted process come back at the same address."""

    tmp: Path
    procs: list[ServerProcess] = field(default_factory=list)
    REPLICAS: ClassVar[tuple[str, str]] = ("cpA", "cpB")

    def control_plane(
        self, store: str, *extra: str, port: int | None = None, replica: str = "", artifacts: Path | None = None
    ) -> ServerProcess:
        """``lmaas control-plane`` on ``store``; artifacts under ``tmp/artifacts`` unless given."""
        args = ["--grpc-port", str(port or free_port())]
        if replica:
            args += ["--replica-id", replica]
        if artifacts is not None:
            args += ["--artifact-dir", str(artifacts)]  # the later flag wins over the harness's
        proc = start_control_plane(self.tmp, *args, *extra, store=store)
        self.procs.append(proc)
        return proc

    def replicas(self, store: str, ports: list[int]) -> list[ServerProcess]:
        """Control-plane replicas named cpA, cpB... on ``store`` at ``ports``, sharing ``tmp/artifacts``."""
        pairs = zip(self.REPLICAS, ports, strict=True)
        return [self.control_plane(store, port=port, replica=name) for name, port in pairs]

    def worker(
        self, worker_id: str, control_plane: str, *extra: str, port: int | None = None, cache: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> ServerProcess:
        """``lmaas worker`` syncing from ``control_plane`` (HOST:PORT[,HOST:PORT]), cache ``tmp/cache-<id>``."""
        proc = start_worker(
            None, "--control-plane", control_plane, "--worker-id", worker_id,
            "--cache-dir", str(cache or self.cache(worker_id)), "--drain-timeout", "5",
            "--grpc-port", str(port or free_port()), *extra, env=env,
        )
        self.procs.append(proc)
        return proc

    def cache(self, worker_id: str) -> Path:
        return self.tmp / f"cache-{worker_id}"

    def cached(self, worker_id: str, digest: str, name: str = "model.onnx") -> Path:
        """Where a worker's cache keeps an ONNX artifact (``<name>.partial`` while it downloads)."""
        return self.cache(worker_id) / "sha256" / digest[:2] / digest / name

    def kill(self, proc: ServerProcess) -> None:
        """SIGKILL: a crash, nothing cleaned up."""
        proc.stop(signal.SIGKILL)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=10)
        self.procs.clear()
