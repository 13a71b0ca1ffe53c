"""The production metadata store: etcd v3 over gRPC (asyncio), on one or more endpoints.

The wire layer is aetcd's generated etcd v3 stubs (``aetcd.rpc``) on our own ``grpc.aio``
channels, one per endpoint. aetcd's ``Client`` is not used: it has one endpoint, does not resume
watches and does not keep leases alive, and this module has to do all three:

* **failover** — calls go to the active endpoint; when it is unreachable the store moves to the
  next one. Reads are retried on any UNAVAILABLE; writes only when the request surely did not
  reach etcd (connection refused, or the member answered "no leader" before proposing), so a
  retry can never apply a write twice. Retries stop at the call's ``timeout``.
* **watch resume** — a watch keeps the revision after the last event it yielded and, when its
  stream breaks (a member restarts or dies), re-creates itself from there on any endpoint with
  backoff. Every stream carries etcd's ``hasleader`` metadata, so a member cut off from the
  cluster ends its watches instead of going silent.
* **lease keepalive** — one task per lease sends LeaseKeepAlive every ttl/3 and reconnects on
  failure; when etcd answers TTL 0 the lease is marked expired.

Errors: every ``grpc.aio.AioRpcError`` is translated in :func:`._etcd_wire.translate` (the one boundary):
"lease not found" → :class:`LeaseNotFound`, a compacted watch → :class:`WatchCompacted`,
INVALID_ARGUMENT → ``ValueError``, everything else → :class:`StoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from aetcd import rpc

from ._common import KeptAliveLease, check_key, encode_key, validate_batch, validate_txn
from ._etcd_wire import (
    REQUIRE_LEADER,
    STREAM_BROKEN,
    Endpoint,
    Reconnect,
    compare,
    key_range,
    not_sent,
    parse_endpoint,
    to_kv,
    translate,
)
from .base import (
    Compare,
    Delete,
    Event,
    EventType,
    KeyValue,
    Lease,
    LeaseNotFound,
    Put,
    RangeResult,
    Store,
    StoreError,
    Txn,
    TxnResult,
    WatchCompacted,
)

__all__ = ["EtcdLease", "EtcdStore"]

log = logging.getLogger(__name__)


class EtcdLease(KeptAliveLease):
    """A EtcdStore lease, refreshed by the store's keepalive task."""


