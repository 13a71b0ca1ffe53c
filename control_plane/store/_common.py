"""Helpers both backends share: key encoding, prefix ranges, request validation."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .base import MAX_TXN_OPS, Compare, Delete, Lease, Put, Txn, batch_width

__all__ = [
    "COMPARE_OPS",
    "COMPARE_TARGETS",
    "KeptAliveLease",
    "check_key",
    "decode_key",
    "encode_key",
    "prefix_end",
    "validate_batch",
    "validate_txn",
]

COMPARE_OPS = frozenset({"==", "!=", "<", ">"})
COMPARE_TARGETS = frozenset({"mod_revision", "create_revision", "version", "value"})


def encode_key(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def decode_key(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def check_key(key: str) -> None:
    """etcd refuses an empty key (except as the prefix of everything)."""
    if not key:
        raise ValueError("key must not be empty")


def prefix_end(prefix: bytes) -> bytes | None:
    """The first key after every key that starts with ``prefix``; None when there is none (all keys up to the end)."""
    raw = bytearray(prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return None


def _validate_compare(c: Compare) -> None:
    if c.op not in COMPARE_OPS:
        raise ValueError(f"compare op {c.op!r} is not one of {sorted(COMPARE_OPS)}")
    if c.target not in COMPARE_TARGETS:
        raise ValueError(f"compare target {c.target!r} is not one of {sorted(COMPARE_TARGETS)}")
    if c.target == "value":
        if not isinstance(c.value, bytes):
            raise ValueError(f"compare on value of {c.key!r} needs bytes, got {type(c.value).__name__}")
    elif not isinstance(c.value, int) or isinstance(c.value, bool):
        raise ValueError(f"compare on {c.target} of {c.key!r} needs an int, got {type(c.value).__name__}")


def _validate_branch(ops: Sequence[Put | Delete]) -> None:
    """etcd's rule: no key is put twice, and no put falls inside a delete, in one branch."""
    seen: set[bytes] = set()
    ranges: list[tuple[bytes, bytes | None]] = []
    for op in ops:
        key = encode_key(op.key)
        if isinstance(op, Put) or (isinstance(op, Delete) and not op.prefix):
            check_key(op.key)
        if isinstance(op, Put):
            if key in seen:
                raise ValueError(f"transaction branch writes key {op.key!r} twice")
            seen.add(key)
        elif isinstance(op, Delete):
            ranges.append((key, prefix_end(key) if op.prefix else key + b"\0"))
        else:
            raise ValueError(f"transaction op must be Put or Delete, got {type(op).__name__}")
    for key in seen:
        for start, end in ranges:
            if key >= start and (end is None or key < end):
                raise ValueError(f"transaction branch puts and deletes key {decode_key(key)!r}")


def validate_txn(compares: Sequence[Compare], success: Sequence[Put | Delete], failure: Sequence[Put | Delete]) -> None:
    for c in compares:
        check_key(c.key)
        _validate_compare(c)
    _validate_branch(success)
    _validate_branch(failure)


def validate_batch(batch: Sequence[Txn]) -> None:
    """Each transaction valid, within etcd's op limit, and no key written by two (etcd refuses that too)."""
    if any(not isinstance(t, Txn) for t in batch):
        raise ValueError("a transaction batch holds Txn objects")
    if batch and len(batch) + max(batch_width(t) for t in batch) > MAX_TXN_OPS:
        raise ValueError(f"a transaction batch's transactions plus its widest one's ops exceed {MAX_TXN_OPS}")
    owner: dict[bytes, int] = {}
    ranges: list[tuple[bytes, bytes | None, int]] = []
    for i, t in enumerate(batch):
        validate_txn(t.compares, t.success, t.failure)
        for op in (*t.success, *t.failure):
            key = encode_key(op.key)
            if (isinstance(op, Put) or not op.prefix) and owner.setdefault(key, i) != i:
                raise ValueError(f"key {op.key!r} is written by two transactions of one batch")
            if isinstance(op, Delete):
                ranges.append((key, prefix_end(key) if op.prefix else key + b"\0", i))
    for start, end, i in ranges:
        for key, j in owner.items():
            if j != i and key >= start and (end is None or key < end):
                raise ValueError(f"key {decode_key(key)!r} is written by two transactions of one batch")


class KeptAliveLease(Lease):
    """A lease whose store keeps it alive from ``_task`` until :meth:`revoke` (both backends use it)."""

    def __init__(self, store: Any, lease_id: int, ttl: int) -> None:
        super().__init__(lease_id, ttl)
        self._store = store  # has ``async _revoke(lease_id)``
        self._task: asyncio.Task[None] | None = None

    async def revoke(self) -> None:
        self._stop()
        if not self.expired:
            await self._store._revoke(self.id)
        self._mark_expired()

    def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
