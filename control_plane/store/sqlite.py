"""The embedded metadata store: one SQLite file with etcd's semantics, for a single machine.

Like k3s's kine, it keeps etcd's model in tables (see :mod:`._sqlite_db`): a global revision,
per-key create/mod revision and version, a change log that watches read by revision, and leases
with a wall-clock expiry. Several :class:`SqliteStore` objects, in one process or several, may
share a file: writers are serialized by SQLite (``BEGIN IMMEDIATE``), watchers follow the log.

All SQL runs on one dedicated thread per store. A background task of each store polls the head
revision (every ``poll_interval``, only while watches are open) to wake watchers on writes made by
other processes (writes made through this store wake them at once), expires leases (every
``lease_interval``; any process may do it, serialized by the write lock), and compacts the log
to the last ``keep_revisions`` revisions every ``compact_interval`` seconds.

Errors: :class:`sqlite3.Error` becomes :class:`StoreError` at :meth:`SqliteStore._run`, the one
place where SQL is called from asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ._common import KeptAliveLease, check_key, encode_key, validate_batch, validate_txn
from ._sqlite_db import Db
from .base import Compare, Delete, Event, KeyValue, Lease, Put, RangeResult, Store, StoreError, Txn, TxnResult

__all__ = ["SqliteLease", "SqliteStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class SqliteLease(KeptAliveLease):
    """A SqliteStore lease, refreshed by the store's keepalive task."""


