"""The complete desired state of a worker pool, built from the store.

A snapshot (``lmaas.worker.v1.Snapshot``) lists every model version a worker
of the pool must hold and every route. Per deployed model it assigns the
stable version, the canary version if any, and the stable version of the
previous good deployment, kept warm so that a rollback flips without a load.
Versions are immutable, so they are cached here by (model, version).

:class:`SnapshotCache` builds each pool's snapshot once per change of the
deployments and shares that one immutable message with every stream of the
pool (as go-control-plane's snapshot cache does): a stream waits for its
pool's next snapshot and always takes the latest, so a slow worker skips
intermediate states instead of holding anyone back. A snapshot whose routes
name a version it does not assign is never published.

A published snapshot is also encoded once (:func:`encode`): the WorkerSync
handler (:func:`add_worker_sync_to_server`) sends those same bytes on every
stream instead of serializing the message again per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from lmaas.control_plane import keys
from lmaas.control_plane.deployments import previous_record
from lmaas.control_plane.store.base import Store, StoreError
from lmaas.control_plane.watcher import StoreWatcher
from lmaas.protos.errors import InvalidArgument
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from lmaas.protos.lmaas.worker.v1 import sync_pb2, sync_pb2_grpc

__all__ = ["SnapshotBuilder", "SnapshotCache", "add_worker_sync_to_server", "consistent", "encode", "same_state"]

log = logging.getLogger(__name__)


def same_state(a: sync_pb2.Snapshot | None, b: sync_pb2.Snapshot) -> bool:
    """Whether two snapshots describe the same desired state (revisions aside)."""
    return a is not None and list(a.assignments) == list(b.assignments) and list(a.routes) == list(b.routes)


def consistent(snapshot: sync_pb2.Snapshot) -> bool:
    """Every version a route serves is among the snapshot's assignments."""
    assigned = {(a.model, a.version) for a in snapshot.assignments}
    return all(
        (r.model, r.stable_version) in assigned and (not r.canary_version or (r.model, r.canary_version) in assigned)
        for r in snapshot.routes
    )


class SnapshotBuilder:
    def __init__(self, store: Store, *, keep_previous_warm: bool = True) -> None:
        self._store = store
        self._keep_previous = keep_previous_warm
        self._versions: dict[tuple[str, int], pb.ModelVersion] = {}

    async def _version(self, name: str, number: int) -> pb.ModelVersion | None:
        cached = self._versions.get((name, number))
        if cached is None:
            kv = await self._store.get(keys.version(name, number))
            if kv is None:
                return None
            cached = self._versions[name, number] = pb.ModelVersion.FromString(kv.value)
        return cached

    async def build(self, pool: str) -> sync_pb2.Snapshot:
        result = await self._store.range(keys.DEPLOYMENTS)
        snapshot = sync_pb2.Snapshot(revision=result.revision, accepts_reports=True)  # this version reads Reports
        for kv in result.kvs:
            deployment = pb.Deployment.FromString(kv.value)
            spec = deployment.spec
            if spec.stable_version <= 0 or (spec.pools and pool not in spec.pools):
                continue
            numbers = [spec.stable_version]
            if spec.canary_version:
                numbers.append(spec.canary_version)
            previous = previous_record(deployment) if self._keep_previous else None
            if previous is not None and previous.spec.stable_version not in numbers:
                numbers.append(previous.spec.stable_version)
            versions = [await self._version(deployment.model, n) for n in numbers]
            if any(v is None for v in versions):
                log.error("deployment of model %s names a missing version: %s", deployment.model, numbers)
                continue
            for v in sorted((v for v in versions if v is not None), key=lambda v: v.version):
                snapshot.assignments.add(
                    model=v.model, version=v.version, digest=v.digest, format=v.format, config_json=v.config_json,
                    size_bytes=v.size_bytes, lazy=spec.lazy,
                )
            snapshot.routes.add(
                model=deployment.model, stable_version=spec.stable_version, canary_version=spec.canary_version,
                canary_weight=spec.canary_weight, generation=deployment.generation,
            )
        return snapshot


_REMEMBERED = 256  # generation maps kept (pools x recent snapshots)

# Published snapshots and their wire bytes, by identity (the entry holds the message, so its id stays unique).
_ENCODED: OrderedDict[int, tuple[sync_pb2.Snapshot, bytes | None]] = OrderedDict()
_ENCODED_KEPT = 64
encodings = 0  # snapshots serialized through encode() (tests: once per published snapshot, not per stream)


def _publish(snapshot: sync_pb2.Snapshot) -> None:
    _ENCODED[id(snapshot)] = (snapshot, None)
    while len(_ENCODED) > _ENCODED_KEPT:
        _ENCODED.popitem(last=False)


def encode(snapshot: sync_pb2.Snapshot) -> bytes:
    """The wire form of a snapshot: a published one is serialized once, whatever the number of streams."""
    global encodings
    entry = _ENCODED.get(id(snapshot))
    if entry is None or entry[0] is not snapshot:
        encoded: bytes = snapshot.SerializeToString()  # not a shared one (tests, tools)
        return encoded
    data = entry[1]
    if data is None:
        data = snapshot.SerializeToString()
        encodings += 1
        _ENCODED[id(snapshot)] = (snapshot, data)
    return data


