"""``lmaas worker``: serve models over the Open Inference Protocol v2.

Its options are :class:`lmaas.server.settings.WorkerSettings`' fields (lmaas.cli._settings); the few declared here
are not settings: how many processes, where keys are read from, logging.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from lmaas.cli._options import option as _opt
from lmaas.cli._settings import SIZE, build_settings, settings_options
from lmaas.logs import setup_logging
from lmaas.server.settings import WorkerSettings

__all__ = ["worker"]

_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)

# What a field needs beyond its type, bounds, default and description (those come from WorkerSettings).
_TWEAKS: dict[str, dict[str, object]] = {
    "model_repository": {"type": _DIR},
    "cache_dir": {"type": click.Path(file_okay=False, path_type=Path)},
    "cache_size": {"type": SIZE},
    "memory_limit": {"type": SIZE},
    "trace_file": {"type": click.Path(dir_okay=False, path_type=Path)},
    "api_keys": {"type": str, "default": "", "show_default": False},  # comma-separated here, a tuple in settings
    "tls_cert": {"type": _FILE},
    "tls_key": {"type": _FILE},
    "tls_client_ca": {"type": _FILE},
    "tls_ca": {"type": _FILE},
    "reuse_port": {"hidden": True},
    "serve_metrics": {"decls": ("--metrics/--no-metrics",), "hidden": True},
}


@click.command()
@settings_options(WorkerSettings, _TWEAKS)
@_opt("--api-key-file", env="LMAAS_API_KEY_FILE", type=_FILE, help="Accepted API keys, one per line.")
@_opt(
    "--processes",
    env="LMAAS_PROCESSES",
    type=click.IntRange(1, 256),
    default=1,
    help="Worker processes sharing the gRPC and HTTP ports (SO_REUSEPORT) with one aggregated /metrics.",
)
@_opt("--log-level", env="LMAAS_LOG_LEVEL", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@_opt("--log-format", env="LMAAS_LOG_FORMAT", default="text", type=click.Choice(["text", "json"]))
def worker(log_level: str, log_format: str, processes: int, api_key_file: Path | None, **options: object) -> None:
    """Run a worker: the stateless data plane (Open Inference Protocol v2 over gRPC and HTTP).

    Serve a local model repository, or models the control plane deploys, or both.
    """
    settings = worker_settings(options, api_key_file)
    setup_logging(log_level, log_format)
    if processes > 1:
        from lmaas.server.multiprocess import supervise

        raise SystemExit(
            supervise(
                sys.argv[2:],
                processes=processes,
                host=settings.host,
                grpc_port=settings.grpc_port,
                http_port=settings.http_port,
                metrics_port=settings.metrics_port,
            )
        )

    async def run() -> None:
        from lmaas.protos.serving import run_until_signal
        from lmaas.server.app import Worker

        w = Worker(settings)
        grpc_port, metrics_port = await w.start()
        # Tests and scripts read the bound ports from this line (port 0 = any free port); new fields go last.
        print(
            f"lmaas worker listening grpc={settings.host}:{grpc_port} metrics={settings.host}:{metrics_port}"
            f" http={settings.host}:{w.http_port}",
            flush=True,
        )
        await run_until_signal(w)

    asyncio.run(run())


def worker_settings(options: dict[str, object], api_key_file: Path | None = None) -> WorkerSettings:
    """The settings of ``lmaas worker`` from its parsed options (a usage error for what does not fit)."""
    from lmaas.server.auth import read_api_keys

    keys = read_api_keys(str(options.get("api_keys") or ""))
    if api_key_file is not None:
        keys += read_api_keys(api_key_file.read_text())
    settings = build_settings(WorkerSettings, {**options, "api_keys": keys})
    if settings.require_api_key and not keys:
        raise click.UsageError("--require-api-key needs keys: --api-key-file FILE or LMAAS_API_KEYS")
    if settings.model_repository is None and settings.control_plane is None:
        raise click.UsageError("give --model-repository DIR, --control-plane HOST:PORT, or both")
    return settings
