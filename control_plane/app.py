"""Wires a control-plane replica: settings → store → core objects → gRPC server, REST API + metrics.

``start()`` imports the bootstrap admin token, binds (port 0 allowed; TLS with
``tls_cert``/``tls_key``, mutual TLS with ``tls_client_ca``) and returns the
ports, ``wait()`` runs until ``stop()``; ``stop()`` turns health to
NOT_SERVING, ends the worker streams (workers reconnect to another replica),
and drains other RPCs and HTTP requests. With ``http_port`` >= 0 the REST API
(:mod:`lmaas.control_plane.rest`) serves the same core objects in the same
event loop, with the same auth (TLS with the same certificate). Interceptors, outermost first: errors → statuses
(:mod:`lmaas.protos.interceptors`), then authentication, roles and audit
(:mod:`lmaas.control_plane.auth`). The metrics port is plain HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health
from lmaas.control_plane.artifacts import ArtifactStore
from lmaas.control_plane.audit import AuditLog
from lmaas.control_plane.auth import AuthInterceptor
from lmaas.control_plane.bootstrap import import_bootstrap_token, import_worker_token
from lmaas.control_plane.deployments import Deployments
from lmaas.control_plane.leader import LeaderDuties, LeaderSettings
from lmaas.control_plane.metrics import ControlMetrics, InstrumentedStore
from lmaas.control_plane.progress import RolloutProgress
from lmaas.control_plane.registry import Registry
from lmaas.control_plane.servicers import (
    ArtifactsServicer,
    DeploymentsServicer,
    ModelRegistryServicer,
    TokensServicer,
    WorkersServicer,
    WorkerSyncServicer,
)
from lmaas.control_plane.settings import ControlPlaneSettings
from lmaas.control_plane.snapshots import SnapshotBuilder, add_worker_sync_to_server
from lmaas.control_plane.store import Store, StoreError, open_store
from lmaas.control_plane.store.election import Election
from lmaas.control_plane.sync import SyncSettings, WorkerSync
from lmaas.control_plane.tokens import Tokens
from lmaas.control_plane.watcher import StoreWatcher
from lmaas.protos.interceptors import ErrorInterceptor
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
from lmaas.protos.lmaas.worker.v1 import artifacts_pb2, artifacts_pb2_grpc, sync_pb2
from lmaas.protos.serving import KEEPALIVE_OPTIONS, GrpcServer, MetricsServer, tls_files
from prometheus_client import CollectorRegistry

__all__ = ["SERVICE_NAMES", "ControlPlane"]

log = logging.getLogger("lmaas.control")

SERVICE_NAMES = (
    registry_pb2.DESCRIPTOR.services_by_name["ModelRegistry"].full_name,
    deployments_pb2.DESCRIPTOR.services_by_name["Deployments"].full_name,
    workers_pb2.DESCRIPTOR.services_by_name["Workers"].full_name,
    tokens_pb2.DESCRIPTOR.services_by_name["Tokens"].full_name,
    sync_pb2.DESCRIPTOR.services_by_name["WorkerSync"].full_name,
    artifacts_pb2.DESCRIPTOR.services_by_name["Artifacts"].full_name,
)


class ControlPlane:
    def __init__(
        self, settings: ControlPlaneSettings, registry: CollectorRegistry | None = None, store: Store | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = ControlMetrics(self.registry)
        self._owns_store = store is None
        self._raw_store = store if store is not None else open_store(settings.store)
        self.store = InstrumentedStore(self._raw_store, self.metrics)
        self.artifacts = ArtifactStore(settings.artifact_dir, max_bytes=settings.max_artifact_bytes)
        self.watcher = StoreWatcher(self.store)
        self.models = Registry(self.store, self.artifacts)
        # fleet scale: rollout progress mirrored from the watch (no store reads per Ack)
        self.progress = RolloutProgress(self.store, presence_grace=settings.presence_grace)
        self.watcher.listen(self.progress)
        self.deployments = Deployments(
            self.store, self.models, self.metrics, history_limit=settings.history_limit, progress=self.progress
        )
        self.snapshots = SnapshotBuilder(self.store, keep_previous_warm=settings.keep_previous_warm)
        self.tokens = Tokens(self.store)
        self.sync = WorkerSync(
            self.store, self.snapshots, self.deployments, self.watcher, self.metrics,
            SyncSettings(replica_id=settings.replica_id, lease_ttl=settings.worker_lease_ttl), tokens=self.tokens,
        )
        self.audit = AuditLog(self.store, settings.replica_id, limit=settings.audit_limit)
        self.leader = LeaderDuties(
            self.store, Election(self.store, "duties", settings.replica_id), self.deployments, self.artifacts,
            self.audit, LeaderSettings(rollout_timeout=settings.rollout_timeout, gc_grace=settings.gc_grace),
        )
        self.auth = AuthInterceptor(self.tokens, self.audit, enabled=settings.auth, worker_cn=settings.tls_worker_cn)
        self.health = health.aio.HealthServicer()
        self._grpc: GrpcServer | None = None
        self._metrics_http = MetricsServer(self.registry)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._rest: Any = None
        self.grpc_port = self.metrics_port = 0
        self.http_port = -1  # -1 = no REST API (settings.http_port -1)

    async def start(self) -> tuple[int, int]:
        s = self.settings
        await self._prepare_auth()
        await self.watcher.start()
        self.sync.start()
        server = self._grpc = GrpcServer(
            SERVICE_NAMES,
            max_message_bytes=s.max_message_bytes,
            interceptors=[ErrorInterceptor({StoreError: grpc.StatusCode.UNAVAILABLE}), self.auth],
            options=KEEPALIVE_OPTIONS,
            health_servicer=self.health,
        )
        models = ModelRegistryServicer(self.models, self.artifacts)
        server.add(registry_pb2_grpc.add_ModelRegistryServicer_to_server, models)
        deployments = DeploymentsServicer(self.deployments, self.watcher)
        server.add(deployments_pb2_grpc.add_DeploymentsServicer_to_server, deployments)
        server.add(workers_pb2_grpc.add_WorkersServicer_to_server, WorkersServicer(self.store))
        server.add(add_worker_sync_to_server, WorkerSyncServicer(self.sync))  # one encoding per shared snapshot
        server.add(artifacts_pb2_grpc.add_ArtifactsServicer_to_server, ArtifactsServicer(self.artifacts))
        server.add(tokens_pb2_grpc.add_TokensServicer_to_server, TokensServicer(self.tokens))
        tls = tls_files(s.tls_cert, s.tls_key, s.tls_client_ca)
        self.grpc_port = server.bind(s.host, s.grpc_port, tls)
        if tls is None and s.auth and not _loopback(s.host):
            log.warning("serving %s without TLS: tokens cross the network in clear text (--tls-cert/--tls-key)", s.host)
        if s.metrics_port >= 0:
            self.metrics_port = self._metrics_http.start(s.host, s.metrics_port)
        await server.start()
        if s.http_port >= 0:
            await self._start_rest()
        self._tasks.append(asyncio.create_task(self.deployments.monitor(self.watcher), name="lmaas-rollout-monitor"))
        self._tasks.append(asyncio.create_task(self.leader.run(), name="lmaas-leader"))
        await server.serving()
        log.info("control plane up: store=%s artifacts=%s auth=%s tls=%s", s.store, s.artifact_dir,
                 "on" if s.auth else "OFF", "mtls" if s.tls_client_ca else "on" if s.tls_cert else "off")
        return self.grpc_port, self.metrics_port

    async def _start_rest(self) -> None:
        from lmaas.control_plane.rest import RestServer, create_app  # FastAPI only when the REST API is on

        s = self.settings
        self._rest = RestServer(create_app(self), s.host, s.http_port, grace=s.grace_seconds, tls_cert=s.tls_cert,
                                tls_key=s.tls_key)
        self.http_port = await self._rest.start()

    async def _prepare_auth(self) -> None:
        s = self.settings
        if not s.auth:
            log.warning("authentication is OFF (--no-auth): anyone who reaches %s:%s may deploy, read and manage "
                        "everything", s.host, s.grpc_port)
            return
        secret = s.bootstrap_token.get_secret_value() if s.bootstrap_token else None
        await import_bootstrap_token(self.tokens, token=secret, file=s.bootstrap_token_file)
        if s.bootstrap_worker_token is not None:
            await import_worker_token(self.tokens, s.bootstrap_worker_token.get_secret_value())
        admins = [t for t in (await self.tokens.list())[0] if t.role == resources_pb2.ROLE_ADMIN]
        if not admins:
            log.warning("no admin token exists and no bootstrap token was given (--bootstrap-token-file or "
                        "LMAAS_BOOTSTRAP_TOKEN): nobody can create tokens")

    async def wait(self) -> None:
        await self._stopped.wait()

    async def stop(self, grace: float | None = None) -> None:
        if self._stopped.is_set():
            return
        await self.health.enter_graceful_shutdown()
        self.sync.close()
        stopping = [self._rest.stop()] if self._rest is not None else []
        if self._grpc is not None:
            stopping.append(self._grpc.stop(self.settings.grace_seconds if grace is None else grace))
        await asyncio.gather(*stopping)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sync.stop()
        await self.watcher.stop()
        await self.audit.close()
        if self._owns_store:
            with contextlib.suppress(Exception):
                await self._raw_store.close()
        self._metrics_http.stop()
        self._stopped.set()


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
