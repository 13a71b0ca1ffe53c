"""Settings of one control-plane process, filled by the CLI (flags or ``LMAAS_*`` variables)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ControlPlaneSettings", "parse_duration"]

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Seconds from ``60s``, ``1.5m``, ``500ms``, ``2h`` or a bare number of seconds; ValueError otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value).strip())
        if match is None:
            raise ValueError(f"invalid duration {value!r}: expected e.g. 60s, 1.5m, 500ms, 2h (0 = off)")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds < 0:
        raise ValueError(f"invalid duration {value!r}: negative")
    return seconds


class ControlPlaneSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LMAAS_", extra="ignore")

    store: str = Field("sqlite:///lmaas-control.db", description="etcd://HOST:PORT[,HOST:PORT] or sqlite:///PATH")
    artifact_dir: Path = Field(Path("lmaas-artifacts"), description="directory of the content-addressed artifacts")
    host: str = Field("127.0.0.1", description="address the gRPC, REST and metrics servers bind to")
    grpc_port: int = Field(8090, ge=0, le=65535, description="gRPC port; 0 = any free port")
    http_port: int = Field(
        -1, ge=-1, le=65535, description="REST API port (/api/v1, /openapi.json); 0 = any free port, -1 = none"
    )
    metrics_port: int = Field(8091, ge=-1, le=65535, description="Prometheus port; 0 = any free port, -1 = none")
    max_artifact_bytes: int = Field(16 << 30, gt=0, description="largest artifact accepted, in bytes")
    max_message_bytes: int = Field(8 << 20, ge=1 << 20, description="largest gRPC message accepted, in bytes")
    worker_lease_ttl: int = Field(10, ge=2, description="seconds a worker's presence outlives a dead control plane")
    history_limit: int = Field(50, ge=2, description="deployment records kept per model")
    keep_previous_warm: bool = Field(True, description="workers keep the previous stable version loaded (rollback)")
    grace_seconds: float = Field(10.0, ge=0, description="how long in-flight RPCs may finish at shutdown")
    replica_id: str = Field(default_factory=socket.gethostname, description="name of this replica, shown per worker")
    auth: bool = Field(True, description="require a token (or a worker client certificate) on every call")
    bootstrap_token_file: Path | None = Field(
        None, description="admin token imported at start; if the file is absent, a new token is written to it (0600)"
    )
    bootstrap_token: SecretStr | None = Field(
        None, description="admin token imported at start (LMAAS_BOOTSTRAP_TOKEN); takes precedence over the file"
    )
    bootstrap_worker_token: SecretStr | None = Field(
        None, description="a worker-role token imported at start (LMAAS_BOOTSTRAP_WORKER_TOKEN), e.g. from a Secret"
    )
    tls_cert: Path | None = Field(None, description="PEM certificate served on the gRPC port (TLS)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(None, description="require client certificates signed by this CA (mTLS)")
    tls_worker_cn: str = Field(
        "*", description="glob on a client certificate's common name that grants the worker role (without a token)"
    )
    audit_limit: int = Field(10_000, ge=100, description="audit entries kept in the store (oldest trimmed)")
    rollout_timeout: float = Field(
        600.0, description="a rollout not acknowledged by every worker within this fails and the previous deployment "
        "is restored (a duration: 60s, 10m; 0 = never); enforced by the elected leader replica"
    )
    presence_grace: float = Field(
        3.0, ge=0, description="seconds a worker whose stream ended still counts as pending in rollouts"
    )
    gc_grace: float = Field(
        3600.0, ge=0, description="seconds before an abandoned partial upload or an unreferenced blob is deleted"
    )

    prometheus_url: str = Field(
        "", description="a Prometheus server that scrapes the workers: the console's charts query it (p50/p99, TTFT)"
    )

    @field_validator("rollout_timeout", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)