async def _parsed(raw: AsyncIterator[bytes]) -> AsyncIterator[sync_pb2.WorkerMessage]:
    async for data in raw:
        try:
            message = sync_pb2.WorkerMessage.FromString(data)
        except DecodeError as exc:
            raise InvalidArgument(f"malformed WorkerSync message: {exc}") from exc
        yield message
        del message


def add_worker_sync_to_server(servicer: sync_pb2_grpc.WorkerSyncServicer, server: Any) -> None:
    """As the generated ``add_WorkerSyncServicer_to_server``, with :func:`encode` as the response serializer.

    Requests reach the servicer parsed here, not by gRPC: gRPC's reader keeps the last message it read while
    it waits for the next, which for a parsed Ack of 100 models is ~30 KiB of upb arena per stream; its
    wire bytes are a tenth of that."""
    service = sync_pb2.DESCRIPTOR.services_by_name["WorkerSync"].full_name

    def sync(raw: AsyncIterator[bytes], context: Any) -> AsyncIterator[sync_pb2.Snapshot]:
        replies: AsyncIterator[sync_pb2.Snapshot] = servicer.Sync(_parsed(raw), context)
        return replies

    handlers = {
        "Sync": grpc.stream_stream_rpc_method_handler(
            sync, request_deserializer=bytes, response_serializer=encode
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    if hasattr(server, "add_registered_method_handlers"):
        server.add_registered_method_handlers(service, handlers)


class _Pool:
    def __init__(self) -> None:
        self.snapshot: sync_pb2.Snapshot | None = None
        self.changed = asyncio.Event()  # replaced by a fresh one each time a new snapshot is published
        self.lock = asyncio.Lock()
        self.streams = 0
        self.builds = 0


class SnapshotCache:
    """One snapshot per pool and deployments revision, shared by every stream of the pool (never mutate one)."""

    def __init__(self, builder: SnapshotBuilder, watcher: StoreWatcher) -> None:
        self._builder = builder
        self._watcher = watcher
        self._pools: dict[str, _Pool] = {}
        self._task: asyncio.Task[None] | None = None
        self._generations: dict[tuple[str, int], dict[str, int]] = {}

    def generations(self, pool: str, snapshot: sync_pb2.Snapshot) -> dict[str, int]:
        """model → generation routed by ``snapshot``: one shared map per snapshot, not one per stream."""
        key = (pool, snapshot.revision)
        found = self._generations.get(key)
        if found is None:
            found = self._generations[key] = {r.model: r.generation for r in snapshot.routes}
            while len(self._generations) > _REMEMBERED:
                del self._generations[next(iter(self._generations))]
        return found

    def builds(self, pool: str) -> int:
        """How many snapshots of ``pool`` were built (tests: one per change, however many streams)."""
        entry = self._pools.get(pool)
        return entry.builds if entry is not None else 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._refresh(), name="lmaas-snapshot-cache")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @contextlib.contextmanager
    def stream(self, pool: str) -> Iterator[_Pool]:
        entry = self._pools.setdefault(pool, _Pool())
        entry.streams += 1
        try:
            yield entry
        finally:
            entry.streams -= 1

    async def current(self, pool: str) -> sync_pb2.Snapshot:
        """The pool's latest snapshot (built on first use)."""
        entry = self._pools.setdefault(pool, _Pool())
        if entry.snapshot is None:
            await self._rebuild(pool, entry, only_if_missing=True)
        assert entry.snapshot is not None
        return entry.snapshot

    async def next(self, pool: str, seen: sync_pb2.Snapshot | None) -> sync_pb2.Snapshot:
        """The pool's latest snapshot once it differs from ``seen`` (latest wins: intermediate ones are skipped)."""
        entry = self._pools.setdefault(pool, _Pool())
        while True:
            waiter = entry.changed
            snapshot = await self.current(pool)
            if snapshot is not seen:
                return snapshot
            await waiter.wait()

    async def _rebuild(self, pool: str, entry: _Pool, *, only_if_missing: bool = False) -> None:
        async with entry.lock:
            if only_if_missing and entry.snapshot is not None:
                return  # another stream built it while this one waited for the lock
            snapshot = await self._builder.build(pool)
            entry.builds += 1
            if not consistent(snapshot):
                log.error("snapshot of pool %s at revision %d is inconsistent; not published", pool, snapshot.revision)
                if entry.snapshot is not None:
                    return
            if entry.snapshot is not None and same_state(entry.snapshot, snapshot):
                return
            entry.snapshot = snapshot
            _publish(snapshot)
            entry.changed.set()
            entry.changed = asyncio.Event()

    async def _refresh(self) -> None:
        delay = 0.1
        with self._watcher.subscribe(keys.DEPLOYMENTS) as sub:
            while True:
                await sub.wait()
                try:
                    for pool, entry in list(self._pools.items()):
                        if entry.streams == 0:
                            del self._pools[pool]  # rebuilt on its next stream
                        else:
                            await self._rebuild(pool, entry)
                    delay = 0.1
                except StoreError as exc:
                    log.warning("snapshot refresh failed (%s); retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    sub._notify()
