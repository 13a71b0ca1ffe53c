"""Control-plane client commands: ``model push|list|versions|optimize``, ``deploy``, ``rollback``, ``status`` and
``token create|list|revoke`` (clients of ``--control-plane`` / ``$LMAAS_CONTROL_PLANE``; they send ``$LMAAS_TOKEN`` and
speak TLS with ``--tls-ca`` / ``$LMAAS_TLS_CA``). The server, ``lmaas control-plane``, is in
:mod:`lmaas.cli.control_plane`."""

from __future__ import annotations

import functools
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from lmaas.cli._options import F
from lmaas.cli._options import option as _opt
from lmaas.protos.errors import LMaaSError
from lmaas.protos.formats import FORMATS as _FORMATS

__all__ = ["Connection", "deploy", "model", "rollback", "status", "token"]


@dataclass(frozen=True)
class Connection:
    """How a client command reaches the control plane (its common options)."""

    address: str
    token: str | None
    timeout: float
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None

    def client(self) -> Any:
        from lmaas.client.control import ControlPlaneClient
        from lmaas.protos.serving import tls_files

        try:
            tls_files(self.tls_cert, self.tls_key)  # the servers' one pair check
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        return ControlPlaneClient(
            self.address, token=self.token, timeout=self.timeout, tls_ca=self.tls_ca, tls_cert=self.tls_cert,
            tls_key=self.tls_key, server_name=self.tls_server_name,
        )


_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_CLIENT_OPTIONS = (
    _opt("--control-plane", "address", env="LMAAS_CONTROL_PLANE", default="127.0.0.1:8090",
         help="HOST:PORT of the control plane."),
    _opt("--token", env="LMAAS_TOKEN", default=None, help="Bearer token sent with every call."),
    _opt("--timeout", env="LMAAS_TIMEOUT", type=float, default=30.0, help="Deadline of each call, seconds."),
    _opt("--tls-ca", env="LMAAS_TLS_CA", type=_FILE,
         help="Connect over TLS, trusting this CA (PEM) for the control plane's certificate."),
    _opt("--tls-cert", env="LMAAS_TLS_CERT", type=_FILE, help="Client certificate (PEM) for mutual TLS."),
    _opt("--tls-key", env="LMAAS_TLS_KEY", type=_FILE, help="Private key (PEM) of --tls-cert."),
    _opt("--tls-server-name", env="LMAAS_TLS_SERVER_NAME", default=None,
         help="Name to check the server certificate against (default: the host of --control-plane)."),
)


def _client_options(fn: F) -> F:
    """Adds the connection options; the command receives them as one ``conn: Connection``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, address: str, token: str | None, timeout: float, tls_ca: Path | None,
                tls_cert: Path | None, tls_key: Path | None, tls_server_name: str | None, **kwargs: Any) -> Any:
        conn = Connection(address, token, timeout, tls_ca, tls_cert, tls_key, tls_server_name)
        return fn(*args, conn=conn, **kwargs)

    decorated: Any = wrapper
    for option in reversed(_CLIENT_OPTIONS):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]


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


# -- models -----------------------------------------------------------------------------------------------


@click.group()
def model() -> None:
    """Models and their immutable versions."""


model.add_command(importlib.import_module("lmaas.cli.convert").convert)  # `lmaas model convert` (offline)


@model.command("push")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@_opt("--config", env="LMAAS_CONFIG", type=click.Path(exists=True, dir_okay=False, path_type=Path),
      help="Model configuration, JSON or YAML (see lmaas.server.config).")
@_opt("--format", "fmt", env="LMAAS_FORMAT", type=click.Choice(list(_FORMATS)),
      help="Artifact format (default: from the file name: .onnx, .pt, .pt2; a directory is llm).")
@_opt("--description", env="LMAAS_DESCRIPTION", default="", help="Free text for the version.")
@_opt("--parent", "parent_version", env="LMAAS_PARENT", type=int, default=0, help="The version this one derives from.")
@_opt("--quiet", "-q", env="LMAAS_QUIET", is_flag=True, help="No progress bar.")
@_client_options
@_errors
def push(name: str, file: Path, config: Path | None, fmt: str | None, description: str, parent_version: int,
         quiet: bool, conn: Connection) -> None:
    """Upload FILE as the next version of model NAME; prints the new version number.

    FILE may be a directory (an LLM version: config.json, tokenizer files, weights): its files are uploaded
    once each (those the control plane holds are skipped, a cut upload resumes) and registered as one version
    whose digest is that of its manifest. Routing does not change: deploy the version with `lmaas deploy`.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from lmaas.cli._render import err, out

    with conn.client() as client, Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=err, disable=quiet, transient=True,
    ) as bar:
        task = bar.add_task(f"uploading {file.name}", total=file.stat().st_size if file.is_file() else None)
        reply = client.upload(
            name, file, format=fmt, config=config, description=description, parent_version=parent_version,
            progress=lambda sent, total: bar.update(task, completed=sent, total=total),
            timeout=max(conn.timeout, 3600.0),
        )
    v = reply.version
    what = "is already" if reply.existing else "pushed as"
    err.print(f"{name}: {file.name} {what} version {v.version} (sha256:{v.digest[:12]}, {v.size_bytes} bytes)")
    out.print(str(v.version))


