"""Thin gRPC servicers over the control plane's core objects.

Each method converts the request, calls the core, and converts the result;
errors are raised as :mod:`lmaas.protos.errors` classes and mapped to statuses
by :class:`~lmaas.control_plane.interceptors.ErrorInterceptor`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc.aio
from lmaas.control_plane.artifacts import ArtifactStore
from lmaas.control_plane.auth import current_principal
from lmaas.control_plane.deployments import Deployments
from lmaas.control_plane.registry import NewVersion, Registry
from lmaas.control_plane.store.base import Store
from lmaas.control_plane.sync import WorkerSync
from lmaas.control_plane.tokens import Tokens, public
from lmaas.control_plane.watcher import StoreWatcher
from lmaas.control_plane.workers import list_workers
from lmaas.protos.errors import InvalidArgument
from lmaas.protos.lmaas.control.v1 import (
    deployments_pb2,
    deployments_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    tokens_pb2,
    tokens_pb2_grpc,
    workers_pb2,
    workers_pb2_grpc,
)
from lmaas.protos.lmaas.worker.v1 import artifacts_pb2, artifacts_pb2_grpc, sync_pb2, sync_pb2_grpc

__all__ = [
    "ArtifactsServicer",
    "DeploymentsServicer",
    "ModelRegistryServicer",
    "TokensServicer",
    "WorkerSyncServicer",
    "WorkersServicer",
    "caller",
]

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def caller(context: Context) -> str:
    """Who makes the request, as :class:`~lmaas.control_plane.auth.AuthInterceptor` authenticated it."""
    principal = current_principal()
    return principal.name if principal is not None else "anonymous"


class ModelRegistryServicer(registry_pb2_grpc.ModelRegistryServicer):
    def __init__(self, registry: Registry, artifacts: ArtifactStore) -> None:
        self._registry = registry
        self._artifacts = artifacts

    async def CreateModel(
        self, request: registry_pb2.CreateModelRequest, context: Context
    ) -> registry_pb2.CreateModelResponse:
        model, revision = await self._registry.create_model(
            request.name, description=request.description, metadata=request.metadata, created_by=caller(context)
        )
        return registry_pb2.CreateModelResponse(model=model, revision=revision)

    async def GetModel(self, request: registry_pb2.GetModelRequest, context: Context) -> registry_pb2.GetModelResponse:
        model, revision = await self._registry.get_model(request.name)
        return registry_pb2.GetModelResponse(model=model, revision=revision)

    async def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: Context
    ) -> registry_pb2.ListModelsResponse:
        models, revision = await self._registry.list_models()
        return registry_pb2.ListModelsResponse(models=models, revision=revision)

    async def GetVersion(
        self, request: registry_pb2.GetVersionRequest, context: Context
    ) -> registry_pb2.GetVersionResponse:
        version, revision = await self._registry.get_version(request.model, request.version)
        return registry_pb2.GetVersionResponse(version=version, revision=revision)

    async def ListVersions(
        self, request: registry_pb2.ListVersionsRequest, context: Context
    ) -> registry_pb2.ListVersionsResponse:
        versions, revision = await self._registry.list_versions(request.model)
        return registry_pb2.ListVersionsResponse(versions=versions, revision=revision)

    async def GetUploadStatus(
        self, request: registry_pb2.GetUploadStatusRequest, context: Context
    ) -> registry_pb2.GetUploadStatusResponse:
        if self._artifacts.exists(request.digest):
            return registry_pb2.GetUploadStatusResponse(exists=True, offset=self._artifacts.size(request.digest))
        return registry_pb2.GetUploadStatusResponse(offset=self._artifacts.upload_offset(request.digest))

    async def CreateVersion(
        self, request_iterator: AsyncIterator[registry_pb2.CreateVersionRequest], context: Context
    ) -> registry_pb2.CreateVersionResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("CreateVersion must start with a header message")
        h = first.header
        new = NewVersion(
            model=h.model, digest=h.digest, format=h.format, config_json=h.config_json,
            parent_version=h.parent_version, description=h.description,
            derivation=h.derivation if h.HasField("derivation") else None,
        )
        self._registry.validate(new)
        chunks = _chunks(request_iterator, "CreateVersion")
        deduplicated = await self._registry.receive_artifact(new, h.size_bytes, h.offset, chunks)
        version, revision, existing = await self._registry.register_version(new, created_by=caller(context))
        return registry_pb2.CreateVersionResponse(
            version=version, revision=revision, deduplicated=deduplicated, existing=existing
        )

    async def UploadArtifact(
        self, request_iterator: AsyncIterator[registry_pb2.UploadArtifactRequest], context: Context
    ) -> registry_pb2.UploadArtifactResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("UploadArtifact must start with a header message")
        h = first.header
        chunks = _chunks(request_iterator, "UploadArtifact")
        deduplicated = await self._artifacts.receive(h.digest, h.size_bytes, h.offset, chunks)
        return registry_pb2.UploadArtifactResponse(
            digest=h.digest, size_bytes=self._artifacts.size(h.digest), deduplicated=deduplicated
        )


async def _chunks(
    messages: AsyncIterator[registry_pb2.CreateVersionRequest] | AsyncIterator[registry_pb2.UploadArtifactRequest],
    method: str,
) -> AsyncIterator[bytes]:
    """The chunks after an upload's header."""
    async for message in messages:
        if message.WhichOneof("part") != "chunk":
            raise InvalidArgument(f"only the first {method} message may be a header")
        yield message.chunk


