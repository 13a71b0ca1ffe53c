"""Control-plane commands: ``control-plane`` (the server), ``model push|list|versions``, ``deploy``,
``rollback`` and ``status`` (clients of ``--control-plane`` / ``$LMAAS_CONTROL_PLANE``)."""

from __future__ import annotations

import asyncio
import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from lmaas.logs import setup_logging
from lmaas.protos.errors import LMaaSError

__all__ = ["control_plane", "deploy", "model", "rollback", "status"]

F = TypeVar("F", bound=Callable[..., Any])


def _opt(*names: str, env: str, **kw: Any) -> Callable[[F], F]:
    return click.option(*names, envvar=env, show_envvar=True, show_default=True, **kw)


def _client_options(fn: F) -> F:
    fn = _opt("--control-plane", "address", env="LMAAS_CONTROL_PLANE", default="127.0.0.1:8090",
              help="HOST:PORT of the control plane.")(fn)
    fn = _opt("--token", env="LMAAS_TOKEN", default=None, help="Bearer token sent with every call.")(fn)
    fn = _opt("--timeout", env="LMAAS_TIMEOUT", type=float, default=30.0, help="Deadline of each call, seconds.")(fn)
    return fn


def _errors(fn: F) -> F:
    """Print LMaaS errors as one line on stderr and exit 1 (2 for usage errors, as click does)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LMaaSError as exc:
            from lmaas.cli._render import err

            err.print(f"[red]error[/] ({exc.code.name}): {exc.message}")
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _client(address: str, token: str | None, timeout: float) -> Any:
    from lmaas.client.control import ControlPlaneClient

    return ControlPlaneClient(address, token=token, timeout=timeout)


# -- the server ---------------------------------------------------------------------------------------------


@click.command("control-plane")
@_opt("--store", env="LMAAS_STORE", default="sqlite:///.lmaas/control.db",
      help="Metadata store: etcd://HOST:PORT[,HOST:PORT...] or sqlite:///PATH (embedded, one machine).")
@_opt("--artifact-dir", env="LMAAS_ARTIFACT_DIR", type=click.Path(file_okay=False, path_type=Path),
      default=Path(".lmaas/artifacts"), help="Content-addressed artifact store (shared by all replicas).")
@_opt("--host", env="LMAAS_HOST", default="127.0.0.1", help="Address to bind (0.0.0.0 for all interfaces).")
@_opt("--grpc-port", env="LMAAS_GRPC_PORT", type=int, default=8090, help="gRPC port (0 = any free port).")
@_opt("--metrics-port", env="LMAAS_METRICS_PORT", type=int, default=8091, help="Prometheus /metrics port (0 = any).")
@_opt("--max-artifact-bytes", env="LMAAS_MAX_ARTIFACT_BYTES", type=int, default=16 << 30,
      help="Largest artifact accepted.")
@_opt("--worker-lease-ttl", env="LMAAS_WORKER_LEASE_TTL", type=int, default=10,
      help="Seconds a worker's presence outlives a control plane that died.")
@_opt("--replica-id", env="LMAAS_REPLICA_ID", default="", help="Name of this replica (default: host name).")
@_opt("--grace", "grace_seconds", env="LMAAS_GRACE", type=float, default=10.0,
      help="Seconds in-flight calls get to finish on SIGTERM.")
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
    settings = ControlPlaneSettings(**options)
    asyncio.run(serve(settings))


async def serve(settings: Any, ready: Callable[[int, int], None] | None = None) -> None:
    """Run a control plane until SIGTERM/SIGINT: health NOT_SERVING, workers released, calls drained."""
    from lmaas.control_plane.app import ControlPlane

    _prepare_sqlite(settings.store)
    plane = ControlPlane(settings)
    grpc_port, metrics_port = await plane.start()
    # Tests and scripts read the bound ports from this line (port 0 = any free port).
    print(f"lmaas control-plane listening grpc={settings.host}:{grpc_port} metrics={settings.host}:{metrics_port}",
          flush=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(plane.stop()))
    if ready is not None:
        ready(grpc_port, metrics_port)
    await plane.wait()


def _prepare_sqlite(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


# -- models -----------------------------------------------------------------------------------------------


@click.group()
def model() -> None:
    """Models and their immutable versions."""


@model.command("push")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_opt("--config", env="LMAAS_CONFIG", type=click.Path(exists=True, dir_okay=False, path_type=Path),
      help="Model configuration, JSON or YAML (see lmaas.server.config).")
@_opt("--format", "fmt", env="LMAAS_FORMAT", type=click.Choice(["onnx", "torchscript", "torch_export"]),
      help="Artifact format (default: from the file name: .onnx, .pt, .pt2).")
@_opt("--description", env="LMAAS_DESCRIPTION", default="", help="Free text for the version.")
@_opt("--parent", "parent_version", env="LMAAS_PARENT", type=int, default=0, help="The version this one derives from.")
@_opt("--quiet", "-q", env="LMAAS_QUIET", is_flag=True, help="No progress bar.")
@_client_options
@_errors
def push(name: str, file: Path, config: Path | None, fmt: str | None, description: str, parent_version: int,
         quiet: bool, address: str, token: str | None, timeout: float) -> None:
    """Upload FILE as the next version of model NAME; prints the new version number.

    Routing does not change: deploy the version with `lmaas deploy`.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from lmaas.cli._render import err, out

    with _client(address, token, timeout) as client, Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=err, disable=quiet, transient=True,
    ) as bar:
        task = bar.add_task(f"uploading {file.name}", total=file.stat().st_size)
        reply = client.upload(
            name, file, format=fmt, config=config, description=description, parent_version=parent_version,
            progress=lambda sent, total: bar.update(task, completed=sent, total=total),
            timeout=max(timeout, 3600.0),
        )
    v = reply.version
    what = "is already" if reply.existing else "pushed as"
    err.print(f"{name}: {file.name} {what} version {v.version} (sha256:{v.digest[:12]}, {v.size_bytes} bytes)")
    out.print(str(v.version))


