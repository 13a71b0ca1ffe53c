"""Blocking client of the LMaaS control plane: models, versions, uploads, deployments, rollouts, workers.

::

    from lmaas.client.control import ControlPlaneClient
    with ControlPlaneClient() as cp:                       # LMAAS_CONTROL_PLANE or 127.0.0.1:8090
        v = cp.push("mlp", "model.onnx")                   # uploads (resumable), returns the new version
        llm = cp.push("smollm2", "smollm2-dir/")           # a directory is one version (format "llm")
        cp.deploy("mlp", v.version)
        rollout = cp.wait_rollout("mlp")                   # until every worker ACKed, or one NACKed

Authentication and TLS come from the arguments or, when they are not given,
from the environment the CLI reads too: ``LMAAS_TOKEN`` (bearer token),
``LMAAS_TLS_CA`` (connect over TLS trusting this CA), ``LMAAS_TLS_CERT`` and
``LMAAS_TLS_KEY`` (client certificate for mutual TLS). Tokens are managed with
:meth:`ControlPlaneClient.create_token` / ``list_tokens`` / ``revoke_token`` (admin).

Failed calls raise the :mod:`lmaas.protos.errors` classes of their status
(``NotFound``, ``Aborted``...). UNAVAILABLE is retried with backoff for calls
that are safe to repeat (reads, uploads, deploys); a rollback is sent once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import yaml

from lmaas.client._grpc import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ChannelConfig,
    Metadata,
    RetryPolicy,
    call,
    create_channel,
    retry,
    to_error,
)
from lmaas.protos.digests import sha256_file as _sha256
from lmaas.protos.errors import FailedPrecondition, InvalidArgument
from lmaas.protos.formats import FORMATS as _FORMAT_TABLE
from lmaas.protos.formats import format_for_path, get_format
from lmaas.protos.lmaas.control.v1 import (
    deployments_pb2,
    deployments_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    resources_pb2,
    tokens_pb2,
    tokens_pb2_grpc,
    workers_pb2,
    workers_pb2_grpc,
)
from lmaas.protos.manifests import scan_directory

__all__ = [
    "DEFAULT_ADDRESS",
    "FINAL_PHASES",
    "ROLES",
    "ControlPlaneClient",
    "Progress",
    "format_for",
    "load_config_json",
    "phase_name",
]

DEFAULT_ADDRESS = "127.0.0.1:8090"
CHUNK_SIZE = 1 << 20
#: File suffix → the format it implies (from :data:`lmaas.protos.formats.FORMATS`).
FORMATS = {suffix: f.name for f in _FORMAT_TABLE.values() for suffix in f.suffixes}
FINAL_PHASES = frozenset(
    {resources_pb2.ROLLOUT_PHASE_SUCCEEDED, resources_pb2.ROLLOUT_PHASE_FAILED, resources_pb2.ROLLOUT_PHASE_SUPERSEDED}
)

#: Role names → the ``Role`` enum values of ``lmaas.control.v1``.
ROLES: dict[str, resources_pb2.Role] = {
    "reader": resources_pb2.ROLE_READER,
    "deployer": resources_pb2.ROLE_DEPLOYER,
    "worker": resources_pb2.ROLE_WORKER,
    "admin": resources_pb2.ROLE_ADMIN,
}

#: ``progress(bytes_sent, total_bytes)``, called as an upload advances.
Progress = Callable[[int, int], None]


def format_for(path: Path) -> str:
    """The artifact format a path implies: model.onnx, model.pt (TorchScript), model.pt2 (torch.export), a
    directory (llm)."""
    return format_for_path(path).name


def load_config_json(config: str | Path | Mapping[str, Any] | None) -> str:
    """A model configuration as JSON text: from a mapping, a JSON/YAML file, or JSON/YAML text."""
    if config is None:
        return ""
    if isinstance(config, Mapping):
        return json.dumps(dict(config))
    text = config.read_text() if isinstance(config, Path) else config
    try:
        value = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"model config is neither JSON nor YAML: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidArgument("model config must be a mapping")
    return json.dumps(value)


def phase_name(phase: int) -> str:
    name: str = resources_pb2.RolloutPhase.Name(phase)
    return name.removeprefix("ROLLOUT_PHASE_").lower()


def _offset(progress: Progress | None, base: int, total: int) -> Progress | None:
    """The progress of one file of a directory, reported as progress of the whole directory."""
    if progress is None:
        return None
    report = progress
    return lambda sent, _size: report(base + sent, total)


class ControlPlaneClient:
    """Blocking client of one control-plane address (``host:port``; default ``$LMAAS_CONTROL_PLANE``).

    ``timeout`` is the default deadline of unary calls in seconds; ``retry``
    governs retries of UNAVAILABLE; ``token`` (default ``$LMAAS_TOKEN``) is sent
    as a bearer token. TLS: ``tls_ca`` / ``tls_cert`` / ``tls_key`` are PEM files
    (default ``$LMAAS_TLS_CA`` / ``$LMAAS_TLS_CERT`` / ``$LMAAS_TLS_KEY`` when no
    TLS argument is given and ``tls`` is None; ``tls=False`` means plaintext
    whatever the environment says), or pass the PEM bytes as ``root_certificates``
    / ``certificate_chain`` / ``private_key``. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, address: str | None = None, *, token: str | None = None, timeout: float | None = 30.0,
                 retry: RetryPolicy | None = None, tls: bool | None = None, root_certificates: bytes | None = None,
                 private_key: bytes | None = None, certificate_chain: bytes | None = None,
                 server_name: str | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                 tls_key: str | Path | None = None) -> None:
        address = address or os.environ.get("LMAAS_CONTROL_PLANE") or DEFAULT_ADDRESS
        self.address = address.split(",")[0].strip()
        if tls is None and not (root_certificates or private_key or certificate_chain or tls_ca or tls_cert or tls_key):
            tls_ca = os.environ.get("LMAAS_TLS_CA") or None
            tls_cert = os.environ.get("LMAAS_TLS_CERT") or None
            tls_key = os.environ.get("LMAAS_TLS_KEY") or None
        if tls_ca:
            root_certificates = Path(tls_ca).read_bytes()
        if (tls_cert is None) != (tls_key is None):
            raise InvalidArgument("a client certificate (tls_cert) and its key (tls_key) go together")
        if tls_cert and tls_key:
            certificate_chain, private_key = Path(tls_cert).read_bytes(), Path(tls_key).read_bytes()
        self.channel_config = ChannelConfig(self.address, tls=bool(tls), root_certificates=root_certificates,
                                            private_key=private_key, certificate_chain=certificate_chain,
                                            server_name=server_name, max_message_bytes=max_message_bytes)
        token = token if token is not None else os.environ.get("LMAAS_TOKEN")
        self.metadata: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.default_timeout = timeout
        self.retry_policy = RetryPolicy() if retry is None else retry
        self._channel = create_channel(self.channel_config)
        self._registry = registry_pb2_grpc.ModelRegistryStub(self._channel)
        self._deployments = deployments_pb2_grpc.DeploymentsStub(self._channel)
        self._workers = workers_pb2_grpc.WorkersStub(self._channel)
        self._tokens = tokens_pb2_grpc.TokensStub(self._channel)

    def __enter__(self) -> ControlPlaneClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any, *, idempotent: bool = True, timeout: float | None = None) -> Any:
        return call(method, request, timeout=timeout or self.default_timeout, policy=self.retry_policy,
                    metadata=self.metadata, idempotent=idempotent)

    # -- models and versions ------------------------------------------------------------------------------

    def list_models(self) -> list[resources_pb2.Model]:
        reply: registry_pb2.ListModelsResponse = self._call(self._registry.ListModels, registry_pb2.ListModelsRequest())
        return list(reply.models)

    def get_model(self, name: str) -> resources_pb2.Model:
        request = registry_pb2.GetModelRequest(name=name)
        reply: registry_pb2.GetModelResponse = self._call(self._registry.GetModel, request)
        return reply.model

    def create_model(self, name: str, *, description: str = "",
                     metadata: Mapping[str, str] | None = None) -> resources_pb2.Model:
        request = registry_pb2.CreateModelRequest(name=name, description=description, metadata=dict(metadata or {}))
        reply: registry_pb2.CreateModelResponse = self._call(self._registry.CreateModel, request, idempotent=False)
        return reply.model

    def list_versions(self, name: str) -> list[resources_pb2.ModelVersion]:
        request = registry_pb2.ListVersionsRequest(model=name)
        reply: registry_pb2.ListVersionsResponse = self._call(self._registry.ListVersions, request)
        return list(reply.versions)

    def get_version(self, name: str, version: int) -> resources_pb2.ModelVersion:
        request = registry_pb2.GetVersionRequest(model=name, version=version)
        reply: registry_pb2.GetVersionResponse = self._call(self._registry.GetVersion, request)
        return reply.version

    def push(self, name: str, file: str | Path, *, format: str | None = None,
             config: str | Path | Mapping[str, Any] | None = None, description: str = "", parent_version: int = 0,
             progress: Progress | None = None, timeout: float | None = None,
             derivation: resources_pb2.Derivation | None = None) -> resources_pb2.ModelVersion:
        """Upload ``file`` (or a directory) as the next version of ``name`` and return it (see :meth:`upload`)."""
        return self.upload(name, file, format=format, config=config, description=description,
                           parent_version=parent_version, progress=progress, timeout=timeout,
                           derivation=derivation).version

    def upload(self, name: str, file: str | Path, *, format: str | None = None,
               config: str | Path | Mapping[str, Any] | None = None, description: str = "", parent_version: int = 0,
               progress: Progress | None = None, timeout: float | None = None,
               derivation: resources_pb2.Derivation | None = None) -> registry_pb2.CreateVersionResponse:
        """Upload ``file`` as the next version of ``name``; the reply says whether bytes or a version were reused.

        The format comes from the file name unless given. Bytes the control
        plane already has are not sent again: an identical artifact is only
        registered, and an interrupted upload resumes where it stopped. If the
        latest version is identical (artifact, format, config, parent), it is
        returned instead of a new one, so a retried or repeated push is harmless.

        A directory is one version of a directory format (``llm`` unless
        given): every file is hashed and uploaded as a blob of its own (skipped
        when the control plane holds it, resumed when an earlier upload was cut),
        then its manifest is registered. Symbolic links and special files are
        refused before anything is sent; ``progress`` counts the bytes of all files.
        """
        path = Path(file)
        if path.is_dir():
            return self._upload_directory(name, path, format=format, config=config, description=description,
                                          parent_version=parent_version, progress=progress, timeout=timeout,
                                          derivation=derivation)
        if not path.is_file():
            raise InvalidArgument(f"no such file: {path}")
        if format and get_format(format).directory:
            raise InvalidArgument(f"format {format!r} is a directory version: give a directory, not {path.name}")
        header = registry_pb2.CreateVersionHeader(
            model=name, format=format or format_for(path), config_json=load_config_json(config),
            digest=_sha256(path), size_bytes=path.stat().st_size, parent_version=parent_version,
            description=description,
        )
        if derivation is not None:  # a derived version: lmaas.optimize fills it
            header.derivation.CopyFrom(derivation)

        def attempt(left: float | None) -> registry_pb2.CreateVersionResponse:
            status: registry_pb2.GetUploadStatusResponse = self._registry.GetUploadStatus(
                registry_pb2.GetUploadStatusRequest(digest=header.digest), timeout=left, metadata=self.metadata or None
            )
            header.offset = header.size_bytes if status.exists else status.offset
            reply: registry_pb2.CreateVersionResponse = self._registry.CreateVersion(
                self._chunks(path, header, progress), timeout=left, metadata=self.metadata or None
            )
            return reply

        return retry(attempt, timeout=timeout, policy=self.retry_policy)

    def _upload_directory(self, name: str, path: Path, *, format: str | None,
                          config: str | Path | Mapping[str, Any] | None, description: str, parent_version: int,
                          progress: Progress | None, timeout: float | None,
                          derivation: resources_pb2.Derivation | None = None) -> registry_pb2.CreateVersionResponse:
        fmt = format or "llm"
        if not get_format(fmt).directory:
            raise InvalidArgument(f"{path} is a directory: format {fmt!r} is a single file")
        config_json = load_config_json(config)
        manifest, local = scan_directory(path, fmt)
        blobs = {f.sha256: (local[f.path], f.size) for f in manifest.files}  # a file twice is sent once
        total, done = sum(size for _, size in blobs.values()), 0
        for digest, (file, size) in blobs.items():
            self._upload_blob(digest, file, size, timeout=timeout, progress=_offset(progress, done, total))
            done += size
        data = manifest.to_bytes()
        header = registry_pb2.CreateVersionHeader(
            model=name, format=fmt, config_json=config_json, digest=manifest.digest, size_bytes=len(data),
            parent_version=parent_version, description=description,
        )
        if derivation is not None:  # a derived directory version (lmaas.optimize.llm)
            header.derivation.CopyFrom(derivation)

        def attempt(left: float | None) -> registry_pb2.CreateVersionResponse:
            status: registry_pb2.GetUploadStatusResponse = self._registry.GetUploadStatus(
                registry_pb2.GetUploadStatusRequest(digest=header.digest), timeout=left, metadata=self.metadata or None
            )
            header.offset = len(data) if status.exists else 0
            messages = [registry_pb2.CreateVersionRequest(header=header)]
            if not status.exists:
                messages.append(registry_pb2.CreateVersionRequest(chunk=data))
            reply: registry_pb2.CreateVersionResponse = self._registry.CreateVersion(
                iter(messages), timeout=left, metadata=self.metadata or None
            )
            return reply

        return retry(attempt, timeout=timeout, policy=self.retry_policy)

    def _upload_blob(self, digest: str, path: Path, size: int, *, progress: Progress | None,
                     timeout: float | None) -> None:
        """Upload one file as a blob unless the control plane holds it; resume what an earlier upload kept."""
        header = registry_pb2.UploadArtifactHeader(digest=digest, size_bytes=size)

        def attempt(left: float | None) -> None:
            status: registry_pb2.GetUploadStatusResponse = self._registry.GetUploadStatus(
                registry_pb2.GetUploadStatusRequest(digest=digest), timeout=left, metadata=self.metadata or None
            )
            if status.exists:
                if progress:
                    progress(size, size)
                return
            header.offset = status.offset
            self._registry.UploadArtifact(
                self._blob_chunks(path, header, progress), timeout=left, metadata=self.metadata or None
            )

        retry(attempt, timeout=timeout, policy=self.retry_policy)

    @staticmethod
    def _blob_chunks(path: Path, header: registry_pb2.UploadArtifactHeader,
                     progress: Progress | None) -> Iterator[registry_pb2.UploadArtifactRequest]:
        yield registry_pb2.UploadArtifactRequest(header=header)
        sent = header.offset
        if progress:
            progress(sent, header.size_bytes)
        with path.open("rb") as f:
            f.seek(sent)
            while sent < header.size_bytes and (block := f.read(min(CHUNK_SIZE, header.size_bytes - sent))):
                yield registry_pb2.UploadArtifactRequest(chunk=block)
                sent += len(block)
                if progress:
                    progress(sent, header.size_bytes)

    @staticmethod
    def _chunks(path: Path, header: registry_pb2.CreateVersionHeader,
                progress: Progress | None) -> Iterator[registry_pb2.CreateVersionRequest]:
        yield registry_pb2.CreateVersionRequest(header=header)
        sent = header.offset
        if progress:
            progress(sent, header.size_bytes)
        if sent >= header.size_bytes:
            return
        with path.open("rb") as f:
            f.seek(sent)
            while block := f.read(CHUNK_SIZE):
                yield registry_pb2.CreateVersionRequest(chunk=block)
                sent += len(block)
                if progress:
                    progress(sent, header.size_bytes)

    def download(self, name: str, version: int, dest: str | Path, *,
                 timeout: float | None = None) -> resources_pb2.ModelVersion:
        """Write the artifact of single-file version ``version`` to ``dest`` (verified by sha256) and return the
        version. Uses ``Artifacts.Download``; with auth on, the token needs the download permission (deployer,
        worker or admin)."""
        from lmaas.protos.errors import DataLoss
        from lmaas.protos.lmaas.worker.v1 import artifacts_pb2, artifacts_pb2_grpc

        v = self.get_version(name, version)
        if get_format(v.format).directory:
            raise InvalidArgument(f"version {version} of model '{name}' is a directory version ({v.format})")
        stub = artifacts_pb2_grpc.ArtifactsStub(self._channel)
        path = Path(dest)
        h = hashlib.sha256()
        try:
            with path.open("wb") as f:
                request = artifacts_pb2.DownloadRequest(digest=v.digest)
                for chunk in stub.Download(request, metadata=self.metadata or None,
                                           timeout=timeout or self.default_timeout):
                    f.write(chunk.data)
                    h.update(chunk.data)
        except grpc.RpcError as exc:
            raise to_error(exc) from exc
        if h.hexdigest() != v.digest:
            raise DataLoss(f"downloaded artifact has sha256:{h.hexdigest()}, expected sha256:{v.digest}")
        return v

    # -- deployments ----------------------------------------------------------------------------------------

    def deploy(self, name: str, version: int, *, canary: int = 0, weight: int = 0, pools: Sequence[str] = (),
               expected_generation: int = 0, lazy: bool = False) -> deployments_pb2.DeployResponse:
        """Serve ``version`` (and ``canary`` for ``weight`` percent of requests); returns at once.

        ``lazy``: workers download the versions but load one only when a request needs it."""
        spec = resources_pb2.DeploymentSpec(stable_version=version, canary_version=canary, canary_weight=weight,
                                            pools=list(pools), lazy=lazy)
        request = deployments_pb2.DeployRequest(model=name, spec=spec, expected_generation=expected_generation)
        reply: deployments_pb2.DeployResponse = self._call(self._deployments.Deploy, request)
        return reply

    def rollback(self, name: str, *, to_version: int = 0,
                 expected_generation: int = 0) -> deployments_pb2.RollbackResponse:
        """Restore the previous deployment, or serve ``to_version`` alone; sent once (never retried)."""
        request = deployments_pb2.RollbackRequest(model=name, to_version=to_version,
                                                  expected_generation=expected_generation)
        reply: deployments_pb2.RollbackResponse = self._call(self._deployments.Rollback, request, idempotent=False)
        return reply

    def get_deployment(self, name: str) -> deployments_pb2.GetDeploymentResponse:
        request = deployments_pb2.GetDeploymentRequest(model=name)
        reply: deployments_pb2.GetDeploymentResponse = self._call(self._deployments.GetDeployment, request)
        return reply

    def list_deployments(self) -> deployments_pb2.ListDeploymentsResponse:
        reply: deployments_pb2.ListDeploymentsResponse = self._call(
            self._deployments.ListDeployments, deployments_pb2.ListDeploymentsRequest()
        )
        return reply

    def watch_rollout(self, name: str, generation: int = 0, *,
                      timeout: float | None = None) -> Iterator[resources_pb2.Rollout]:
        """Every state of a rollout until it reaches a final phase (``timeout`` bounds the whole watch)."""
        request = deployments_pb2.WatchRolloutRequest(model=name, generation=generation)
        try:
            for update in self._deployments.WatchRollout(request, timeout=timeout, metadata=self.metadata or None):
                yield update.rollout
        except grpc.RpcError as exc:
            raise to_error(exc) from exc

    def wait_rollout(self, name: str, generation: int = 0, *, timeout: float | None = 300.0,
                     on_update: Callable[[resources_pb2.Rollout], None] | None = None) -> resources_pb2.Rollout:
        """The final state of a rollout (SUCCEEDED, FAILED or SUPERSEDED)."""
        last: resources_pb2.Rollout | None = None
        for rollout in self.watch_rollout(name, generation, timeout=timeout):
            last = rollout
            if on_update:
                on_update(rollout)
        if last is None or last.phase not in FINAL_PHASES:
            raise FailedPrecondition(f"the rollout of model '{name}' ended without a final state")
        return last

    # -- workers --------------------------------------------------------------------------------------------

    def workers(self, pool: str = "") -> list[resources_pb2.WorkerInfo]:
        reply: workers_pb2.ListWorkersResponse = self._call(
            self._workers.ListWorkers, workers_pb2.ListWorkersRequest(pool=pool)
        )
        return list(reply.workers)

    # -- tokens (admin) -------------------------------------------------------------------------------------

    def create_token(self, role: str | resources_pb2.Role, *,
                     description: str = "") -> tokens_pb2.CreateTokenResponse:
        """A new token with ``role`` ("reader", "deployer", "worker", "admin"); ``reply.secret`` is the bearer
        token, returned this once only. Sent once (never retried): a retry could create a second token."""
        value = ROLES.get(role) if isinstance(role, str) else role
        if value is None:
            raise InvalidArgument(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
        request = tokens_pb2.CreateTokenRequest(role=value, description=description)
        reply: tokens_pb2.CreateTokenResponse = self._call(self._tokens.CreateToken, request, idempotent=False)
        return reply

    def list_tokens(self, *, include_revoked: bool = False) -> list[resources_pb2.Token]:
        """Every token (no secrets), revoked ones too with ``include_revoked``."""
        request = tokens_pb2.ListTokensRequest(include_revoked=include_revoked)
        reply: tokens_pb2.ListTokensResponse = self._call(self._tokens.ListTokens, request)
        return list(reply.tokens)

    def revoke_token(self, token_id: str) -> resources_pb2.Token:
        """Revoke a token by id; revoking twice is harmless."""
        request = tokens_pb2.RevokeTokenRequest(id=token_id)
        reply: tokens_pb2.RevokeTokenResponse = self._call(self._tokens.RevokeToken, request)
        return reply.token
