"""The metadata-store contract: the only source of truth for the control plane.

Two implementations keep the same semantics (one shared contract test suite,
``tests/control_plane/test_store_contract.py``): etcd for production
(:mod:`.etcd`) and an embedded SQLite file for a single machine (:mod:`.sqlite`).

Semantics, as etcd's v3 API defines them:

* one global ``revision`` that every successful write increases by one;
* each key carries ``create_revision``, ``mod_revision`` and ``version``;
* a write that changes nothing (deleting an absent key, a transaction whose
  branch has no effect) leaves the revision as it is; all changes of one
  transaction share one revision;
* :meth:`Store.txn` is an atomic compare-and-swap: all ``compares`` hold →
  ``success`` ops run, else ``failure`` ops run; it returns the revision after
  the transaction. One branch may not write a key twice (``ValueError``);
* :meth:`Store.txn_batch` applies several independent compare-and-swaps
  (:class:`Txn`) as one atomic write: every compare is evaluated on the state
  before the batch, each transaction runs its own branch, and all changes share
  one revision (etcd: one transaction of nested transactions). No key may be
  written by two transactions of one batch, and the number of transactions
  plus the widest one's ops (its compares, or one branch) is at most
  :data:`MAX_TXN_OPS` (etcd's default ``--max-txn-ops``, which it counts so);
* :meth:`Store.watch` yields every change under a prefix from a revision on, in
  order, and survives a restart of the backing server (it resumes from the last
  revision it delivered);
* leases expire keys written with them unless kept alive; :meth:`Store.lease`
  returns a handle that refreshes itself until revoked. Expiry and revocation
  delete the keys, each lease's keys in one revision, with DELETE events.

Errors (everything a backend raises from its client library or database is
translated at one boundary, ``raise ... from exc``)::

    StoreError            backend unreachable, timed out, or failed → UNAVAILABLE
    ├── WatchCompacted    the watch's start revision is compacted away
    └── LeaseNotFound     a put names a lease that expired or was revoked
    ValueError            a malformed request (bad Compare, empty key, a key twice in a branch)

Keys are ``str`` (stored as UTF-8 bytes, ordered bytewise, as etcd orders them);
values are ``bytes``.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Self

__all__ = [
    "MAX_TXN_OPS",
    "Compare",
    "Delete",
    "Event",
    "EventType",
    "KeyValue",
    "Lease",
    "LeaseNotFound",
    "Put",
    "RangeResult",
    "Store",
    "StoreError",
    "Txn",
    "TxnResult",
    "WatchCompacted",
    "batch_width",
]


class StoreError(Exception):
    """The backing store failed (unreachable, timed out); callers map it to UNAVAILABLE."""


class WatchCompacted(StoreError):
    """The requested watch revision was compacted away; re-list and watch from the new revision."""

    def __init__(self, start_revision: int, compact_revision: int) -> None:
        super().__init__(f"watch from revision {start_revision}: history before {compact_revision} is compacted")
        self.start_revision = start_revision
        self.compact_revision = compact_revision


class LeaseNotFound(StoreError):
    """A write named a lease that does not exist (expired or revoked): grant a new one and write again."""

    def __init__(self, lease: int) -> None:
        super().__init__(f"lease {lease:x} not found (expired or revoked)")
        self.lease = lease


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: list[KeyValue]
    revision: int


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    kv: KeyValue  # for DELETE: value is b"" and mod_revision is the deletion's revision


@dataclass(frozen=True, slots=True)
class Compare:
    """``target`` of ``key`` compared with ``value`` by ``op``.

    target: "mod_revision" | "create_revision" | "version" | "value";
    op: "==" | "!=" | "<" | ">". A missing key has revisions and version 0.
    """

    key: str
    target: str
    op: str
    value: int | bytes

    @staticmethod
    def absent(key: str) -> Compare:
        return Compare(key, "version", "==", 0)

    @staticmethod
    def unchanged(key: str, mod_revision: int) -> Compare:
        return Compare(key, "mod_revision", "==", mod_revision)


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int


MAX_TXN_OPS = 128  # etcd's default --max-txn-ops; a batch's transactions count against it too


def batch_width(t: Txn) -> int:
    """What one transaction of a batch adds to the batch's width: see :meth:`Store.txn_batch`."""
    return max(len(t.compares), len(t.success), len(t.failure))


