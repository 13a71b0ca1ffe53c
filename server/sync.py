"""WorkerSync, worker side: follow the control plane's desired state.

:func:`run_sync` runs for the worker's lifetime. It keeps one ``Sync`` stream
open to a control-plane replica (comma-separated addresses are tried in turn;
reconnects back off exponentially with jitter), says hello with what the
:class:`ModelHost` holds, and applies each snapshot, newest first (snapshots
that arrive during an apply coalesce into the latest):

1. fetch every assigned artifact not held yet (resumed, sha256-verified);
2. ``ensure_loaded`` every assigned version (loads and warms beside what serves), or for a lazy one
   (``deploy --lazy``) ``register_lazy``: the host loads it on its first request;
3. ``set_routes``: one atomic flip; a model whose versions failed keeps its last good route;
4. send the Ack: per routed model ok, or the error (NACK);
5. ``unload`` versions this sync loaded earlier that are neither assigned nor routed any more, in the
   background: the next snapshot never waits for a drain (long LLM streams run to their end meanwhile), and
   a version re-deployed while it drains is taken back by the host as it is (an instant rollback).

Versions the host holds from elsewhere (a local model repository) are never
unloaded here. While disconnected, the host keeps serving what it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

import grpc
import grpc.aio
from lmaas.protos.credentials import channel_credentials
from lmaas.protos.lmaas.worker.v1 import artifacts_pb2_grpc, sync_pb2, sync_pb2_grpc
from lmaas.server.artifact_cache import ArtifactCache
from lmaas.server.routing import HeldModel, Route
from lmaas.server.settings import WorkerSettings

__all__ = ["REPORT_EVERY", "HeldModel", "ModelHost", "Route", "Syncer", "run_sync"]

log = logging.getLogger("lmaas.worker.sync")

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 << 20),
]
REPORT_EVERY = 15.0  # seconds between two Reports, unless the control plane's snapshots ask otherwise


class ModelHost(Protocol):
    """What the sync needs from the worker's model manager."""

    def held(self) -> list[HeldModel]: ...

    async def ensure_loaded(self, name: str, version: int, path: Path, config_json: str, digest: str) -> None:
        """Load and warm a version beside the others (no-op if held); raise on failure (→ NACK)."""

    def set_routes(self, routes: dict[str, Route]) -> None:
        """Atomically replace the default routing of requests that name no version."""

    async def unload(self, name: str, version: int) -> None:
        """Stop serving a version before the first ``await`` (the sync runs this as a task), then drain and free it.

        A later ``ensure_loaded`` of the same version and digest while it drains may revive it.
        """


async def run_sync(
    settings: WorkerSettings,
    host: ModelHost,
    *,
    worker_id: str,
    inference_address: str,
    on_ack: Callable[[int], None] | None = None,
    report: Callable[[], sync_pb2.Report] | None = None,
) -> None:
    """Follow the control plane at ``settings.control_plane`` (HOST:PORT[,HOST:PORT...]) forever.

    From the settings: ``token`` is sent as ``authorization: Bearer`` on every call; ``tls_ca`` switches the
    connection to TLS, mutual TLS with ``tls_cert``/``tls_key``; the cache is ``cache_dir`` (``cache_size``,
    ``max_download_rate``); ``pool`` and ``report_every`` go to the control plane. ``worker_id`` is the one the
    worker settled on (its settings' or a default from the bound port).
    """
    s = settings
    credentials = channel_credentials(s.tls_ca, s.tls_cert, s.tls_key) if s.tls_ca else None
    cache = ArtifactCache(s.cache_dir, max_bytes_per_second=s.max_download_rate or None, max_bytes=s.cache_size)
    syncer = Syncer(
        host, worker_id=worker_id, pool=s.pool, inference_address=inference_address, cache=cache, token=s.token,
        credentials=credentials, on_ack=on_ack, report=report, report_every=s.report_every,
    )
    await syncer.run([a.strip() for a in (s.control_plane or "").split(",") if a.strip()])


class _Stream:
    """One open Sync stream: where the acks of the snapshots it delivered go."""

    def __init__(self, artifacts: artifacts_pb2_grpc.ArtifactsStub, metadata: tuple[tuple[str, str], ...]) -> None:
        self.artifacts = artifacts
        self.metadata = metadata
        self.outgoing: asyncio.Queue[sync_pb2.WorkerMessage | None] = asyncio.Queue()
        self.open = True

    def close(self) -> None:
        self.open = False
        self.outgoing.put_nowait(None)

    async def requests(self, hello: sync_pb2.Hello) -> AsyncIterator[sync_pb2.WorkerMessage]:
        yield sync_pb2.WorkerMessage(hello=hello)
        while (message := await self.outgoing.get()) is not None:
            yield message


