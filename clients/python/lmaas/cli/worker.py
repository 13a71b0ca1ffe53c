"""``lmaas worker``: serve models over the Open Inference Protocol v2."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from lmaas.cli._options import option as _opt
from lmaas.logs import setup_logging


@click.command()
@_opt(
    "--model-repository",
    env="LMAAS_MODEL_REPOSITORY",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Serve REPO/<model>/<version>/model.{onnx,pt,pt2} (+ optional REPO/<model>/config.{json,yaml}).",
)
@_opt(
    "--control-plane",
    env="LMAAS_CONTROL_PLANE",
    help="HOST:PORT[,HOST:PORT...] of control-plane replicas to sync from.",
)
@_opt("--host", env="LMAAS_HOST", default="127.0.0.1", help="Address to bind (0.0.0.0 for all interfaces).")
@_opt("--grpc-port", env="LMAAS_GRPC_PORT", type=int, default=8001, help="OIP v2 gRPC port (0 = any free port).")
@_opt(
    "--http-port",
    env="LMAAS_HTTP_PORT",
    type=int,
    default=8000,
    help="OIP v2 HTTP/REST port, with Triton's binary tensor extension (0 = any free port).",
)
@_opt("--metrics-port", env="LMAAS_METRICS_PORT", type=int, default=8002, help="Prometheus /metrics port (0 = any).")
@_opt(
    "--drain-timeout",
    env="LMAAS_DRAIN_TIMEOUT",
    type=float,
    default=30.0,
    help="Seconds in-flight requests get to finish on SIGTERM.",
)
@_opt(
    "--max-message-bytes",
    env="LMAAS_MAX_MESSAGE_BYTES",
    type=int,
    default=64 << 20,
    help="Largest gRPC message / HTTP request body accepted (larger: RESOURCE_EXHAUSTED / 413).",
)
@_opt("--worker-id", env="LMAAS_WORKER_ID", default="", help="Identity reported to the control plane.")
@_opt("--pool", env="LMAAS_POOL", default="default", help="Worker pool this worker serves.")
@_opt(
    "--max-download-rate",
    env="LMAAS_MAX_DOWNLOAD_RATE",
    type=click.FloatRange(min=0),
    default=float(256 << 20),
    help="Artifact download limit, bytes/s (0 = none): deploys must not starve models that serve.",
)
@_opt(
    "--cache-dir",
    env="LMAAS_CACHE_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".lmaas/cache"),
    help="Artifact cache for models pushed by the control plane.",
)
@_opt(
    "--cache-size",
    env="LMAAS_CACHE_SIZE",
    default=None,
    help="Most the artifact cache may hold, as 2GiB, 500MB or bytes (default: no limit); the least recently used "
    "artifacts that no process sharing the --cache-dir uses are evicted.",
)
@_opt(
    "--trace-file",
    env="LMAAS_TRACE_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Trace file for Triton's TraceSetting (level TIMESTAMPS); clients may not change it at run time.",
)
@_opt("--token", env="LMAAS_TOKEN", default=None, help="Bearer token presented to the control plane.")
@_opt(
    "--memory-limit",
    env="LMAAS_MEMORY_LIMIT",
    default=None,
    help="Memory this worker may use, as 300MiB, 2GiB or bytes (default: the cgroup limit, else RAM); reported "
    "to the control plane with the measured memory of each loaded version.",
)
@_opt(
    "--report-every",
    env="LMAAS_REPORT_EVERY",
    type=click.FloatRange(min=0.1),
    default=15.0,
    help="Seconds between memory and latency reports to the control plane.",
)
@_opt(
    "--require-api-key",
    env="LMAAS_REQUIRE_API_KEY",
    is_flag=True,
    default=False,
    help="Inference calls must send 'authorization: Bearer KEY' with a key from --api-key-file / LMAAS_API_KEYS.",
)
@_opt(
    "--api-key-file",
    env="LMAAS_API_KEY_FILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Accepted API keys, one per line.",
)
@_opt("--api-keys", env="LMAAS_API_KEYS", default="", show_default=False, help="Accepted API keys, comma-separated.")
@_opt(
    "--tls-cert",
    env="LMAAS_TLS_CERT",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM certificate served on the gRPC and HTTP ports (and presented to the control plane).",
)
@_opt(
    "--tls-key",
    env="LMAAS_TLS_KEY",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM private key of --tls-cert.",
)
@_opt(
    "--tls-client-ca",
    env="LMAAS_TLS_CLIENT_CA",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Require inference clients to present a certificate signed by this CA.",
)
@_opt(
    "--tls-ca",
    env="LMAAS_TLS_CA",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CA of the control plane's certificate: connect to it over TLS (mTLS with --tls-cert/--tls-key).",
)
@_opt(
    "--processes",
    env="LMAAS_PROCESSES",
    type=click.IntRange(1, 256),
    default=1,
    help="Worker processes sharing the gRPC and HTTP ports (SO_REUSEPORT) with one aggregated /metrics.",
)
@_opt(
    "--autotune/--no-autotune",
    env="LMAAS_AUTOTUNE",
    default=True,
    help="Measure thread and instance counts of each version at load (off: use the configured or default counts).",
)
@_opt("--reuse-port/--no-reuse-port", env="LMAAS_REUSE_PORT", default=False, hidden=True)
@_opt("--metrics/--no-metrics", "serve_metrics", env="LMAAS_SERVE_METRICS", default=True, hidden=True)
@_opt("--log-level", env="LMAAS_LOG_LEVEL", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@_opt("--log-format", env="LMAAS_LOG_FORMAT", default="text", type=click.Choice(["text", "json"]))
def worker(log_level: str, log_format: str, **options: object) -> None:
    """Run a worker: the stateless data plane (Open Inference Protocol v2 over gRPC and HTTP).

    Serve a local model repository, or models the control plane deploys, or both.
    """
    from lmaas.protos.serving import run_until_signal
    from lmaas.server.app import Worker
    from lmaas.server.auth import read_api_keys
    from lmaas.server.settings import WorkerSettings

    setup_logging(log_level, log_format)
    processes = options.pop("processes")
    if isinstance(processes, int) and processes > 1:
        from lmaas.server.multiprocess import supervise

        raise SystemExit(
            supervise(
                sys.argv[2:],
                processes=processes,
                host=str(options["host"]),
                grpc_port=int(str(options["grpc_port"])),
                http_port=int(str(options["http_port"])),
                metrics_port=int(str(options["metrics_port"])),
            )
        )
    key_file = options.pop("api_key_file")
    limit = options.pop("memory_limit")
    if limit is not None:
        from lmaas.server.memory import parse_size

        try:
            options["memory_limit"] = parse_size(str(limit))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--memory-limit") from None
    if (cache_size := options.pop("cache_size")) is not None:
        from lmaas.server.memory import parse_size

        try:
            options["cache_size"] = parse_size(str(cache_size))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--cache-size") from None
    keys = read_api_keys(str(options.pop("api_keys") or ""))
    if isinstance(key_file, Path):
        keys += read_api_keys(key_file.read_text())
    settings = WorkerSettings.model_validate({**options, "api_keys": keys})
    if settings.require_api_key and not keys:
        raise click.UsageError("--require-api-key needs keys: --api-key-file FILE or LMAAS_API_KEYS")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if settings.model_repository is None and settings.control_plane is None:
        raise click.UsageError("give --model-repository DIR, --control-plane HOST:PORT, or both")

    async def run() -> None:
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
