"""The worker's settings: one typed object, and the one source of ``lmaas worker``'s options.

Each field is a flag ``--field-name`` reading ``LMAAS_FIELD_NAME`` (lmaas.cli._settings generates them): its
default is the flag's default and its description the flag's help, so write descriptions for the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, Field, model_validator

__all__ = ["WorkerSettings"]


class WorkerSettings(BaseModel):
    model_repository: Path | None = Field(
        None,
        description="serve REPO/<model>/<version>/model.{onnx,pt,pt2} (+ optional REPO/<model>/config.{json,yaml})",
    )
    control_plane: str | None = Field(
        None, description="HOST:PORT[,HOST:PORT...] of control-plane replicas to sync from"
    )
    host: str = Field("127.0.0.1", description="address to bind (0.0.0.0 for all interfaces)")
    grpc_port: int = Field(8001, ge=0, le=65535, description="OIP v2 gRPC port (0 = any free port)")
    http_port: int = Field(
        8000, ge=0, le=65535,
        description="OIP v2 HTTP/REST port, with Triton's binary tensor extension (0 = any free port)",
    )
    metrics_port: int = Field(8002, ge=0, le=65535, description="Prometheus /metrics port (0 = any free port)")
    drain_timeout: float = Field(30.0, ge=0, description="seconds in-flight requests get to finish on SIGTERM")
    max_message_bytes: int = Field(
        64 << 20, ge=1024,
        description="largest gRPC message / HTTP request body accepted, after decompression (larger: "
        "RESOURCE_EXHAUSTED / 413)",
    )
    max_elements: int = Field(1 << 26, ge=1, description="largest element count of one input tensor")
    worker_id: str = Field("", description="identity reported to the control plane (default: host name + port)")
    pool: str = Field("default", description="worker pool this worker serves")
    lazy_load_wait: float = Field(
        10.0, ge=0, description="seconds a request waits for a lazy version (deploy --lazy) to load; then UNAVAILABLE"
    )
    max_download_rate: float = Field(
        256 << 20, ge=0,
        description="artifact download limit, bytes/s (0 = none): deploys must not starve models that serve",
    )
    cache_dir: Path = Field(Path(".lmaas/cache"), description="artifact cache for models pushed by the control plane")
    cache_size: int | None = Field(
        None, gt=0,
        description="most the artifact cache may hold, as 2GiB, 500MB or bytes (default: no limit); the least "
        "recently used artifacts that no process sharing the --cache-dir uses are evicted",
    )
    trace_file: Path | None = Field(
        None,
        description="trace file for Triton's TraceSetting (level TIMESTAMPS); clients may not change it at run time",
    )
    token: str | None = Field(None, description="bearer token presented to the control plane")
    memory_limit: int | None = Field(
        None, gt=0,
        description="memory this worker may use, as 300MiB, 2GiB or bytes (default: the cgroup limit, else RAM); "
        "reported to the control plane with the measured memory of each loaded version",
    )
    report_every: float = Field(
        15.0, ge=0.1, description="seconds between memory and latency reports to the control plane"
    )
    require_api_key: bool = Field(
        False,
        description="inference calls must send 'authorization: Bearer KEY' with a key from --api-key-file / "
        "LMAAS_API_KEYS",
    )
    api_keys: tuple[str, ...] = Field((), description="accepted API keys, comma-separated (kept hashed in memory)")
    tls_cert: Path | None = Field(
        None, description="PEM certificate served on the gRPC and HTTP ports (and presented to the control plane)"
    )
    tls_key: Path | None = Field(None, description="PEM private key of --tls-cert")
    tls_client_ca: Path | None = Field(
        None, description="require inference clients to present a certificate signed by this CA"
    )
    tls_ca: Path | None = Field(
        None,
        description="CA of the control plane's certificate: connect to it over TLS (mTLS with --tls-cert/--tls-key)",
    )
    autotune: bool = Field(
        True,
        description="measure thread and instance counts of each version at load (off: use the configured or default "
        "counts)",
    )
    reuse_port: bool = Field(False, description="bind the gRPC and HTTP ports with SO_REUSEPORT (--processes children)")
    serve_metrics: bool = Field(True, description="serve /metrics (a --processes supervisor serves it instead)")

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        from lmaas.protos.serving import tls_files  # grpc only when settings are checked, not at CLI import

        tls_files(self.tls_cert, self.tls_key, self.tls_client_ca)
        return self