class Syncer:
    def __init__(
        self,
        host: ModelHost,
        *,
        worker_id: str,
        pool: str,
        inference_address: str,
        cache: ArtifactCache,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        initial_backoff: float = 0.2,
        max_backoff: float = 10.0,
        on_ack: Callable[[int], None] | None = None,
        report: Callable[[], sync_pb2.Report] | None = None,
        report_every: float = REPORT_EVERY,
    ) -> None:
        self.host = host
        self.report = report  # memory and latency figures: with each Ack, and every report_every seconds
        self.report_every = report_every
        self.on_ack = on_ack  # called with each acknowledged snapshot revision (lmaas_worker_snapshot_revision)
        self.worker_id = worker_id
        self.pool = pool
        self.inference_address = inference_address
        self.cache = cache
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.credentials = credentials
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.routes: dict[str, Route] = {}
        self.managed: set[tuple[str, int]] = set()  # versions this sync loaded
        self.applied_revision = 0
        self._delivered = False  # whether the current stream delivered a snapshot
        self._latest: tuple[sync_pb2.Snapshot, _Stream] | None = None
        self._wake = asyncio.Event()
        self._unloads: dict[asyncio.Task[None], str] = {}  # drains in the background → the digest each frees
        self._assigned: set[str] = set()  # digests the latest applied snapshot assigns

    async def run(self, addresses: list[str]) -> None:
        if not addresses:
            raise ValueError("no control-plane address given")
        applier = asyncio.create_task(self._apply_loop(), name="lmaas-sync-apply")
        backoff = self.initial_backoff
        try:
            for attempt in itertools.count():
                address = addresses[attempt % len(addresses)]
                self._delivered = False
                try:
                    await self._session(address)
                    log.info("control plane %s ended the sync stream; reconnecting", address)
                except grpc.aio.AioRpcError as exc:
                    log.warning("sync with %s failed: %s %s", address, exc.code().name, exc.details())
                if self._delivered:  # the stream worked, however it ended: start backing off afresh
                    backoff = self.initial_backoff
                delay = backoff * (0.5 + random.random())
                backoff = min(backoff * 2, self.max_backoff)
                await asyncio.sleep(delay)
        finally:
            applier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await applier

    def _hello(self) -> sync_pb2.Hello:
        return sync_pb2.Hello(
            worker_id=self.worker_id, pool=self.pool, inference_address=self.inference_address,
            held=[sync_pb2.Held(model=h.name, version=h.version, digest=h.digest) for h in self.host.held()],
        )

    def _channel(self, address: str) -> grpc.aio.Channel:
        if self.credentials is not None:
            return grpc.aio.secure_channel(address, self.credentials, options=CHANNEL_OPTIONS)
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)

    async def _session(self, address: str) -> bool:
        """One stream; True if it delivered at least one snapshot."""
        async with self._channel(address) as channel:
            stream = _Stream(artifacts_pb2_grpc.ArtifactsStub(channel), self.metadata)
            stub = sync_pb2_grpc.WorkerSyncStub(channel)
            call = stub.Sync(stream.requests(self._hello()), metadata=self.metadata)
            received = False
            reporter: asyncio.Task[None] | None = None
            try:
                async for snapshot in call:
                    if not received:
                        log.info("syncing with control plane %s", address)
                    received = self._delivered = True
                    if reporter is None and snapshot.accepts_reports and self.report is not None:
                        every = snapshot.report_every_s or self.report_every
                        reporter = asyncio.create_task(self._report_loop(stream, every), name="lmaas-sync-report")
                    self._latest = (snapshot, stream)
                    self._wake.set()
            finally:
                if reporter is not None:
                    reporter.cancel()
                stream.close()
                call.cancel()
            return received

    async def _report_loop(self, stream: _Stream, every: float) -> None:
        """Memory and latency every ``every`` seconds while the stream is open (an older control plane, whose
        snapshots do not set accepts_reports, never gets one: it would end the stream)."""
        assert self.report is not None
        while stream.open:
            await asyncio.sleep(every)
            if stream.open:
                try:
                    stream.outgoing.put_nowait(sync_pb2.WorkerMessage(report=self.report()))
                except Exception:  # a figure that cannot be read must not end the stream
                    log.exception("building the worker report failed")

    async def _apply_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._latest is None:
                continue
            snapshot, stream = self._latest
            self._latest = None
            try:
                await self.apply(snapshot, stream)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the worker is stopping
                # Not us: a call of the snapshot's stream (an artifact download) was cancelled under us, which
                # grpc.aio does when the stream ends and its channel closes. Drop the snapshot; the next stream
                # starts with a complete one. (Re-raising here ended this loop for good.)
                log.warning("applying snapshot %d stopped: its stream closed", snapshot.revision)
            except Exception:
                log.exception("applying snapshot %d failed", snapshot.revision)

    async def apply(self, snapshot: sync_pb2.Snapshot, stream: _Stream) -> sync_pb2.Ack:
        """Converge on one snapshot and acknowledge it on the stream that delivered it."""
        errors: dict[str, str] = {}
        self._assigned |= {a.digest for a in snapshot.assignments}  # loading ones too: the cache must keep them
        held = {(h.name, h.version): h.digest for h in self.host.held()}
        # Lazy assignments (deploy --lazy) are registered, loaded on first request; a host without them loads.
        register: Callable[..., Awaitable[None]] | None = getattr(self.host, "register_lazy", None)
        lazy_now: set[tuple[str, int]] = getattr(self.host, "lazy", set)()
        for a in snapshot.assignments:
            key = (a.model, a.version)
            if a.model in errors or (held.get(key) == a.digest and (key in lazy_now) == (a.lazy and bool(register))):
                continue
            try:
                path = await self.cache.fetch(
                    stream.artifacts, a.digest, a.format, a.size_bytes, metadata=stream.metadata
                )
                if a.lazy and register is not None:
                    await register(a.model, a.version, path, a.config_json, a.digest)
                else:
                    await self.host.ensure_loaded(a.model, a.version, path, a.config_json, a.digest)
                self.managed.add((a.model, a.version))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                errors[a.model] = f"version {a.version}: {_describe(exc)}"
                log.error("model %s version %d failed to load: %s", a.model, a.version, errors[a.model])
        routes: dict[str, Route] = {}
        for r in snapshot.routes:
            if r.model not in errors:
                routes[r.model] = Route(r.stable_version, r.canary_version or None, r.canary_weight)
            elif r.model in self.routes:
                routes[r.model] = self.routes[r.model]  # NACK: keep the last good route
        self.host.set_routes(routes)
        self.routes = routes
        self.applied_revision = snapshot.revision
        now_held = self.host.held()
        ack = sync_pb2.Ack(
            snapshot_revision=snapshot.revision,
            held=[sync_pb2.Held(model=h.name, version=h.version, digest=h.digest) for h in now_held],
        )
        if self.report is not None:
            with contextlib.suppress(Exception):  # best effort: the Ack itself must go
                ack.memory.CopyFrom(self.report().memory)
        for r in snapshot.routes:
            ack.models.add(
                model=r.model, loaded_versions=sorted(h.version for h in now_held if h.name == r.model),
                ok=r.model not in errors, error=errors.get(r.model, ""),
            )
        if stream.open:
            stream.outgoing.put_nowait(sync_pb2.WorkerMessage(ack=ack))
            if self.on_ack is not None:
                self.on_ack(snapshot.revision)
        self._assigned = {a.digest for a in snapshot.assignments}
        await self._unload_unassigned(snapshot)
        await self._release_unused()
        return ack

    async def _unload_unassigned(self, snapshot: sync_pb2.Snapshot) -> None:
        keep = {(a.model, a.version) for a in snapshot.assignments}
        for name, route in self.routes.items():
            keep.add((name, route.stable))
            if route.canary is not None:
                keep.add((name, route.canary))
        started = False
        for h in self.host.held():
            key = (h.name, h.version)
            if key in self.managed and key not in keep:
                self.managed.discard(key)
                task = asyncio.create_task(self._unload(h.name, h.version), name=f"lmaas-unload-{h.name}-v{h.version}")
                self._unloads[task] = h.digest
                task.add_done_callback(lambda t: self._unloads.pop(t, None))
                started = True
        if started:
            # One loop step: each task runs up to its first await, so the host stopped serving those versions
            # before the next snapshot reads held() (else it could route to a version about to go).
            await asyncio.sleep(0)

    async def _unload(self, name: str, version: int) -> None:
        try:
            await self.host.unload(name, version)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("unloading model %s version %d failed: %s", name, version, _describe(exc))
            if any((h.name, h.version) == (name, version) for h in self.host.held()):
                self.managed.add((name, version))  # still held: the next snapshot tries again
        current = asyncio.current_task()
        if current is not None:
            self._unloads.pop(current, None)  # drained: its files are closed, the cache may evict them
        await self._release_unused()

    async def _release_unused(self) -> None:
        """Give the cache back the artifacts no assigned, loaded or draining version uses (evictable now)."""
        keep = self._assigned | {h.digest for h in self.host.held()} | set(self._unloads.values())
        try:
            await self.cache.retain(keep)
        except OSError as exc:  # eviction is housekeeping: a full or read-only disk must not stop the sync
            log.warning("artifact cache eviction failed: %s", exc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__