class DeploymentsServicer(deployments_pb2_grpc.DeploymentsServicer):
    def __init__(self, deployments: Deployments, watcher: StoreWatcher) -> None:
        self._deployments = deployments
        self._watcher = watcher

    async def Deploy(self, request: deployments_pb2.DeployRequest, context: Context) -> deployments_pb2.DeployResponse:
        deployment, rollout, revision = await self._deployments.deploy(
            request.model, request.spec, expected_generation=request.expected_generation, created_by=caller(context)
        )
        return deployments_pb2.DeployResponse(deployment=deployment, rollout=rollout, revision=revision)

    async def Rollback(
        self, request: deployments_pb2.RollbackRequest, context: Context
    ) -> deployments_pb2.RollbackResponse:
        deployment, rollout, revision = await self._deployments.rollback(
            request.model, to_version=request.to_version, expected_generation=request.expected_generation,
            created_by=caller(context),
        )
        return deployments_pb2.RollbackResponse(deployment=deployment, rollout=rollout, revision=revision)

    async def GetDeployment(
        self, request: deployments_pb2.GetDeploymentRequest, context: Context
    ) -> deployments_pb2.GetDeploymentResponse:
        deployment, rollout, revision = await self._deployments.get(request.model)
        return deployments_pb2.GetDeploymentResponse(deployment=deployment, rollout=rollout, revision=revision)

    async def ListDeployments(
        self, request: deployments_pb2.ListDeploymentsRequest, context: Context
    ) -> deployments_pb2.ListDeploymentsResponse:
        deployments, rollouts, revision = await self._deployments.list()
        return deployments_pb2.ListDeploymentsResponse(deployments=deployments, rollouts=rollouts, revision=revision)

    async def WatchRollout(
        self, request: deployments_pb2.WatchRolloutRequest, context: Context
    ) -> AsyncIterator[deployments_pb2.WatchRolloutResponse]:
        updates = self._deployments.watch_rollout(request.model, request.generation, self._watcher)
        async for rollout, revision in updates:
            yield deployments_pb2.WatchRolloutResponse(rollout=rollout, revision=revision)


class WorkersServicer(workers_pb2_grpc.WorkersServicer):
    def __init__(self, store: Store) -> None:
        self._store = store

    async def ListWorkers(
        self, request: workers_pb2.ListWorkersRequest, context: Context
    ) -> workers_pb2.ListWorkersResponse:
        workers, revision = await list_workers(self._store, request.pool)
        return workers_pb2.ListWorkersResponse(workers=workers, revision=revision)


class WorkerSyncServicer(sync_pb2_grpc.WorkerSyncServicer):
    def __init__(self, sync: WorkerSync) -> None:
        self._sync = sync

    async def Sync(
        self, request_iterator: AsyncIterator[sync_pb2.WorkerMessage], context: Context
    ) -> AsyncIterator[sync_pb2.Snapshot]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "hello":
            raise InvalidArgument("WorkerSync must start with a hello message")
        async for snapshot in self._sync.session(first.hello, request_iterator):
            yield snapshot


class ArtifactsServicer(artifacts_pb2_grpc.ArtifactsServicer):
    def __init__(self, artifacts: ArtifactStore) -> None:
        self._artifacts = artifacts

    async def Download(
        self, request: artifacts_pb2.DownloadRequest, context: Context
    ) -> AsyncIterator[artifacts_pb2.DownloadChunk]:
        total = self._artifacts.size(request.digest)
        async for offset, data in self._artifacts.read(request.digest, request.offset):
            yield artifacts_pb2.DownloadChunk(offset=offset, data=data, total_size=total)


class TokensServicer(tokens_pb2_grpc.TokensServicer):
    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens

    async def CreateToken(
        self, request: tokens_pb2.CreateTokenRequest, context: Context
    ) -> tokens_pb2.CreateTokenResponse:
        token, secret, revision = await self._tokens.create(
            request.role, request.description, created_by=caller(context)
        )
        return tokens_pb2.CreateTokenResponse(token=public(token), secret=secret, revision=revision)

    async def ListTokens(
        self, request: tokens_pb2.ListTokensRequest, context: Context
    ) -> tokens_pb2.ListTokensResponse:
        tokens, revision = await self._tokens.list(include_revoked=request.include_revoked)
        return tokens_pb2.ListTokensResponse(tokens=[public(t) for t in tokens], revision=revision)

    async def RevokeToken(
        self, request: tokens_pb2.RevokeTokenRequest, context: Context
    ) -> tokens_pb2.RevokeTokenResponse:
        token, revision = await self._tokens.revoke(request.id, revoked_by=caller(context))
        return tokens_pb2.RevokeTokenResponse(token=public(token), revision=revision)
