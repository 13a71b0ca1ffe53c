"""The server scaffold both planes share: one gRPC server recipe, one metrics port, one TLS pair check, one
"run until a signal".

:class:`GrpcServer` holds what every LMaaS gRPC server has: message limits, interceptors, ``grpc.health.v1`` and
server reflection for its services, TLS (mutual with a client CA) or plain, and the lifecycle of STYLE.md:
``bind()`` returns the port (0 = any free port), ``start()``, ``serving()`` flips health to SERVING once the
owner is ready, ``stop(grace)`` flips it to NOT_SERVING before the drain. The worker and the control plane add
their services and keep only what differs (keepalive, SO_REUSEPORT, interceptors).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from lmaas.protos._pool import POOL
from lmaas.protos.credentials import server_credentials
from prometheus_client import CollectorRegistry, start_http_server

__all__ = [
    "KEEPALIVE_OPTIONS",
    "GrpcServer",
    "MetricsServer",
    "Stoppable",
    "TlsFiles",
    "bind_host",
    "on_signals",
    "run_until_signal",
    "tls_files",
]

# Servers of long-lived streams (WorkerSync): pings find dead peers; clients may ping often (they do, idle).
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
)


@dataclass(frozen=True)
class TlsFiles:
    """A server's certificate and key (PEM), and the CA its clients' certificates must be signed by (mTLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


def tls_files(cert: Path | None, key: Path | None, client_ca: Path | None = None) -> TlsFiles | None:
    """The one check of a certificate/key pair: both or neither, and a client CA only with both.

    Raises ValueError naming the flags; returns None for a plain-text server.
    """
    if (cert is None) != (key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if cert is None or key is None:
        if client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    return TlsFiles(cert, key, client_ca)


def bind_host(host: str) -> str:
    """``host`` as gRPC's bind address wants it: IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class GrpcServer:
    """One ``grpc.aio`` server with health and reflection for ``service_names``; add services before ``bind``."""

    def __init__(
        self,
        service_names: Sequence[str],
        *,
        max_message_bytes: int,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        options: Sequence[tuple[str, int]] = (),
        reuse_port: bool = False,
        health_servicer: health.aio.HealthServicer | None = None,
    ) -> None:
        self.service_names = tuple(service_names)
        # The owner may set per-model health before the server starts (the worker does, on every load).
        self.health = health_servicer or health.aio.HealthServicer()
        self.server = grpc.aio.server(
            interceptors=list(interceptors),
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                *options,
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server, pool=POOL
        )
        self.port = 0
        self._started = False

    def add(self, adder: Callable[[Any, grpc.aio.Server], None], servicer: object) -> None:
        """Register a servicer with its generated ``add_*Servicer_to_server``."""
        adder(servicer, self.server)

    def bind(self, host: str, port: int, tls: TlsFiles | None = None) -> int:
        """Bind ``host:port`` (TLS when ``tls`` is given); returns the bound port."""
        address = f"{bind_host(host)}:{port}"
        if tls is not None:
            self.port = self.server.add_secure_port(address, server_credentials(tls.cert, tls.key, tls.client_ca))
        else:
            self.port = self.server.add_insecure_port(address)
        return self.port

    async def start(self) -> None:
        await self.server.start()
        self._started = True

    async def serving(self) -> None:
        """Health SERVING for the server ("") and each of its services: the owner is ready for calls."""
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        """Health NOT_SERVING first (balancers stop sending), then refuse new calls and drain for ``grace`` s."""
        await self.health.enter_graceful_shutdown()
        if self._started:
            await self.server.stop(grace)


class MetricsServer:
    """The plain-HTTP Prometheus port of one process; ``stop()`` is a no-op when it never started."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._http: Any = None

    def start(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (0 = any free port); returns the bound port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class Stoppable(Protocol):
    """What :func:`run_until_signal` runs: a started server that ``wait()`` s until ``stop()``."""

    def stop(self) -> Awaitable[None]: ...

    def wait(self) -> Awaitable[None]: ...


@contextlib.contextmanager
def on_signals(callback: Callable[[], object]) -> Iterator[None]:
    """Call ``callback`` on SIGTERM and SIGINT while the block runs (in the running event loop)."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, callback)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def run_until_signal(server: Stoppable) -> None:
    """Serve until SIGTERM or SIGINT, then ``stop()`` (drain); returns once the server has stopped."""
    stopping: set[asyncio.Future[None]] = set()  # a reference, so the stop task is not collected mid-drain

    def stop() -> None:
        if not stopping:
            stopping.add(asyncio.ensure_future(server.stop()))

    with on_signals(stop):
        await server.wait()
    await asyncio.gather(*stopping)