@model.command("list")
@_client_options
@_errors
def list_models(conn: Connection) -> None:
    """Every model."""
    from lmaas.cli._render import models_table, out

    with conn.client() as client:
        out.print(models_table(client.list_models()))


@model.command("versions")
@click.argument("name")
@_client_options
@_errors
def versions(name: str, conn: Connection) -> None:
    """Every version of model NAME, and which ones serve."""
    from lmaas.cli._render import out, versions_table
    from lmaas.protos.errors import NotFound

    with conn.client() as client:
        listed = client.list_versions(name)
        try:
            spec = client.get_deployment(name).deployment.spec
        except NotFound:
            spec = None
        out.print(versions_table(name, listed, spec))
        if any(v.parent_version for v in listed):
            from lmaas.optimize.lineage import lineage_tree

            out.print(lineage_tree(name, listed))


_RECIPE_NAMES = ("int8-dynamic", "int8-static", "fp16", "ort-optimize", "tune", "prune", "merge", "compress")


@model.command("optimize")
@click.argument("name")
@click.argument("version", type=int)
@_opt("--recipe", env="LMAAS_RECIPE", required=True, help=f"One of {', '.join(_RECIPE_NAMES)}.")
@_opt("--eval", "eval_file", env="LMAAS_EVAL", type=_FILE,
      help="Eval data (.npz of named inputs, optionally expected outputs); default: sampled inputs, parent's outputs.")
@_opt("--calibration", env="LMAAS_CALIBRATION", type=_FILE, help="Calibration data (.npz) for int8-static.")
@_opt("--max-error", env="LMAAS_MAX_ERROR", type=float, default=None,
      help="Largest max relative error accepted (default per recipe: int8 0.05, fp16 0.01).")
@_opt("--deploy-canary", env="LMAAS_DEPLOY_CANARY", type=click.IntRange(0, 100), default=0,
      help="Deploy the derived version as a canary of W percent beside the current stable version.")
@_opt("--with", "with_versions", env="LMAAS_WITH", default="", help="merge: the other versions, V2,V3.")
@_opt("--sparsity", env="LMAAS_SPARSITY", type=float, default=0.5, help="prune: fraction of weights zeroed.")
@_opt("--structured", env="LMAAS_STRUCTURED", is_flag=True, help="prune: whole rows/channels by L2 norm.")
@_opt("--threads", env="LMAAS_OPTIMIZE_THREADS", type=int, default=1, help="Intra-op threads of the timing.")
@_opt("--seconds", env="LMAAS_OPTIMIZE_SECONDS", type=float, default=1.0, help="Timing per model and batch size.")
@_client_options
@_errors
def optimize(name: str, version: int, recipe: str, eval_file: Path | None, calibration: Path | None,
             max_error: float | None, deploy_canary: int, with_versions: str, sparsity: float, structured: bool,
             threads: int, seconds: float, conn: Connection) -> None:
    """Derive a version of NAME VERSION with a recipe, measured beside it; prints "NAME: derived version N ...".

    The work runs here: the parent is downloaded, optimised, timed beside the parent (batch 1 and 8, same
    threads) and compared on the eval data; over the gate nothing is registered (FAILED_PRECONDITION).
    """
    from lmaas.cli._render import err, out
    from lmaas.optimize import optimize as run
    from lmaas.optimize import summary
    from lmaas.protos.errors import InvalidArgument

    try:
        others = [int(v) for v in with_versions.split(",") if v.strip()]
    except ValueError:
        raise InvalidArgument(f"--with {with_versions!r}: expected version numbers, e.g. 2,3") from None
    with conn.client() as client:
        result = run(client, name, version, recipe, eval_file=eval_file, calibration_file=calibration,
                     max_error=max_error, deploy_canary=deploy_canary, with_versions=others,
                     options={"sparsity": sparsity, "structured": structured}, threads=threads, seconds=seconds,
                     progress=lambda step: err.print(f"[dim]{step}...[/]"))
    assert result.version is not None
    canary = f"; canary {deploy_canary}%" if deploy_canary else ""
    out.print(f"{name}: derived version {result.version.version} of version {version} by "
              f"{summary(result.derivation)}{canary}", soft_wrap=True, highlight=False)


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
@_opt("--lazy", env="LMAAS_LAZY", is_flag=True,
      help="Load on first request: workers download now, load when a request needs it, unload when idle for room.")
