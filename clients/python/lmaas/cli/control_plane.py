"""``lmaas control-plane``: run one control-plane replica (the server; the client commands are in
:mod:`lmaas.cli.control`).

Its options are :class:`lmaas.control_plane.settings.ControlPlaneSettings`' fields (lmaas.cli._settings); only
logging is declared here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from lmaas.cli._options import option as _opt
from lmaas.cli._settings import DURATION, build_settings, settings_options
from lmaas.control_plane.settings import ControlPlaneSettings
from lmaas.logs import setup_logging

__all__ = ["control_plane", "control_plane_settings", "serve"]

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)

# What a field needs beyond its type, bounds, default and description (those come from ControlPlaneSettings).
_TWEAKS: dict[str, dict[str, object]] = {
    "artifact_dir": {"type": click.Path(file_okay=False, path_type=Path)},
    "http_port": {"default": 8080},  # the library default is -1 (no REST port): see ControlPlaneSettings
    "grace_seconds": {"decls": ("--grace",), "env": "LMAAS_GRACE"},  # documented before the field had its name
    "bootstrap_token_file": {"type": click.Path(dir_okay=False, path_type=Path)},
    "tls_cert": {"type": _FILE},
    "tls_key": {"type": _FILE},
    "tls_client_ca": {"type": _FILE},
    "rollout_timeout": {"type": DURATION},
    "bootstrap_token": {"show_default": False},
    "bootstrap_worker_token": {"show_default": False},
}


@click.command("control-plane")
@settings_options(ControlPlaneSettings, _TWEAKS)
@_opt("--log-level", env="LMAAS_LOG_LEVEL", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@_opt("--log-format", env="LMAAS_LOG_FORMAT", default="text", type=click.Choice(["text", "json"]))
def control_plane(log_level: str, log_format: str, **options: Any) -> None:
    """Run a control-plane replica: model registry, artifacts, deployments, and the workers' sync.

    Replicas are stateless: run several against one etcd (and one shared artifact directory).
    """
    settings = control_plane_settings(options)
    setup_logging(log_level, log_format)
    asyncio.run(serve(settings))


def control_plane_settings(options: dict[str, Any]) -> ControlPlaneSettings:
    """The settings of ``lmaas control-plane`` from its parsed options (a usage error for what does not fit).

    Built from the options alone: the command has read each ``LMAAS_*`` variable already, under its flag's name.
    """
    return build_settings(ControlPlaneSettings, {"replica_id": options.pop("replica_id", None) or None, **options})


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


