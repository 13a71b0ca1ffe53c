"""Simulated workers for the fleet benchmark and tests: light WorkerSync clients, no models, no artifacts.

A :class:`SimWorker` keeps one ``Sync`` stream open (to any of several
control-plane replicas in turn, reconnecting as a real worker does,
``server/sync.py``: exponential backoff from 0.2 s with jitter, reset once a
stream delivered a snapshot; so a killed replica's workers do not all come
back in the same millisecond), "loads" each newly assigned version by sleeping ``load_time`` seconds,
and acknowledges every routed model of the latest snapshot, exactly the Ack a
real worker sends. Models named in ``reject`` are NACKed. Many SimWorkers share
one process, event loop and gRPC channel per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio
from lmaas.protos.lmaas.worker.v1 import sync_pb2, sync_pb2_grpc

__all__ = ["SimFleet", "SimWorker"]

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclass
class SimWorker:
    worker_id: str
    stubs: list[sync_pb2_grpc.WorkerSyncStub]
    pool: str = "default"
    token: str | None = None
    load_time: float = 0.0
    reject: frozenset[str] = frozenset()
    on_ack: Callable[[SimWorker, sync_pb2.Snapshot], None] | None = None
    start_index: int = 0
    held: set[tuple[str, int]] = field(default_factory=set)
    acked_revision: int = 0
    generations: dict[str, int] = field(default_factory=dict)  # model → generation acknowledged
    connects: int = 0
    received: int = 0  # snapshots received, all streams
    last_error: grpc.aio.AioRpcError | None = None
    stop_on: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAUTHENTICATED})
    initial_backoff: float = 0.2  # as the real worker's WorkerSync client
    max_backoff: float = 10.0

    async def run(self) -> None:
        """Sync until cancelled, or until the stream ends with a status in ``stop_on`` (then that error stays in
        :attr:`last_error`)."""
        backoff = self.initial_backoff
        for i in itertools.count(self.start_index):
            stub = self.stubs[i % len(self.stubs)]
            delivered = self.received
            try:
                await self._stream(stub)
            except grpc.aio.AioRpcError as exc:
                self.last_error = exc
                if exc.code() in self.stop_on:
                    return
            if self.received != delivered:  # that stream worked: back off afresh
                backoff = self.initial_backoff
            delay = backoff * (0.5 + random.random())
            backoff = min(backoff * 2, self.max_backoff)
            await asyncio.sleep(delay)

    async def _stream(self, stub: sync_pb2_grpc.WorkerSyncStub) -> None:
        outgoing: asyncio.Queue[sync_pb2.WorkerMessage | None] = asyncio.Queue()
        hello = sync_pb2.Hello(
            worker_id=self.worker_id, pool=self.pool, inference_address=f"{self.worker_id}:8001",
            held=[sync_pb2.Held(model=m, version=v, digest="") for m, v in sorted(self.held)],
        )
        outgoing.put_nowait(sync_pb2.WorkerMessage(hello=hello))

        async def messages() -> AsyncIterator[sync_pb2.WorkerMessage]:
            while (message := await outgoing.get()) is not None:
                yield message

        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else None
        call = stub.Sync(messages(), metadata=metadata)
        self.connects += 1
        try:
            async for snapshot in call:
                ack = await self._apply(snapshot)
                outgoing.put_nowait(sync_pb2.WorkerMessage(ack=ack))
                if self.on_ack is not None:
                    self.on_ack(self, snapshot)
        finally:
            outgoing.put_nowait(None)
            call.cancel()

    async def _apply(self, snapshot: sync_pb2.Snapshot) -> sync_pb2.Ack:
        new = {(a.model, a.version) for a in snapshot.assignments} - self.held
        if new and self.load_time > 0:
            await asyncio.sleep(self.load_time)
        self.held = {(a.model, a.version) for a in snapshot.assignments}
        ack = sync_pb2.Ack(
            snapshot_revision=snapshot.revision,
            held=[sync_pb2.Held(model=m, version=v, digest="") for m, v in sorted(self.held)],
        )
        by_model: dict[str, list[int]] = {}  # one pass, not one per route: the simulator must stay O(models)
        for m, v in sorted(self.held):
            by_model.setdefault(m, []).append(v)
        for r in snapshot.routes:
            ok = r.model not in self.reject
            ack.models.add(
                model=r.model, loaded_versions=by_model.get(r.model, []), ok=ok,
                error="" if ok else "simulated load failure",
            )
            self.generations[r.model] = r.generation
        self.acked_revision = snapshot.revision
        self.received += 1
        return ack


class SimFleet:
    """``n`` SimWorkers in this process, spread round-robin over the replicas' addresses."""

    def __init__(
        self, addresses: list[str], n: int, *, prefix: str = "sim", token: str | None = None, load_time: float = 0.0,
        pool: str = "default", first: int = 0,
    ) -> None:
        self._channels = [grpc.aio.insecure_channel(a, options=CHANNEL_OPTIONS) for a in addresses]
        stubs = [sync_pb2_grpc.WorkerSyncStub(c) for c in self._channels]
        self.workers = [
            SimWorker(f"{prefix}-{first + i:05d}", stubs, pool=pool, token=token, load_time=load_time,
                      start_index=first + i)
            for i in range(n)
        ]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(w.run(), name=f"sim-{w.worker_id}") for w in self.workers]

    def connected(self) -> int:
        return sum(1 for w in self.workers if w.acked_revision > 0)

    async def wait_connected(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.connected() < len(self.workers):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.connected()} of {len(self.workers)} simulated workers synced")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for channel in self._channels:
            await channel.close()
