"""Prometheus metrics of the control plane, registered in an injected registry."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence

from lmaas.control_plane.store.base import (
    Compare,
    Delete,
    Event,
    KeyValue,
    Lease,
    Put,
    RangeResult,
    Store,
    Txn,
    TxnResult,
)
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ControlMetrics", "InstrumentedStore"]



class ControlMetrics:
    """``lmaas_control_*`` metrics; pass a fresh ``CollectorRegistry`` in tests."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rollouts = Counter(
            "lmaas_control_rollouts",
            "Rollouts that reached a final phase, by outcome (succeeded|failed|rolled_back).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("succeeded", "failed", "rolled_back"):  # at 0 from the start: increase() needs a prior value
            self.rollouts.labels(outcome)
        self.connected_workers = Gauge(
            "lmaas_control_connected_workers",
            "Workers with a WorkerSync stream open to this replica.",
            registry=registry,
        )
        self.worker_revision = Gauge(
            "lmaas_control_worker_revision",
            "Snapshot revision per worker on this replica: the latest sent (desired) and acknowledged (acked).",
            ["worker", "kind"],
            registry=registry,
        )
        self.store_duration = Histogram(
            "lmaas_control_store_duration_seconds",
            "Latency of metadata-store operations.",
            ["op"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )

    def rollout_finished(self, rollout: pb.Rollout) -> None:
        if rollout.phase == pb.ROLLOUT_PHASE_FAILED:
            self.rollouts.labels("failed").inc()
        elif rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED:
            self.rollouts.labels("rolled_back" if rollout.reason == "rollback" else "succeeded").inc()

    def worker_gone(self, worker_id: str) -> None:
        for kind in ("desired", "acked"):
            with contextlib.suppress(KeyError):
                self.worker_revision.remove(worker_id, kind)


class InstrumentedStore(Store):
    """A :class:`Store` that times every request into ``lmaas_control_store_duration_seconds``."""

    def __init__(self, inner: Store, metrics: ControlMetrics) -> None:
        self.inner = inner
        self._hist = metrics.store_duration

    def _observe(self, op: str, start: float) -> None:
        self._hist.labels(op).observe(time.perf_counter() - start)

    async def get(self, key: str) -> KeyValue | None:
        start = time.perf_counter()
        try:
            return await self.inner.get(key)
        finally:
            self._observe("get", start)

    async def range(self, prefix: str) -> RangeResult:
        start = time.perf_counter()
        try:
            return await self.inner.range(prefix)
        finally:
            self._observe("range", start)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        start = time.perf_counter()
        try:
            return await self.inner.put(key, value, lease)
        finally:
            self._observe("put", start)

    async def delete(self, key: str, prefix: bool = False) -> int:
        start = time.perf_counter()
        try:
            return await self.inner.delete(key, prefix)
        finally:
            self._observe("delete", start)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Put | Delete], failure: Sequence[Put | Delete] = ()
    ) -> TxnResult:
        start = time.perf_counter()
        try:
            return await self.inner.txn(compares, success, failure)
        finally:
            self._observe("txn", start)

    async def txn_batch(self, batch: Sequence[Txn]) -> list[TxnResult]:
        start = time.perf_counter()
        try:
            return await self.inner.txn_batch(batch)
        finally:
            self._observe("txn", start)  # one store request, whatever the batch size

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        return self.inner.watch(prefix, start_revision)

    async def lease(self, ttl: int) -> Lease:
        start = time.perf_counter()
        try:
            return await self.inner.lease(ttl)
        finally:
            self._observe("lease", start)

    async def revision(self) -> int:
        start = time.perf_counter()
        try:
            return await self.inner.revision()
        finally:
            self._observe("revision", start)

    async def compact(self, revision: int) -> None:
        await self.inner.compact(revision)

    async def close(self) -> None:
        await self.inner.close()