@_opt("--wait", env="LMAAS_WAIT", is_flag=True, help="Follow the rollout; exit 1 unless every worker ACKs.")
@_opt("--wait-timeout", env="LMAAS_WAIT_TIMEOUT", type=float, default=600.0,
      help="Give up waiting after this many seconds.")
@_opt("--expected-generation", env="LMAAS_EXPECTED_GENERATION", type=int, default=0,
      help="Apply only if the deployment is at this generation.")
@_client_options
@_errors
def deploy(name: str, version: int, canary: int, weight: int, pools: tuple[str, ...], lazy: bool, wait: bool,
           wait_timeout: float, expected_generation: int, conn: Connection) -> None:
    """Serve VERSION of model NAME (optionally with a weighted canary)."""
    from lmaas.cli._render import err, rollout_line, spec_text

    with conn.client() as client:
        reply = client.deploy(name, version, canary=canary, weight=weight, pools=pools,
                              expected_generation=expected_generation, lazy=lazy)
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
def rollback(name: str, to_version: int, wait: bool, wait_timeout: float, conn: Connection) -> None:
    """Go back to the previous deployment of model NAME, or to one version with --to."""
    from lmaas.cli._render import err, rollout_line, spec_text

    with conn.client() as client:
        reply = client.rollback(name, to_version=to_version)
        err.print(f"{name}: generation {reply.deployment.generation} serves {spec_text(reply.deployment.spec)}")
        if wait:
            _follow(client, name, reply.deployment.generation, wait_timeout)
        else:
            err.print(rollout_line(reply.rollout))


@click.command()
@_client_options
@_errors
def status(conn: Connection) -> None:
    """Deployments, their rollouts, and the connected workers."""
    from lmaas.cli._render import deployments_table, out, workers_table

    with conn.client() as client:
        listed = client.list_deployments()
        out.print(deployments_table(listed.deployments, listed.rollouts))
        out.print(workers_table(client.workers()))


# -- tokens -------------------------------------------------------------------------------------------------

_ROLES = ("reader", "deployer", "worker", "admin")


@click.group()
def token() -> None:
    """API tokens of the control plane (needs an admin token).

    Roles: reader (list, get, watch), deployer (reader + push, deploy, rollback),
    worker (what a worker needs: sync and artifact downloads), admin (everything, tokens included).
    """


@token.command("create")
@_opt("--role", env="LMAAS_TOKEN_ROLE", type=click.Choice(_ROLES), required=True, help="What the token may do.")
@_opt("--description", env="LMAAS_TOKEN_DESCRIPTION", default="", help="Whose token it is, what for.")
@_client_options
@_errors
def create_token(role: str, description: str, conn: Connection) -> None:
    """Create a token; prints it once on stdout (it cannot be shown again)."""
    from lmaas.cli._render import err, out

    with conn.client() as client:
        reply = client.create_token(role, description=description)
    err.print(f"token {reply.token.id} ({role}) created: store it now, it is not shown again")
    out.print(reply.secret, soft_wrap=True)


@token.command("list")
@_opt("--all", "include_revoked", env="LMAAS_TOKEN_ALL", is_flag=True, help="Also list revoked tokens.")
@_client_options
@_errors
def list_tokens(include_revoked: bool, conn: Connection) -> None:
    """Every token (ids, roles, who created them; never secrets)."""
    from lmaas.cli._render import out, tokens_table

    with conn.client() as client:
        out.print(tokens_table(client.list_tokens(include_revoked=include_revoked)))


@token.command("revoke")
@click.argument("token_id", metavar="ID")
@_client_options
@_errors
def revoke_token(token_id: str, conn: Connection) -> None:
    """Revoke token ID: calls with it fail from now on."""
    from lmaas.cli._render import err

    with conn.client() as client:
        revoked = client.revoke_token(token_id)
    err.print(f"token {revoked.id} revoked")
