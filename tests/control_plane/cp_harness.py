"""Control-plane test harness: real grpc.aio servers on loopback port 0 over a real store.

Fixtures are chained the way production wires things: store (``store`` / ``open_store`` from
``conftest.py``, SQLite and etcd) → ControlPlane → channel → stubs; and for the data plane a real
:class:`~lmaas.server.sync.Syncer` driving :class:`FakeHost`, the one fake in these tests.
Test modules load the fixtures ``cp`` and ``stubs`` with ``pytest_plugins = ["cp_fixtures"]``.

Authentication is on, as in production: every control plane the harness starts imports
:data:`ADMIN_TOKEN` as its bootstrap admin token (in-process: ``bootstrap_token``; a subprocess:
``--bootstrap-token-file``), and the harness behaves like a user who exported it: importing this
module sets ``LMAAS_TOKEN`` (unless already set), so the CLI, the SDK and worker processes send it;
:func:`channel` and :func:`worker` send it explicitly. Pass ``auth=False`` to :func:`settings` /
:func:`running` or ``--no-auth`` to :func:`start_control_plane` for a control plane without auth.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
import pytest
from lmaas.control_plane.app import ControlPlane
from lmaas.control_plane.settings import ControlPlaneSettings
from lmaas.control_plane.store.base import Store
from lmaas.protos.lmaas.control.v1 import (
    deployments_pb2,
    deployments_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    resources_pb2,
    tokens_pb2_grpc,
    workers_pb2_grpc,
)
from lmaas.protos.lmaas.worker.v1 import artifacts_pb2_grpc, sync_pb2_grpc
from lmaas.server.artifact_cache import ArtifactCache
from lmaas.server.sync import HeldModel, Route, Syncer
from processes import ServerProcess, start_server
from prometheus_client import CollectorRegistry

WAIT = 15.0
StoreFactory = Callable[[], Awaitable[Store]]

#: The admin token of every control plane the harness starts (well-formed: ``lmaas_<12 hex>_<43 base64url>``).
ADMIN_TOKEN = "lmaas_00000000ad01_" + "harness-admin-token-for-tests-only-00000000"
assert len(ADMIN_TOKEN) == 62
os.environ.setdefault("LMAAS_TOKEN", ADMIN_TOKEN)


class _BearerToken:
    """Adds ``authorization: Bearer <token>`` to every call that does not carry one.

    grpc.aio files an interceptor under the first interceptor type it is an instance of, so each call
    type gets its own subclass (see :func:`_bearer_interceptors`).
    """

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = list(details.metadata or ())
        if not any(key == "authorization" for key, _ in metadata):
            metadata.append(self._header)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, grpc.aio.Metadata(*metadata), details.credentials,
            details.wait_for_ready,
        )


class _BearerUnaryUnary(_BearerToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)


class _BearerUnaryStream(_BearerToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)


class _BearerStreamUnary(_BearerToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request_iterator)


class _BearerStreamStream(_BearerToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request_iterator)


def _bearer_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    return [cls(token) for cls in (_BearerUnaryUnary, _BearerUnaryStream, _BearerStreamUnary, _BearerStreamStream)]


def settings(tmp: Path, **overrides: object) -> ControlPlaneSettings:
    values: dict[str, object] = {
        "grpc_port": 0, "metrics_port": -1, "artifact_dir": tmp / "artifacts", "grace_seconds": 1.0,
        "worker_lease_ttl": 3, "store": "unused://", "bootstrap_token": ADMIN_TOKEN,
    }
    values.update(overrides)
    return ControlPlaneSettings(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(store: Store, tmp: Path, **overrides: object) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(settings(tmp, **overrides), CollectorRegistry(), store=store)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop(grace=0.5)


class Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.registry = registry_pb2_grpc.ModelRegistryStub(channel)
        self.deployments = deployments_pb2_grpc.DeploymentsStub(channel)
        self.workers = workers_pb2_grpc.WorkersStub(channel)
        self.sync = sync_pb2_grpc.WorkerSyncStub(channel)
        self.artifacts = artifacts_pb2_grpc.ArtifactsStub(channel)
        self.tokens = tokens_pb2_grpc.TokensStub(channel)


def address(cp: ControlPlane) -> str:
    return f"127.0.0.1:{cp.grpc_port}"


def channel(cp: ControlPlane, token: str | None = ADMIN_TOKEN) -> grpc.aio.Channel:
    """An asyncio channel to a control plane (use with ``async with``) whose calls send ``token`` (None: none)."""
    interceptors = _bearer_interceptors(token) if token else None
    return grpc.aio.insecure_channel(address(cp), interceptors=interceptors)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def version_requests(
    model: str, data: bytes, *, fmt: str = "onnx", config_json: str = "", digest: str | None = None,
    size: int | None = None, offset: int = 0, chunk: int = 1000, parent: int = 0,
) -> list[registry_pb2.CreateVersionRequest]:
    header = registry_pb2.CreateVersionHeader(
        model=model, format=fmt, config_json=config_json, digest=digest or sha(data),
        size_bytes=len(data) if size is None else size, offset=offset, parent_version=parent,
    )
    out = [registry_pb2.CreateVersionRequest(header=header)]
    out += [registry_pb2.CreateVersionRequest(chunk=data[i : i + chunk]) for i in range(offset, len(data), chunk)]
    return out


async def push(stubs: Stubs, model: str, data: bytes, **kw: object) -> resources_pb2.ModelVersion:
    reply = await stubs.registry.CreateVersion(iter(version_requests(model, data, **kw)))  # type: ignore[arg-type]
    return reply.version


async def deploy(
    stubs: Stubs, model: str, stable: int, canary: int = 0, weight: int = 0, **kw: object
) -> deployments_pb2.DeployResponse:
    spec = resources_pb2.DeploymentSpec(stable_version=stable, canary_version=canary, canary_weight=weight)
    return await stubs.deployments.Deploy(deployments_pb2.DeployRequest(model=model, spec=spec, **kw))


async def final_rollout(stubs: Stubs, model: str, generation: int = 0) -> resources_pb2.Rollout:
    last = None
    async with asyncio.timeout(WAIT):
        async for update in stubs.deployments.WatchRollout(
            deployments_pb2.WatchRolloutRequest(model=model, generation=generation)
        ):
            last = update.rollout
    assert last is not None
    return last


async def eventually(check: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def expect_status(code: grpc.StatusCode, awaitable: Awaitable[object]) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


# -- the data plane's side -------------------------------------------------------------------------------------------


@dataclass
class FakeHost:
    """An in-memory ModelHost: 'loads' a version by reading its file; content starting with b'corrupt' fails."""

    models: dict[tuple[str, int], tuple[str, bytes]] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    loads: list[tuple[str, int]] = field(default_factory=list)
    unloads: list[tuple[str, int]] = field(default_factory=list)
    load_delay: float = 0.0

    def held(self) -> list[HeldModel]:
        return [HeldModel(n, v, d) for (n, v), (d, _) in sorted(self.models.items())]

    async def ensure_loaded(self, name: str, version: int, path: Path, config_json: str, digest: str) -> None:
        if (name, version) in self.models:
            return
        data = path.read_bytes()
        if self.load_delay:
            await asyncio.sleep(self.load_delay)
        if data.startswith(b"corrupt"):
            raise RuntimeError("cannot parse the model file")
        self.loads.append((name, version))
        self.models[name, version] = (digest, data)

    def set_routes(self, routes: dict[str, Route]) -> None:
        for name, route in routes.items():
            assert (name, route.stable) in self.models, f"route to unloaded {name} v{route.stable}"
            assert route.canary is None or (name, route.canary) in self.models
        self.routes = dict(routes)

    async def unload(self, name: str, version: int) -> None:
        assert all(
            (name, version) not in ((n, r.stable), (n, r.canary)) for n, r in self.routes.items()
        ), "unloading a routed version"
        self.unloads.append((name, version))
        del self.models[name, version]

    def serving(self, name: str) -> int | None:
        route = self.routes.get(name)
        return route.stable if route else None

    def versions(self, name: str) -> list[int]:
        return sorted(v for n, v in self.models if n == name)


@dataclass
class FakeWorker:
    host: FakeHost
    syncer: Syncer
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def worker(
    addresses: str | list[str], tmp: Path, worker_id: str = "w1", *, host: FakeHost | None = None,
    pool: str = "default", token: str | None = ADMIN_TOKEN, credentials: grpc.ChannelCredentials | None = None,
) -> AsyncIterator[FakeWorker]:
    host = host or FakeHost()
    syncer = Syncer(
        host, worker_id=worker_id, pool=pool, inference_address=f"{worker_id}:8001",
        cache=ArtifactCache(tmp / f"cache-{worker_id}"), initial_backoff=0.05, max_backoff=0.5, token=token,
        credentials=credentials,
    )
    addrs = [addresses] if isinstance(addresses, str) else addresses
    w = FakeWorker(host, syncer, asyncio.create_task(syncer.run(addrs)))
    try:
        await eventually(lambda: syncer.applied_revision > 0)  # registered and synced once
        yield w
    finally:
        await w.stop()


# -- real processes ----------------------------------------------------------------------------------------------


def write_scale_onnx(path: Path, scale: float) -> Path:
    """ONNX ``y = scale * x``, x FP32 [-1, 4]: versions that differ only in their outputs."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    k = numpy_helper.from_array(np.array([scale], dtype=np.float32), "k")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "scale", [x], [y], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def lmaas(
    *args: str, address: str, check: bool = True, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``lmaas`` CLI against a control plane; stdout and stderr captured; ``env`` adds variables."""
    env = {**os.environ, "LMAAS_CONTROL_PLANE": address, "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "lmaas.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"lmaas {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_control_plane(
    tmp: Path, *extra: str, store: str | None = None, env: dict[str, str] | None = None
) -> ServerProcess:
    """``lmaas control-plane`` on free ports; unless ``extra`` says otherwise, with :data:`ADMIN_TOKEN` as its
    bootstrap token (from ``tmp/admin.token``)."""
    args = ["control-plane", "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0",
            "--artifact-dir", str(tmp / "artifacts"),
            "--store", store or f"sqlite:///{tmp / 'control.db'}", "--grace", "1", *extra]
    if "--no-auth" not in extra and "--bootstrap-token-file" not in extra:
        token_file = tmp / "admin.token"
        if not token_file.exists():
            token_file.write_text(ADMIN_TOKEN + "\n")
            token_file.chmod(0o600)
        args += ["--bootstrap-token-file", str(token_file)]
    return start_server(args, env=env)