@dataclass(frozen=True, slots=True)
class Txn:
    """One compare-and-swap of a :meth:`Store.txn_batch`."""

    compares: Sequence[Compare]
    success: Sequence[Put | Delete]
    failure: Sequence[Put | Delete] = ()


class Lease(abc.ABC):
    """A granted lease, kept alive by the store's own task until :meth:`revoke`.

    ``ttl`` is the TTL the server granted, in seconds (etcd may raise a short
    request to its minimum, 1.5 x its election timeout). When the store learns
    that the lease is gone (it expired while the store could not reach the
    server, or it was revoked), :attr:`expired` turns true and
    :meth:`wait_expired` returns: the keys written with it are deleted, so the
    owner should grant a new lease and write them again.
    """

    id: int
    ttl: int

    _expired_event: asyncio.Event | None = None

    def __init__(self, lease_id: int, ttl: int) -> None:
        self.id = lease_id
        self.ttl = ttl

    def _expired(self) -> asyncio.Event:
        if self._expired_event is None:
            self._expired_event = asyncio.Event()
        return self._expired_event

    @property
    def expired(self) -> bool:
        return self._expired().is_set()

    async def wait_expired(self) -> None:
        await self._expired().wait()

    def _mark_expired(self) -> None:
        self._expired().set()

    @abc.abstractmethod
    async def revoke(self) -> None:
        """Stop refreshing and revoke: the lease's keys are deleted. Idempotent."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id:x} ttl={self.ttl} expired={self.expired}>"


class Store(abc.ABC):
    """One connection to the metadata store; usable as ``async with``. Bound to the event loop that first uses it."""

    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None: ...

    @abc.abstractmethod
    async def range(self, prefix: str) -> RangeResult:
        """Every key starting with ``prefix``, sorted by key, and the store revision."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Unconditional write; returns the new revision."""

    @abc.abstractmethod
    async def delete(self, key: str, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it when ``prefix``); returns the revision after it."""

    @abc.abstractmethod
    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Put | Delete], failure: Sequence[Put | Delete] = ()
    ) -> TxnResult: ...

    @abc.abstractmethod
    async def txn_batch(self, batch: Sequence[Txn]) -> list[TxnResult]:
        """Several independent transactions in one atomic write (one store request, one revision): one result
        per transaction, in order, each with the revision after the batch. ``ValueError`` for an invalid
        transaction, a key written by two of them, or ``len(batch) + max(batch_width(t))`` over
        :data:`MAX_TXN_OPS`."""

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        """Changes under ``prefix`` with mod_revision >= ``start_revision``, forever, in order.

        ``start_revision`` 0 means "changes after now". The usual pattern is
        ``r = await store.range(p)`` then ``store.watch(p, r.revision + 1)``.
        While the server is unreachable the iterator waits and reconnects (with
        backoff, to any endpoint), resuming after the last revision it yielded,
        so no event is lost or repeated. Raises :class:`WatchCompacted` when the
        history it needs is gone; ends (``StopAsyncIteration``) after
        :meth:`close`. Close it early with ``contextlib.aclosing`` or ``aclose()``.
        """

    @abc.abstractmethod
    async def lease(self, ttl: int) -> Lease:
        """Grant a lease of ``ttl`` seconds (at least 1), refreshed every ttl/3 by a task of the store.

        Both backends also take ``keepalive=False``: the lease then expires ``ttl`` after the grant
        (tests use it to play a crashed owner)."""

    @abc.abstractmethod
    async def revision(self) -> int:
        """The current store revision."""

    async def compact(self, revision: int) -> None:
        """Forget the history before ``revision``: watches from an earlier revision raise :class:`WatchCompacted`.
        Idempotent; the current state of every key stays. ``ValueError`` for a revision past the current one."""
        raise NotImplementedError(f"{type(self).__name__} does not compact")

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop keepalives (leases then expire on their own), end open watches, release connections. Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
