"""The worker's settings: one typed object, filled by the CLI (flags or LMAAS_* variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

__all__ = ["WorkerSettings"]


class WorkerSettings(BaseModel):
    host: str = Field("127.0.0.1", description="address to bind the gRPC, HTTP and metrics ports to")
    grpc_port: int = Field(8001, ge=0, le=65535, description="OIP v2 gRPC port; 0 = any free port")
    http_port: int = Field(8000, ge=0, le=65535, description="OIP v2 HTTP/REST port (as Triton); 0 = any free port")
    metrics_port: int = Field(8002, ge=0, le=65535, description="Prometheus /metrics port; 0 = any free port")
    model_repository: Path | None = Field(None, description="serve every model in this directory")
    control_plane: str | None = Field(None, description="HOST:PORT[,HOST:PORT] of control-plane replicas")
    worker_id: str = Field("", description="identity reported to the control plane (default: host name + port)")
    pool: str = Field("default", description="worker pool this worker serves")
    cache_dir: Path = Field(Path(".lmaas/cache"), description="where artifacts from the control plane are cached")
    cache_size: int | None = Field(
        None, gt=0, description="bytes the artifact cache may hold; least recently used unused artifacts are evicted"
    )
    max_download_rate: float = Field(
        256 << 20, ge=0, description="artifact download limit in bytes/s (0 = none), so deploys spare serving models"
    )
    memory_limit: int | None = Field(
        None, gt=0, description="bytes this worker may use, reported to the control plane (default: cgroup or RAM)"
    )
    report_every: float = Field(15.0, gt=0, description="seconds between memory/latency reports to the control plane")
    trace_file: Path | None = Field(
        None, description="where TraceSetting traces are written (Triton's JSON); fixed at start, not via the API"
    )
    drain_timeout: float = Field(30.0, ge=0, description="seconds in-flight requests may take to finish on shutdown")
    max_message_bytes: int = Field(
        64 << 20, ge=1024, description="largest gRPC message and HTTP request body (after decompression) accepted"
    )
    max_elements: int = Field(1 << 26, ge=1, description="largest element count of one input tensor")
    autotune: bool = Field(
        True,
        description="measure thread and instance counts of each version at load (off: use the configured or default "
        "counts)",
    )
    reuse_port: bool = Field(False, description="bind the gRPC and HTTP ports with SO_REUSEPORT (--processes children)")
    serve_metrics: bool = Field(True, description="serve /metrics (a --processes supervisor serves it instead)")
    token: str | None = Field(None, description="bearer token presented to the control plane")
    require_api_key: bool = Field(False, description="inference calls must carry one of api_keys")
    api_keys: tuple[str, ...] = Field((), description="accepted API keys (kept hashed in memory)")
    tls_cert: Path | None = Field(
        None, description="PEM certificate: served on the gRPC and HTTP ports, presented to the control plane"
    )
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(
        None, description="require client certificates signed by this CA on the gRPC and HTTP ports"
    )
    tls_ca: Path | None = Field(None, description="CA that signed the control plane's certificate (TLS to it)")
