"""WorkerSync, control-plane side: one session per worker stream.

A session registers the worker under its replica's lease (``/lmaas/v1/workers/<id>``),
sends the pool's complete desired state, and sends it again whenever a
deployment changes (the replica's store watch wakes it; a state equal to the
last one sent is not resent). Each Ack is written as leased observed state
(``/lmaas/v1/observed/<worker>/<model>``) and the acknowledged models'
rollouts are evaluated (an observed key is written only when the model's state changed: its
``snapshot_revision`` is the snapshot whose Ack first reported that state). The session's
writes are compare-and-swap on the worker key: if the same worker id registered again (it reconnected, maybe to
another replica), this older session's write fails and it ends. When the
stream ends, the session deletes the worker and its observed state (if no newer
stream of the worker replaced them); if the replica dies, its one lease expires
and takes every key of its workers with it. One lease per replica, not one per
worker: a thousand leases refreshed every few seconds would load the store and
expire under CPU pressure.

Fleet scale: the pool's snapshot comes from the shared
:class:`~lmaas.control_plane.snapshots.SnapshotCache` (built once per change,
whatever the number of streams; each stream sends the latest one when it is
ready, so a slow worker holds back nobody), and an Ack only writes: the
rollout is evaluated when the replica's progress mirror says it may finish. The writes of all sessions of
the replica go through one :class:`~lmaas.control_plane.store.batcher.TxnBatcher`: the Acks of many
workers arriving together cost one store request, each keeping its own compare-and-swap.
A stream authenticated by a token ends (UNAUTHENTICATED) as soon as the
store watch shows the token revoked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from lmaas.control_plane import keys
from lmaas.control_plane.auth import current_principal
from lmaas.control_plane.deployments import Deployments
from lmaas.control_plane.limits import MAX_ERROR, MAX_HELD, MAX_SHORT_TEXT, check_count, check_text
from lmaas.control_plane.metrics import ControlMetrics
from lmaas.control_plane.registry import now_ms
from lmaas.control_plane.snapshots import SnapshotBuilder, SnapshotCache
from lmaas.control_plane.store.base import Compare, Delete, Lease, Put, Store
from lmaas.control_plane.store.batcher import TxnBatcher
from lmaas.control_plane.tokens import Tokens
from lmaas.control_plane.watcher import StoreWatcher
from lmaas.protos.errors import Aborted, InvalidArgument, Unauthenticated
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from lmaas.protos.lmaas.worker.v1 import sync_pb2

__all__ = ["SyncSettings", "WorkerSync"]

log = logging.getLogger(__name__)
_REMEMBERED_SNAPSHOTS = 32
_MAX_BUCKETS = 64  # bounds of one reported histogram (the worker's have 15-20)
_T = TypeVar("_T")
_FLUSH_DELAY = 0.5  # seconds a sent snapshot's desired revision waits to ride along with the worker's Ack write


@dataclass(frozen=True)
class SyncSettings:
    replica_id: str
    lease_ttl: int = 10


class WorkerSync:
    def __init__(
        self,
        store: Store,
        snapshots: SnapshotBuilder,
        deployments: Deployments,
        watcher: StoreWatcher,
        metrics: ControlMetrics,
        settings: SyncSettings,
        *,
        cache: SnapshotCache | None = None,
        tokens: Tokens | None = None,
    ) -> None:
        self._store = store
        self.writes = TxnBatcher(store)  # one store request for the Acks of many workers arriving together
        self._snapshots = snapshots
        self.cache = cache if cache is not None else SnapshotCache(snapshots, watcher)
        self._owns_cache = cache is None
        self._tokens = tokens
        self._deployments = deployments
        self._watcher = watcher
        self._metrics = metrics
        self._settings = settings
        self._closing = asyncio.Event()
        self._cleanups: set[asyncio.Task[None]] = set()
        self._lease: Lease | None = None
        self._lease_lock = asyncio.Lock()

    def start(self) -> None:
        if self._owns_cache:
            self.cache.start()

    def close(self) -> None:
        """End every session (at shutdown): their workers reconnect, to another replica if there is one."""
        self._closing.set()

    async def stop(self) -> None:
        if self._owns_cache:
            await self.cache.stop()
        await self.writes.close()
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(Exception):
                await lease.revoke()

    async def session(
        self, hello: sync_pb2.Hello, incoming: AsyncIterator[sync_pb2.WorkerMessage]
    ) -> AsyncIterator[sync_pb2.Snapshot]:
        """Snapshots for one worker stream; ``incoming`` is the rest of the stream after the hello."""
        keys.check_worker_id(hello.worker_id)
        pool = hello.pool or "default"
        keys.check_name(pool, "pool name")
        check_text(hello.inference_address, "inference_address", MAX_SHORT_TEXT)
        _held(hello.held)
        principal = current_principal()
        token_id = principal.name.removeprefix("token:") if principal and principal.name.startswith("token:") else ""
        lease = await self._presence_lease()
        session = _Session(self, hello, pool, lease, token_id)
        registered = False
        ended = False

        async def end() -> None:
            nonlocal ended
            if ended:
                return
            ended = True
            if registered:
                with contextlib.suppress(Exception):
                    await session.unregister()
                self._metrics.connected_workers.dec()
                self._metrics.worker_gone(hello.worker_id)
                log.info("worker %s disconnected", hello.worker_id)

        # A stream cancelled while this generator waits at ``yield`` may never resume it (gRPC drops it; only
        # garbage collection would close it): the end of the worker's side of the stream cleans up as well.
        session.on_end = lambda: self._background(end())
        try:
            await session.register()
            registered = True
            self._metrics.connected_workers.inc()
            log.info("worker %s (pool %s, %s) connected", hello.worker_id, pool, hello.inference_address)
            async for snapshot in session.run(incoming):
                yield snapshot
        finally:
            await end()

    async def _presence_lease(self) -> Lease:
        """The replica's lease for worker presence, granted again after it expired (the store was unreachable)."""
        async with self._lease_lock:
            if self._lease is None or self._lease.expired:
                self._lease = await self._store.lease(self._settings.lease_ttl)
            return self._lease

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)


