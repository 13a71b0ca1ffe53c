"""Settings of one control-plane process, filled by the CLI (flags or ``LMAAS_*`` variables)."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_STORE", "ControlPlaneSettings", "parse_duration"]

DEFAULT_STORE = "sqlite:///.lmaas/control.db"  # the one default: `lmaas control-plane` and the library agree

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
    """One control-plane replica; each field is also ``lmaas control-plane --field-name`` / ``LMAAS_FIELD_NAME``
    (lmaas.cli._settings generates the options: the default is the flag's, the description its help)."""

    model_config = SettingsConfigDict(env_prefix="LMAAS_", extra="ignore")

    store: str = Field(
        DEFAULT_STORE,
        description="metadata store: etcd://HOST:PORT[,HOST:PORT...] or sqlite:///PATH (embedded, one machine)",
    )
    artifact_dir: Path = Field(
        Path(".lmaas/artifacts"), description="content-addressed artifact store (shared by all replicas)"
    )
    host: str = Field("127.0.0.1", description="address to bind (0.0.0.0 for all interfaces)")
    grpc_port: int = Field(8090, ge=0, le=65535, description="control-plane gRPC port (0 = any free port)")
    # -1 here so an embedded ControlPlane (tests, `lmaas up` chooses its own) opens no REST port unasked;
    # `lmaas control-plane` serves it on 8080 by default (its one tweak of a default).
    http_port: int = Field(
        -1, ge=-1, le=65535,
        description="REST API port: /api/v1, OpenAPI at /openapi.json (0 = any free port, -1 = none)",
    )
    metrics_port: int = Field(
        8091, ge=-1, le=65535, description="Prometheus /metrics port (0 = any free port, -1 = none)"
    )
    max_artifact_bytes: int = Field(16 << 30, gt=0, description="largest artifact accepted, in bytes")
    max_message_bytes: int = Field(8 << 20, ge=1 << 20, description="largest gRPC message accepted, in bytes")
    worker_lease_ttl: int = Field(
        10, ge=2, description="seconds a worker's presence outlives a control plane that died"
    )
    history_limit: int = Field(50, ge=2, description="deployment records kept per model (rollback targets)")
    keep_previous_warm: bool = Field(
        True, description="workers keep the previous stable version loaded, for an instant rollback"
    )
    grace_seconds: float = Field(10.0, ge=0, description="seconds in-flight calls get to finish on SIGTERM")
    replica_id: str = Field(
        default_factory=socket.gethostname, description="name of this replica, shown per worker (default: host name)"
    )
    auth: bool = Field(
        True,
        description="require a token (or a worker's client certificate) on every call; --no-auth opens everything",
    )
    bootstrap_token_file: Path | None = Field(
        Path(".lmaas/admin.token"),
        description="the first admin token: imported at start; if the file is absent, a new token is written to it "
        "(0600); LMAAS_BOOTSTRAP_TOKEN, if set, is imported instead",
    )
    bootstrap_token: SecretStr | None = Field(
        None, description="admin token imported at start (prefer LMAAS_BOOTSTRAP_TOKEN); takes precedence over the file"
    )
    bootstrap_worker_token: SecretStr | None = Field(
        None,
        description="a worker-role token imported at start, e.g. from a Secret (prefer LMAAS_BOOTSTRAP_WORKER_TOKEN)",
    )
    tls_cert: Path | None = Field(None, description="PEM certificate served on the gRPC port (TLS)")
    tls_key: Path | None = Field(None, description="PEM private key of --tls-cert")
    tls_client_ca: Path | None = Field(None, description="require client certificates signed by this CA (mutual TLS)")
    tls_worker_cn: str = Field(
        "*", description="glob on a client certificate's common name that grants the worker role without a token"
    )
    audit_limit: int = Field(10_000, ge=100, description="audit entries kept in the store (the oldest are trimmed)")
    rollout_timeout: float = Field(
        600.0,
        description="a rollout not acknowledged by every worker within this fails and the previous deployment is "
        "restored (60s, 10m, 1h; 0 = never); enforced by the elected leader replica",
    )
    presence_grace: float = Field(
        3.0, ge=0, description="seconds a worker whose stream ended still counts as pending in rollouts"
    )
    gc_grace: float = Field(
        3600.0, ge=0, description="seconds before an abandoned partial upload or an unreferenced blob is deleted"
    )
    prometheus_url: str = Field(
        "", description="Prometheus server that scrapes the workers; the console's charts query it (p50/p99, TTFT)"
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        from lmaas.protos.serving import tls_files  # grpc only when settings are checked, not at CLI import

        tls_files(self.tls_cert, self.tls_key, self.tls_client_ca)
        return self

    @field_validator("rollout_timeout", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)
