"""Wires a worker together: settings → manager → data plane → gRPC and HTTP servers + metrics."""

from __future__ import annotations

import asyncio
import logging
import socket

from grpc_health.v1 import health, health_pb2
from lmaas.protos.credentials import server_credentials
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.inference import grpc_service_pb2_grpc as pb_grpc
from lmaas.protos.interceptors import guard_servicer
from lmaas.protos.lmaas.worker.v1 import sync_pb2
from lmaas.protos.serving import GrpcServer, MetricsServer, tls_files
from lmaas.server import reports
from lmaas.server.auth import ApiKeyInterceptor
from lmaas.server.dataplane import DataPlane
from lmaas.server.http.app import build_app
from lmaas.server.http.serve import HttpServer
from lmaas.server.manager import ModelManager
from lmaas.server.memory import MemoryTracker
from lmaas.server.metrics import WorkerMetrics
from lmaas.server.servicers import InferenceServicer
from lmaas.server.settings import WorkerSettings
from prometheus_client import CollectorRegistry

__all__ = ["Worker", "server_credentials"]

log = logging.getLogger("lmaas.worker")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class Worker:
    """``start()`` binds and returns the ports, ``wait()`` runs until ``stop()``."""

    def __init__(self, settings: WorkerSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = WorkerMetrics(self.registry)
        self.memory = MemoryTracker(self.registry, settings.memory_limit)
        self.manager = ModelManager(
            self.metrics, settings.model_repository, settings.drain_timeout, self.memory, autotune=settings.autotune
        )
        self.manager.lazy_wait = settings.lazy_load_wait  # deploy --lazy: how long a request waits for a load
        self.dataplane = DataPlane(
            self.manager,
            max_elements=settings.max_elements,
            repository_rpcs=settings.control_plane is None,
            trace_file=settings.trace_file,
        )
        self.health = health.aio.HealthServicer()
        self.manager.on_change.append(self._model_changed)
        self._grpc: GrpcServer | None = None
        self._http: HttpServer | None = None
        self._metrics_http = MetricsServer(self.registry)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self.grpc_port = self.metrics_port = self.http_port = 0

    def _model_changed(self, name: str) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.manager.ready(name)
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self._tasks.append(asyncio.ensure_future(self.health.set(name, status)))

    async def start(self) -> tuple[int, int]:
        """Bind and serve; returns (gRPC port, metrics port); the HTTP port is ``http_port``."""
        s = self.settings
        tls = tls_files(s.tls_cert, s.tls_key, s.tls_client_ca)
        server = self._grpc = GrpcServer(
            [SERVICE_NAME],
            max_message_bytes=s.max_message_bytes,
            interceptors=[ApiKeyInterceptor(s.api_keys)] if s.require_api_key else [],
            reuse_port=s.reuse_port,
            health_servicer=self.health,
        )
        # Errors become statuses in the servicer's wrapped methods: no per-call interceptor on the hot path.
        servicer = guard_servicer(
            InferenceServicer(self.dataplane), pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
        )
        server.add(pb_grpc.add_GRPCInferenceServiceServicer_to_server, servicer)
        self.grpc_port = server.bind(s.host, s.grpc_port, tls)
        if s.serve_metrics:
            self.metrics_port = self._metrics_http.start(s.host, s.metrics_port)
        http = HttpServer(
            build_app(
                self.dataplane,
                metrics=self.metrics,
                api_keys=s.api_keys if s.require_api_key else None,
                max_body=s.max_message_bytes,
            ),
            s.host,
            s.http_port,
            reuse_port=s.reuse_port,
            drain_timeout=s.drain_timeout,
            tls_cert=tls.cert if tls else None,
            tls_key=tls.key if tls else None,
            tls_client_ca=tls.client_ca if tls else None,
        )
        http.bind()
        await self.manager.load_repository()
        await server.start()
        self.http_port = await http.start()
        self._http = http
        await server.serving()
        if s.control_plane:
            from lmaas.server.sync import run_sync

            worker_id = s.worker_id or f"{socket.gethostname()}-{self.grpc_port}"
            self._tasks.append(
                asyncio.create_task(
                    run_sync(
                        s,
                        self.manager,
                        worker_id=worker_id,
                        inference_address=f"{s.host}:{self.grpc_port}",
                        on_ack=self.metrics.snapshot_revision.set,
                        report=self._report,
                    )
                )
            )
        return self.grpc_port, self.metrics_port

    def _report(self) -> sync_pb2.Report:
        """Memory and latency figures for the control plane (each Ack carries the memory part)."""
        held = self.manager.held()
        return sync_pb2.Report(memory=reports.memory(self.memory, held), latency=reports.latency(self.metrics, held))

    async def wait(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Health → NOT_SERVING, refuse new calls, let in-flight ones finish (drain timeout), unload."""
        if self._grpc is None or self._stopped.is_set():
            return
        self.dataplane.draining = True
        await self.health.enter_graceful_shutdown()
        log.info("draining: up to %.1fs for in-flight requests", self.settings.drain_timeout)
        # Both transports drain at once: each stops accepting, then waits for its in-flight requests.
        await asyncio.gather(
            self._grpc.stop(self.settings.drain_timeout), self._http.stop() if self._http else asyncio.sleep(0)
        )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.manager.close()
        self.dataplane.shm.close()  # release client shared-memory mappings (the clients own and unlink them)
        self.dataplane.tracer.flush()  # traces still collected (log_frequency 0 writes at shutdown, as Triton)
        self._metrics_http.stop()
        self._stopped.set()
        log.info("stopped")
