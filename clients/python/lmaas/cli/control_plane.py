"""``lmaas control-plane``: run one control-plane replica (the server; the client commands are in
:mod:`lmaas.cli.control`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from lmaas.cli._options import option as _opt
from lmaas.logs import setup_logging

__all__ = ["control_plane", "serve"]

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _duration(value: str) -> float:
    from lmaas.control_plane.settings import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("control-plane")
@_opt("--store", env="LMAAS_STORE", default="sqlite:///.lmaas/control.db",
      help="Metadata store: etcd://HOST:PORT[,HOST:PORT...] or sqlite:///PATH (embedded, one machine).")
@_opt("--artifact-dir", env="LMAAS_ARTIFACT_DIR", type=click.Path(file_okay=False, path_type=Path),
      default=Path(".lmaas/artifacts"), help="Content-addressed artifact store (shared by all replicas).")
@_opt("--host", env="LMAAS_HOST", default="127.0.0.1", help="Address to bind (0.0.0.0 for all interfaces).")
@_opt("--grpc-port", env="LMAAS_GRPC_PORT", type=int, default=8090, help="gRPC port (0 = any free port).")
@_opt("--metrics-port", env="LMAAS_METRICS_PORT", type=int, default=8091, help="Prometheus /metrics port (0 = any).")
@_opt("--http-port", env="LMAAS_HTTP_PORT", type=click.IntRange(min=-1, max=65535), default=8080,
      help="REST API port: /api/v1, OpenAPI at /openapi.json (0 = any free port, -1 = none).")
@_opt("--max-artifact-bytes", env="LMAAS_MAX_ARTIFACT_BYTES", type=int, default=16 << 30,
      help="Largest artifact accepted.")
@_opt("--worker-lease-ttl", env="LMAAS_WORKER_LEASE_TTL", type=int, default=10,
      help="Seconds a worker's presence outlives a control plane that died.")
@_opt("--replica-id", env="LMAAS_REPLICA_ID", default="", help="Name of this replica (default: host name).")
@_opt("--grace", "grace_seconds", env="LMAAS_GRACE", type=float, default=10.0,
      help="Seconds in-flight calls get to finish on SIGTERM.")
@_opt("--auth/--no-auth", env="LMAAS_AUTH", default=True,
      help="Require a token (or a worker's client certificate) on every call. --no-auth opens everything.")
@_opt("--bootstrap-token-file", env="LMAAS_BOOTSTRAP_TOKEN_FILE", type=click.Path(dir_okay=False, path_type=Path),
      default=Path(".lmaas/admin.token"),
      help="The first admin token: imported at start; if the file is absent, a new token is written to it (0600). "
           "LMAAS_BOOTSTRAP_TOKEN, if set, is imported instead.")
@_opt("--tls-cert", env="LMAAS_TLS_CERT", type=_FILE, help="PEM certificate served on the gRPC port (TLS).")
@_opt("--tls-key", env="LMAAS_TLS_KEY", type=_FILE, help="PEM private key of --tls-cert.")
@_opt("--tls-client-ca", env="LMAAS_TLS_CLIENT_CA", type=_FILE,
      help="Require client certificates signed by this CA (mutual TLS).")
@_opt("--tls-worker-cn", env="LMAAS_TLS_WORKER_CN", default="*",
      help="Glob on a client certificate's common name that grants the worker role without a token.")
@_opt("--audit-limit", env="LMAAS_AUDIT_LIMIT", type=click.IntRange(min=100), default=10_000,
      help="Audit entries kept in the store (the oldest are trimmed).")
@_opt("--rollout-timeout", env="LMAAS_ROLLOUT_TIMEOUT", default="600s", callback=lambda c, p, v: _duration(v),
      help="A rollout not acknowledged by every worker within this fails and the previous deployment is restored "
           "(60s, 10m, 1h; 0 = never).")
@_opt("--prometheus-url", env="LMAAS_PROMETHEUS_URL", default="",
      help="Prometheus server that scrapes the workers; the console's charts query it (p50/p99 latency, TTFT).")
@_opt("--log-level", env="LMAAS_LOG_LEVEL", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@_opt("--log-format", env="LMAAS_LOG_FORMAT", default="text", type=click.Choice(["text", "json"]))
def control_plane(log_level: str, log_format: str, replica_id: str, **options: Any) -> None:
    """Run a control-plane replica: model registry, artifacts, deployments, and the workers' sync.

    Replicas are stateless: run several against one etcd (and one shared artifact directory).
    """
    from lmaas.control_plane.settings import ControlPlaneSettings

    setup_logging(log_level, log_format)
    if replica_id:
        options["replica_id"] = replica_id
    if bool(options["tls_cert"]) != bool(options["tls_key"]):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if options["tls_client_ca"] and not options["tls_cert"]:
        raise click.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    settings = ControlPlaneSettings(**options)
    asyncio.run(serve(settings))


async def serve(settings: Any, ready: Callable[[int, int], None] | None = None) -> None:
    """Run a control plane until SIGTERM/SIGINT: health NOT_SERVING, workers released, calls drained."""
    from lmaas.control_plane.app import ControlPlane
    from lmaas.control_plane.bootstrap import BootstrapError
    from lmaas.protos.serving import run_until_signal

    _prepare_sqlite(settings.store)
    plane = ControlPlane(settings)
    try:
        grpc_port, metrics_port = await plane.start()
    except BootstrapError as exc:
        await plane.stop(0)
        raise click.ClickException(str(exc)) from None
    # Tests and scripts read the bound ports from this line (port 0 = any free port); http= is appended last.
    http = f" http={settings.host}:{plane.http_port}" if plane.http_port >= 0 else ""
    print(f"lmaas control-plane listening grpc={settings.host}:{grpc_port} metrics={settings.host}:{metrics_port}"
          f"{http}", flush=True)
    if ready is not None:
        ready(grpc_port, metrics_port)
    await run_until_signal(plane)


def _prepare_sqlite(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