class EtcdStore(Store):
    """The metadata store on an etcd cluster. ``endpoints`` are ``host:port`` client addresses of its members.

    ``timeout`` bounds each call including its retries; ``backoff_max`` caps the wait between a watch's or a
    keepalive's reconnect attempts.
    """

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 5.0, backoff_max: float = 0.5) -> None:
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        self._endpoints = [Endpoint(parse_endpoint(e)) for e in endpoints]
        if not self._endpoints:
            raise ValueError("etcd store needs at least one endpoint")
        self._active = 0
        self._timeout = timeout
        self._backoff_max = backoff_max
        self._closed = False
        self._leases: dict[int, EtcdLease] = {}
        self._streams: set[Any] = set()  # open watch calls: closing a grpc.aio channel does not end their reads

    def __repr__(self) -> str:
        return f"EtcdStore({[e.address for e in self._endpoints]!r})"

    @property
    def endpoints(self) -> list[str]:
        return [e.address for e in self._endpoints]

    @property
    def active_endpoint(self) -> str:
        return self._endpoints[self._active].address

    # -- plumbing ----------------------------------------------------------------------------------------------

    def _endpoint(self) -> Endpoint:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        endpoint = self._endpoints[self._active]
        endpoint.open()
        return endpoint

    def _failover(self, failed: Endpoint) -> None:
        """Move off ``failed`` (unless another caller already did)."""
        if self._endpoints[self._active] is failed and len(self._endpoints) > 1:
            self._active = (self._active + 1) % len(self._endpoints)
            log.info("etcd store: %s failed, switching to %s", failed.address, self.active_endpoint)

    async def _unary(
        self,
        what: str,
        call: Callable[[Endpoint, float], Awaitable[Any]],
        *,
        mutating: bool,
        leases: Sequence[int] = (),
    ) -> Any:
        """``call(endpoint, timeout)`` with failover and retries inside ``self._timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        backoff, attempts = 0.05, 0
        while True:
            endpoint = self._endpoint()
            try:
                return await call(endpoint, max(deadline - loop.time(), 0.001))
            except grpc.aio.AioRpcError as exc:
                retry = exc.code() == grpc.StatusCode.UNAVAILABLE and (not mutating or not_sent(exc))
                attempts += 1
                if attempts % len(self._endpoints) == 0:
                    pause = backoff
                    backoff = min(backoff * 2, self._backoff_max)
                else:
                    pause = 0.0
                if not retry or self._closed or loop.time() + pause >= deadline:
                    raise translate(f"{what} via {endpoint.address}", exc, leases=leases) from exc
                self._failover(endpoint)
                if pause:
                    await asyncio.sleep(pause)
            except grpc.aio.UsageError as exc:  # the channel was closed under the call
                raise StoreError(f"etcd {what}: {self!r} is closed") from exc

    async def _range(self, request: Any) -> Any:
        return await self._unary(
            "range", lambda e, t: e.kv.Range(request, timeout=t, metadata=REQUIRE_LEADER), mutating=False
        )

    # -- Store -------------------------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        check_key(key)
        resp = await self._range(rpc.RangeRequest(key=encode_key(key)))
        return to_kv(resp.kvs[0]) if resp.kvs else None

    async def range(self, prefix: str) -> RangeResult:
        key, end = key_range(prefix)
        resp = await self._range(rpc.RangeRequest(key=key, range_end=end))
        return RangeResult([to_kv(kv) for kv in resp.kvs], int(resp.header.revision))

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        check_key(key)
        request = rpc.PutRequest(key=encode_key(key), value=value, lease=lease)
        resp = await self._unary(
            "put", lambda e, t: e.kv.Put(request, timeout=t, metadata=REQUIRE_LEADER), mutating=True, leases=[lease]
        )
        return int(resp.header.revision)

    def _delete_request(self, key: str, prefix: bool) -> Any:
        if prefix:
            raw, end = key_range(key)
            return rpc.DeleteRangeRequest(key=raw, range_end=end)
        check_key(key)
        return rpc.DeleteRangeRequest(key=encode_key(key))

    async def delete(self, key: str, prefix: bool = False) -> int:
        request = self._delete_request(key, prefix)
        resp = await self._unary(
            "delete", lambda e, t: e.kv.DeleteRange(request, timeout=t, metadata=REQUIRE_LEADER), mutating=True
        )
        return int(resp.header.revision)

    def _op(self, op: Put | Delete) -> Any:
        if isinstance(op, Put):
            return rpc.RequestOp(request_put=rpc.PutRequest(key=encode_key(op.key), value=op.value, lease=op.lease))
        return rpc.RequestOp(request_delete_range=self._delete_request(op.key, op.prefix))

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Put | Delete], failure: Sequence[Put | Delete] = ()
    ) -> TxnResult:
        validate_txn(compares, success, failure)
        request = rpc.TxnRequest(
            compare=[compare(c) for c in compares],
            success=[self._op(op) for op in success],
            failure=[self._op(op) for op in failure],
        )
        leases = [op.lease for op in (*success, *failure) if isinstance(op, Put)]
        resp = await self._unary(
            "txn", lambda e, t: e.kv.Txn(request, timeout=t, metadata=REQUIRE_LEADER), mutating=True, leases=leases
        )
        return TxnResult(bool(resp.succeeded), int(resp.header.revision))

    async def txn_batch(self, batch: Sequence[Txn]) -> list[TxnResult]:
        validate_batch(batch)
        if not batch:
            return []
        # one transaction of nested ones (etcd >= 3.3): compares of all of them see the state before it
        request = rpc.TxnRequest(success=[
            rpc.RequestOp(request_txn=rpc.TxnRequest(
                compare=[compare(c) for c in t.compares],
                success=[self._op(op) for op in t.success],
                failure=[self._op(op) for op in t.failure],
            ))
            for t in batch
        ])
        leases = [op.lease for t in batch for op in (*t.success, *t.failure) if isinstance(op, Put)]
        resp = await self._unary(
            "txn", lambda e, t: e.kv.Txn(request, timeout=t, metadata=REQUIRE_LEADER), mutating=True, leases=leases
        )
        revision = int(resp.header.revision)
        return [TxnResult(bool(r.response_txn.succeeded), revision) for r in resp.responses]

    async def revision(self) -> int:
        resp = await self._range(rpc.RangeRequest(key=b"\0", count_only=True))
        return int(resp.header.revision)

    async def compact(self, revision: int) -> None:
        request = rpc.CompactionRequest(revision=revision)
        try:
            await self._unary(
                "compact", lambda e, t: e.kv.Compact(request, timeout=t, metadata=REQUIRE_LEADER), mutating=False
            )
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, grpc.aio.AioRpcError) and cause.code() == grpc.StatusCode.OUT_OF_RANGE:
                if "future revision" in (cause.details() or ""):
                    raise ValueError(f"cannot compact to revision {revision}: {cause.details()}") from cause
                return  # already compacted at or past it
            raise

    # -- watch -------------------------------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int = 0) -> AsyncIterator[Event]:
        key, end = key_range(prefix)
        # For "from now" the start is pinned with a read first: the header of etcd's `created` answer may be
        # later than where the watch really started, and resuming from it could skip an event.
        next_revision = max(start_revision, 0)
        backoff = 0.05
        while not self._closed:
            call: Any = None
            endpoint: Endpoint | None = None
            try:
                if next_revision == 0:
                    next_revision = await self.revision() + 1
                endpoint = self._endpoint()
                call = endpoint.watch.Watch(metadata=REQUIRE_LEADER)
                self._streams.add(call)
                await call.write(
                    rpc.WatchRequest(
                        create_request=rpc.WatchCreateRequest(key=key, range_end=end, start_revision=next_revision)
                    )
                )
                created = False
                while True:
                    resp = await (call.read() if created else asyncio.wait_for(call.read(), self._timeout))
                    if resp is grpc.aio.EOF:
                        raise Reconnect("stream ended")
                    if resp.compact_revision:
                        raise WatchCompacted(next_revision, int(resp.compact_revision))
                    if resp.canceled:
                        raise Reconnect(f"watch canceled: {resp.cancel_reason}")
                    if resp.created:
                        created, backoff = True, 0.05
                    for ev in resp.events:
                        kind = EventType.PUT if ev.type == rpc.Event.PUT else EventType.DELETE
                        yield Event(kind, to_kv(ev.kv))
                        next_revision = int(ev.kv.mod_revision) + 1
            except WatchCompacted:
                raise
            except (*STREAM_BROKEN, StoreError) as exc:  # StoreError: the revision() read failed
                if self._closed:
                    return
                log.info("etcd watch %r from %d: %s; reconnecting in %.2f s", prefix, next_revision, exc, backoff)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._closed and task is not None and not task.cancelling():
                    return  # the channel was closed under us by close()
                raise
            except grpc.aio.UsageError:
                if self._closed:
                    return
                raise
            finally:
                if call is not None:
                    self._streams.discard(call)
                    call.cancel()
            if endpoint is not None:
                self._failover(endpoint)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max)

    # -- leases ------------------------------------------------------------------------------------------------

    async def lease(self, ttl: int, *, keepalive: bool = True) -> Lease:
        """See :meth:`Store.lease`; ``keepalive=False`` grants a lease nobody refreshes."""
        if ttl < 1:
            raise ValueError(f"lease ttl must be >= 1 second, got {ttl}")
        request = rpc.LeaseGrantRequest(TTL=ttl)
        resp = await self._unary(
            "lease grant", lambda e, t: e.lease.LeaseGrant(request, timeout=t, metadata=REQUIRE_LEADER),
            mutating=True,
        )
        if resp.error:
            raise StoreError(f"etcd lease grant: {resp.error}")
        lease = EtcdLease(self, int(resp.ID), int(resp.TTL))
        self._leases[lease.id] = lease
        if keepalive:
            lease._task = asyncio.create_task(self._keepalive(lease), name=f"lmaas-etcd-lease {lease.id:x}")
        return lease

    async def _keepalive(self, lease: EtcdLease) -> None:
        interval = max(lease.ttl / 3.0, 0.1)
        backoff = 0.05
        call: Any = None
        endpoint: Endpoint | None = None
        try:
            while not self._closed:
                try:
                    if call is None:
                        endpoint = self._endpoint()
                        call = endpoint.lease.LeaseKeepAlive(metadata=REQUIRE_LEADER)
                    await call.write(rpc.LeaseKeepAliveRequest(ID=lease.id))
                    resp = await asyncio.wait_for(call.read(), timeout=max(interval, 1.0))
                    if resp is grpc.aio.EOF:
                        raise Reconnect("stream ended")
                    if resp.TTL <= 0:
                        log.warning("etcd lease %x expired", lease.id)
                        self._leases.pop(lease.id, None)
                        lease._mark_expired()
                        return
                    backoff = 0.05
                    await asyncio.sleep(interval)
                except Exception as exc:  # never let the task die while the lease lives
                    if self._closed:
                        return
                    if isinstance(exc, StoreError):
                        return  # raised by _endpoint(): the store is closed
                    level = logging.INFO if isinstance(exc, STREAM_BROKEN) else logging.ERROR
                    log.log(level, "etcd lease %x keepalive: %r; retrying in %.2f s", lease.id, exc, backoff)
                    if call is not None:
                        call.cancel()
                        call = None
                    if endpoint is not None:
                        self._failover(endpoint)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._backoff_max, interval)
        finally:
            if call is not None:
                call.cancel()

    async def _revoke(self, lease_id: int) -> None:
        self._leases.pop(lease_id, None)
        request = rpc.LeaseRevokeRequest(ID=lease_id)
        # idempotent, so retried like a read: a retry after an unclear failure at worst finds the lease gone
        with contextlib.suppress(LeaseNotFound):
            await self._unary(
                "lease revoke", lambda e, t: e.lease.LeaseRevoke(request, timeout=t, metadata=REQUIRE_LEADER),
                mutating=False, leases=[lease_id],
            )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for lease in list(self._leases.values()):
            lease._stop()
        self._leases.clear()
        for call in list(self._streams):
            call.cancel()
        for endpoint in self._endpoints:
            await endpoint.close()