class _Session:
    def __init__(self, sync: WorkerSync, hello: sync_pb2.Hello, pool: str, lease: Lease, token_id: str) -> None:
        self.sync = sync
        self.token_id = token_id
        self.worker_id = hello.worker_id
        self.lease = lease
        self.key = keys.worker(hello.worker_id)
        self.info = pb.WorkerInfo(
            worker_id=hello.worker_id, pool=pool, inference_address=hello.inference_address,
            control_plane=sync._settings.replica_id, connected_at_ms=now_ms(),
        )  # without held: those are kept as a shared tuple and encoded once (_held_wire)
        self.sent: dict[int, dict[str, int]] = {}  # snapshot revision → model → generation
        # as last written, model by model; shared with every session in the same state (see _shared)
        self.observed_state: tuple[tuple[str, _State], ...] = ()
        self.held = _held(hello.held)
        self.held_wire: bytes | None = None  # the record's held entries, encoded; None after a change
        self.revision = 0  # mod_revision of our latest write of the worker key
        self.lock = asyncio.Lock()
        self.on_end: Callable[[], None] = lambda: None
        self.unwritten = False  # info changed (desired revision) since the last write
        self.memory: dict[tuple[str, int], tuple[int, int]] = {}  # (model, version) → measured (bytes, peak)
        self.flusher: asyncio.Task[None] | None = None

    async def register(self) -> None:
        """Write the worker key, replacing a record of an older stream of the same worker."""
        async with self.lock:
            ops: list[Put | Delete] = [Put(self.key, self.record(), self.lease.id)]
            progress = self.sync._deployments.progress
            if progress is not None and progress.synced:
                # An older stream's observed keys (maybe under a dead replica's lease) are left for the first Ack
                # to overwrite, or delete if it no longer reports them: deleting them here too would double the
                # store events of a reconnecting fleet (a killed replica's workers, each with every model).
                self.observed_state = tuple((m, _STALE) for m in progress.observed_models(self.worker_id))
            else:
                ops.append(Delete(keys.observed(self.worker_id), prefix=True))
            result = await self.sync.writes.txn([], ops)
            self.revision = result.revision

    async def unregister(self) -> None:
        """Delete the worker key and its observed state, unless a newer stream of the worker wrote them."""
        async with self.lock:
            await self.sync.writes.txn(
                [Compare.unchanged(self.key, self.revision)],
                [Delete(self.key), Delete(keys.observed(self.worker_id), prefix=True)],
            )

    def record(self) -> bytes:
        """The worker key's value: the record's fields, then its held entries (encoded protobuf messages
        concatenate as a merge, and ``held`` is repeated)."""
        if self.held_wire is None:
            wire = _HELD_WIRE.get(self.held) if not self.memory else None  # workers without memory figures share
            if wire is None:
                held = pb.WorkerInfo(held=[pb.HeldVersion(model=m, version=v, digest=d) for m, v, d in self.held])
                _held_memory(held, self.memory)
                wire = held.SerializeToString()
                if not self.memory:
                    if len(_HELD_WIRE) >= _SHARED_MAX:
                        _HELD_WIRE.clear()
                    _HELD_WIRE[self.held] = wire
            self.held_wire = wire
        fields: bytes = self.info.SerializeToString()
        return fields + self.held_wire

    async def _write(self, extra: list[Put | Delete]) -> None:
        ops: list[Put | Delete] = [Put(self.key, self.record(), self.lease.id), *extra]
        result = await self.sync.writes.txn([Compare.unchanged(self.key, self.revision)], ops)
        if not result.succeeded:
            raise Aborted(f"worker {self.worker_id} registered again on another stream; closing this one")
        self.revision = result.revision
        self.unwritten = False

    def _write_soon(self) -> None:
        """Coalesce: the desired revision is written with the next Ack, or alone after a short delay."""
        self.unwritten = True
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.create_task(self._flush(), name=f"lmaas-sync-flush-{self.worker_id}")

    async def _flush(self) -> None:
        await asyncio.sleep(_FLUSH_DELAY)
        async with self.lock:
            if self.unwritten:
                await self._write([])

    async def run(self, incoming: AsyncIterator[sync_pb2.WorkerMessage]) -> AsyncIterator[sync_pb2.Snapshot]:
        sync = self.sync
        pool = self.info.pool
        with sync.cache.stream(pool):
            reader = asyncio.create_task(self._read(incoming), name=f"lmaas-sync-read-{self.worker_id}")
            reader.add_done_callback(lambda _: self.on_end())
            closing = asyncio.create_task(sync._closing.wait())
            revoked = asyncio.create_task(self._watch_token())
            try:
                last: sync_pb2.Snapshot | None = None
                while True:
                    waiter = asyncio.create_task(sync.cache.next(pool, last))
                    done, _ = await asyncio.wait(
                        {waiter, reader, closing, revoked}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if waiter not in done:
                        waiter.cancel()
                    if revoked in done:
                        revoked.result()  # Unauthenticated
                    if reader in done:
                        reader.result()  # the worker's error, if any
                        return
                    if closing in done:
                        return
                    snapshot = waiter.result()
                    self.sent[snapshot.revision] = sync.cache.generations(pool, snapshot)
                    for old in sorted(self.sent)[:-_REMEMBERED_SNAPSHOTS]:
                        del self.sent[old]
                    self.info.desired_revision = snapshot.revision
                    if self.flusher is not None and self.flusher.done():
                        self.flusher.result()  # ABORTED when another stream of this worker took over
                    self._write_soon()
                    sync._metrics.worker_revision.labels(self.worker_id, "desired").set(snapshot.revision)
                    yield snapshot
                    last = snapshot
            finally:
                for task in (reader, closing, revoked, *([self.flusher] if self.flusher else [])):
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _watch_token(self) -> None:
        """Return never while the stream's token is valid; raise UNAUTHENTICATED once it is revoked."""
        tokens = self.sync._tokens
        if not self.token_id or tokens is None:
            await asyncio.Event().wait()
            return
        with self.sync._watcher.subscribe(keys.token(self.token_id)) as sub:
            while True:
                token = await tokens.get(self.token_id)  # once at the start: a revocation may precede the watch
                if token is None or token.revoked_at_ms:
                    log.warning("worker %s: token %s revoked; ending its stream", self.worker_id, self.token_id)
                    raise Unauthenticated(f"token {self.token_id} was revoked")
                await sub.wait()

    async def _read(self, incoming: AsyncIterator[sync_pb2.WorkerMessage]) -> None:
        async for message in incoming:
            kind = message.WhichOneof("kind")
            if kind == "report":
                await self._on_report(message.report)
            elif kind == "ack":
                await self._on_ack(message.ack)
            else:
                raise InvalidArgument("only the first WorkerSync message may be a hello; then acks and reports")
            del message  # not kept while waiting for the next one: an Ack of 100 models is ~30 KiB of upb arena

    def _take_memory(self, memory: sync_pb2.Memory) -> bool:
        """Put the worker's memory figures on its record; True if they changed enough to be written."""
        check_count(memory.versions, "version memory entries", MAX_HELD)
        by_version = {(v.model, v.version): (max(0, v.bytes), max(0, v.peak_bytes)) for v in memory.versions}
        info = self.info
        before = (info.memory_capacity_bytes, info.memory_used_bytes, self.memory)
        self.memory = by_version
        info.memory_capacity_bytes = max(0, memory.capacity_bytes)
        info.memory_used_bytes = max(0, memory.used_bytes)
        if before[2] != by_version:
            self.held_wire = None
        used_moved = abs(info.memory_used_bytes - before[1]) > max(before[1] // 50, 1 << 20)  # 2 % or 1 MiB
        return used_moved or before[0] != info.memory_capacity_bytes or before[2] != by_version

    async def _on_report(self, report: sync_pb2.Report) -> None:
        """Memory and cumulative latency histograms; the record is written only when a figure moved (an idle
        worker costs no store writes)."""
        check_count(report.latency, "latency entries", MAX_HELD)
        latency = []
        for v in report.latency:
            check_text(v.model, "latency model name", MAX_SHORT_TEXT)
            for h in (v.request_duration, v.time_to_first_token):
                check_count(h.bounds, "histogram bounds", _MAX_BUCKETS)
                if len(h.counts) != len(h.bounds):
                    raise InvalidArgument("a histogram needs one count per bound")
            latency.append(pb.VersionLatency.FromString(v.SerializeToString()))  # same fields, other package
        async with self.lock:
            changed = self._take_memory(report.memory) if report.HasField("memory") else False
            if list(self.info.latency) != latency:
                self.info = _replaced(self.info, "latency", latency)
                changed = True
            if changed:
                self.info.reported_at_ms = now_ms()
                await self._write([])

    async def _on_ack(self, ack: sync_pb2.Ack) -> None:
        held = _held(ack.held)
        generations = self.sent.get(ack.snapshot_revision)
        if generations is None:
            log.warning("worker %s acknowledged unknown snapshot %d", self.worker_id, ack.snapshot_revision)
            return
        now = now_ms()
        ops: list[Put | Delete] = []
        before = dict(self.observed_state)
        written: list[tuple[str, _State]] = []
        for status in ack.models:
            model = status.model
            generation = generations.get(model)
            if generation is None:
                continue
            loaded = status.loaded_versions
            state = (generation, status.ok, status.error[:MAX_ERROR],
                     tuple(loaded) if len(loaded) <= MAX_HELD else tuple(loaded[:MAX_HELD]))
            written.append((model, state))
            if before.pop(model, None) == state:
                continue  # unchanged since the Ack that first reported it: O(changed models) writes per Ack
            observed = pb.ObservedModel(
                worker_id=self.worker_id, model=status.model, generation=generation,
                snapshot_revision=ack.snapshot_revision, ok=status.ok, error=status.error[:MAX_ERROR],
                loaded_versions=status.loaded_versions[:MAX_HELD], updated_at_ms=now,
            )
            ops.append(Put(keys.observed(self.worker_id, status.model), observed.SerializeToString(), self.lease.id))
            if not status.ok:
                log.warning("worker %s NACK model %s: %s", self.worker_id, status.model, status.error)
        ops.extend(Delete(keys.observed(self.worker_id, m)) for m in before)  # no longer reported
        async with self.lock:
            self.info.acked_revision = ack.snapshot_revision
            if held != self.held:
                self.held, self.held_wire = held, None
            if ack.HasField("memory"):
                self._take_memory(ack.memory)
                self.info.reported_at_ms = now
            await self._write(ops)
        self.observed_state = _shared(tuple(written))
        self.sync._metrics.worker_revision.labels(self.worker_id, "acked").set(ack.snapshot_revision)
        if self.sync._deployments.progress is None:  # without a progress mirror, evaluate here
            for model in sorted(m for m, _ in written):
                with contextlib.suppress(Aborted):
                    await self.sync._deployments.evaluate(model)


_State = tuple[int, bool, str, tuple[int, ...]]  # generation, ok, error, loaded versions
_STALE: _State = (-1, False, "", ())  # written by an older stream: never equal to a reported state
_SHARED: dict[Any, Any] = {}
_SHARED_MAX = 4096
_HELD_WIRE: dict[tuple[tuple[str, int, str], ...], bytes] = {}  # held versions → their encoded record entries


def _shared(value: _T) -> _T:
    """One copy of equal immutable values across sessions: a fleet converges on the same observed state and
    held versions, so a thousand workers hold a few tuples instead of a thousand (issue 13: memory/worker)."""
    found = _SHARED.get(value)
    if found is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        _SHARED[value] = found = value
    return found


def _replaced(info: pb.WorkerInfo, field: str, items: Sequence[Any]) -> pb.WorkerInfo:
    """``info`` with a repeated field replaced, as a fresh message: upb keeps removed elements in the message's
    arena until the message dies, so replacing them in place grows a long-lived session's record every Ack."""
    info.ClearField(field)
    fresh = pb.WorkerInfo()
    fresh.CopyFrom(info)
    getattr(fresh, field).extend(items)
    return fresh


def _held_memory(info: pb.WorkerInfo, memory: dict[tuple[str, int], tuple[int, int]]) -> None:
    for h in info.held:
        h.memory_bytes, h.memory_peak_bytes = memory.get((h.model, h.version), (0, 0))


def _held(held: Sequence[sync_pb2.Held]) -> tuple[tuple[str, int, str], ...]:
    """The held versions, checked (once per distinct list: a fleet reports the same one a thousand times)."""
    check_count(held, "held versions", MAX_HELD)
    value = tuple((h.model, h.version, h.digest) for h in held)
    if value not in _SHARED:
        for model, _, digest in value:
            check_text(model, "held model name", MAX_SHORT_TEXT)
            check_text(digest, "held digest", MAX_SHORT_TEXT)
    return _shared(value)