@model.command("list")
@_client_options
@_errors
def list_models(address: str, token: str | None, timeout: float) -> None:
    """Every model."""
    from lmaas.cli._render import models_table, out

    with _client(address, token, timeout) as client:
        out.print(models_table(client.list_models()))


@model.command("versions")
@click.argument("name")
@_client_options
@_errors
def versions(name: str, address: str, token: str | None, timeout: float) -> None:
    """Every version of model NAME, and which ones serve."""
    from lmaas.cli._render import out, versions_table
    from lmaas.protos.errors import NotFound

    with _client(address, token, timeout) as client:
        listed = client.list_versions(name)
        try:
            spec = client.get_deployment(name).deployment.spec
        except NotFound:
            spec = None
        out.print(versions_table(name, listed, spec))


# -- deployments ------------------------------------------------------------------------------------------


def _follow(client: Any, name: str, generation: int, wait_timeout: float) -> None:
    from lmaas.cli._render import err, rollout_line
    from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

    final = client.wait_rollout(name, generation, timeout=wait_timeout,
                                on_update=lambda r: err.print(rollout_line(r)))
    if final.phase != pb.ROLLOUT_PHASE_SUCCEEDED:
        sys.exit(1)


@click.command()
@click.argument("name")
@click.argument("version", type=int)
@_opt("--canary", env="LMAAS_CANARY", type=int, default=0, help="A second version for a canary.")
@_opt("--weight", env="LMAAS_WEIGHT", type=click.IntRange(0, 100), default=0,
      help="Percent of requests for the canary.")
@_opt("--pool", "pools", env="LMAAS_DEPLOY_POOLS", multiple=True,
      help="Serve only in these worker pools (repeatable).")
@_opt("--wait", env="LMAAS_WAIT", is_flag=True, help="Follow the rollout; exit 1 unless every worker ACKs.")
@_opt("--wait-timeout", env="LMAAS_WAIT_TIMEOUT", type=float, default=600.0,
      help="Give up waiting after this many seconds.")
@_opt("--expected-generation", env="LMAAS_EXPECTED_GENERATION", type=int, default=0,
      help="Apply only if the deployment is at this generation.")
@_client_options
@_errors
def deploy(name: str, version: int, canary: int, weight: int, pools: tuple[str, ...], wait: bool,
           wait_timeout: float, expected_generation: int, address: str, token: str | None, timeout: float) -> None:
    """Serve VERSION of model NAME (optionally with a weighted canary)."""
    from lmaas.cli._render import err, rollout_line, spec_text

    with _client(address, token, timeout) as client:
        reply = client.deploy(name, version, canary=canary, weight=weight, pools=pools,
                              expected_generation=expected_generation)
        err.print(f"{name}: generation {reply.deployment.generation} serves {spec_text(reply.deployment.spec)}")
        if wait:
            _follow(client, name, reply.deployment.generation, wait_timeout)
        else:
            err.print(rollout_line(reply.rollout))


@click.command()
@click.argument("name")
@_opt("--to", "to_version", env="LMAAS_ROLLBACK_TO", type=int, default=0,
      help="Serve this version alone (default: the previous deployment).")
@_opt("--wait", env="LMAAS_WAIT", is_flag=True, help="Follow the rollout; exit 1 unless every worker ACKs.")
@_opt("--wait-timeout", env="LMAAS_WAIT_TIMEOUT", type=float, default=600.0,
      help="Give up waiting after this many seconds.")
@_client_options
@_errors
def rollback(name: str, to_version: int, wait: bool, wait_timeout: float, address: str, token: str | None,
             timeout: float) -> None:
    """Go back to the previous deployment of model NAME, or to one version with --to."""
    from lmaas.cli._render import err, rollout_line, spec_text

    with _client(address, token, timeout) as client:
        reply = client.rollback(name, to_version=to_version)
        err.print(f"{name}: generation {reply.deployment.generation} serves {spec_text(reply.deployment.spec)}")
        if wait:
            _follow(client, name, reply.deployment.generation, wait_timeout)
        else:
            err.print(rollout_line(reply.rollout))


@click.command()
@_client_options
@_errors
def status(address: str, token: str | None, timeout: float) -> None:
    """Deployments, their rollouts, and the connected workers."""
    from lmaas.cli._render import deployments_table, out, workers_table

    with _client(address, token, timeout) as client:
        listed = client.list_deployments()
        out.print(deployments_table(listed.deployments, listed.rollouts))
        out.print(workers_table(client.workers()))