class SqliteStore(Store):
    """The metadata store on a SQLite file (created if absent)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = 0.05,
        lease_interval: float = 0.1,
        compact_interval: float = 300.0,
        keep_revisions: int = 10_000,
        busy_timeout: float = 10.0,
    ) -> None:
        self.path = os.fspath(path)
        self._poll_interval = poll_interval
        self._lease_interval = lease_interval
        self._compact_interval = compact_interval
        self._keep_revisions = keep_revisions
        self._db = Db(self.path, busy_timeout)
        self._executor: ThreadPoolExecutor | None = None
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._ticker: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._seen_head = 0
        self._watchers = 0
        self._leases: dict[int, SqliteLease] = {}

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    # -- plumbing ----------------------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the store's SQL thread; the one boundary where sqlite3 errors become StoreError."""
        if not self._started:
            await self._start()
        return await self._call(fn, *args)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed or self._executor is None:
            raise StoreError(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite {self.path}: {exc}") from exc
        except RuntimeError as exc:  # the executor was shut down by close()
            if self._closed:
                raise StoreError(f"{self!r} is closed") from exc
            raise

    async def _start(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise StoreError(f"{self!r} is closed")
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmaas-sqlite")
            try:
                await self._call(self._db.open)
                self._seen_head = await self._call(self._db.head)
            except BaseException:
                self._executor.shutdown(wait=False)
                self._executor = None
                raise
            self._ticker = asyncio.create_task(self._tick(), name=f"lmaas-sqlite-ticker {self.path}")
            self._started = True

    def _wake(self, head: int) -> None:
        """Tell watchers that the head moved (``head`` <= what they would read is harmless)."""
        if head > self._seen_head:
            self._seen_head = head
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _tick(self) -> None:
        now = time.monotonic()
        next_lease = now
        next_compact = now + self._compact_interval
        failing = False
        while not self._closed:
            try:
                now = time.monotonic()
                if self._watchers:
                    head = await self._call(self._db.head)
                    if head != self._seen_head:
                        self._wake(head)
                if now >= next_lease:
                    next_lease = now + self._lease_interval
                    expired = await self._call(self._db.expire, time.time())
                    for lease_id in expired:
                        lease = self._leases.pop(lease_id, None)
                        if lease is not None:
                            lease._stop()
                            lease._mark_expired()
                    if expired:
                        self._wake(await self._call(self._db.head))
                if now >= next_compact:
                    next_compact = now + self._compact_interval
                    await self._call(self._db.compact_keeping, self._keep_revisions)
                failing = False
            except StoreError as exc:
                if self._closed:
                    return
                if not failing:
                    log.warning("sqlite store background task: %s", exc)
                failing = True
            await asyncio.sleep(self._poll_interval)

    # -- Store -------------------------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        check_key(key)
        return await self._run(self._db.get, key)

    async def range(self, prefix: str) -> RangeResult:
        kvs, revision = await self._run(self._db.range, prefix)
        return RangeResult(kvs, revision)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        return (await self.txn((), [Put(key, value, lease)])).revision

    async def delete(self, key: str, prefix: bool = False) -> int:
        return (await self.txn((), [Delete(key, prefix)])).revision

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Put | Delete], failure: Sequence[Put | Delete] = ()
    ) -> TxnResult:
        validate_txn(compares, success, failure)
        succeeded, revision = await self._run(self._db.txn, list(compares), list(success), list(failure))
        if revision > self._seen_head:
            self._wake(revision)
        return TxnResult(succeeded, revision)

    async def txn_batch(self, batch: Sequence[Txn]) -> list[TxnResult]:
        validate_batch(batch)
        if not batch:
            return []
        oks, revision = await self._run(self._db.txn_batch, list(batch))
        if revision > self._seen_head:
            self._wake(revision)
        return [TxnResult(ok, revision) for ok in oks]

    async def watch(self, prefix: str, start_revision: int = 0) -> AsyncIterator[Event]:
        raw_prefix = encode_key(prefix)
        next_revision = start_revision if start_revision > 0 else await self._run(self._db.head) + 1
        self._watchers += 1
        try:
            while not self._closed:
                changed = self._changed  # taken before reading, so a write during the read is not missed
                try:
                    events, next_revision, at_head = await self._run(
                        self._db.read_log, raw_prefix, next_revision, 1000
                    )
                except StoreError:
                    if self._closed:
                        return
                    raise
                for event in events:
                    yield event
                if at_head and not self._closed:
                    # woken by a write here or by the ticker's head poll; the timeout is only a safety net
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), timeout=1.0)
        finally:
            self._watchers -= 1

    async def lease(self, ttl: int, *, keepalive: bool = True) -> Lease:
        """See :meth:`Store.lease`; ``keepalive=False`` grants a lease nobody refreshes."""
        if ttl < 1:
            raise ValueError(f"lease ttl must be >= 1 second, got {ttl}")
        lease_id = await self._run(self._db.grant, ttl, time.time())
        lease = SqliteLease(self, lease_id, ttl)
        self._leases[lease_id] = lease
        if keepalive:
            lease._task = asyncio.create_task(self._keepalive(lease), name=f"lmaas-sqlite-lease {lease_id:x}")
        return lease

    async def _keepalive(self, lease: SqliteLease) -> None:
        interval = max(lease.ttl / 3.0, 0.05)
        while not self._closed:
            await asyncio.sleep(interval)
            try:
                alive = await self._run(self._db.refresh, lease.id, time.time())
            except Exception as exc:  # never let the task die while the lease lives
                if self._closed:
                    return
                log.warning("lease %x keepalive failed: %r", lease.id, exc)
                continue
            if not alive:
                self._leases.pop(lease.id, None)
                lease._mark_expired()
                return

    async def _revoke(self, lease_id: int) -> None:
        self._leases.pop(lease_id, None)
        revision = await self._run(self._db.revoke, lease_id)
        self._wake(revision)

    async def revision(self) -> int:
        return await self._run(self._db.head)

    async def compact(self, revision: int) -> None:
        await self._run(self._db.compact, revision)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for lease in list(self._leases.values()):
            lease._stop()
        self._leases.clear()
        self._wake(self._seen_head)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        executor, self._executor = self._executor, None
        if executor is not None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(sqlite3.Error):
                await loop.run_in_executor(executor, self._db.close)
            executor.shutdown(wait=False)
