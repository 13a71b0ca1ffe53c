"""The audit trail: who changed what, when, and how it ended.

Each entry is written twice: as a log line on the ``lmaas.audit`` logger
(INFO for successes, WARNING for failures and denials; with ``--log-format
json`` its fields are keys of the JSON object) and as an :class:`AuditEntry` in
the metadata store under ``/lmaas/v1/audit/<time_ms>-<replica>-<n>`` (time
zero-padded, so keys sort by time). The store keeps the newest ``limit``
entries: every ``trim_every`` writes a replica deletes the oldest surplus in
the background. Writing an entry never fails the call it describes; a store
error is logged instead.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Callable

from lmaas.control_plane import keys
from lmaas.control_plane.registry import now_ms
from lmaas.control_plane.store.base import Delete, Store
from lmaas.control_plane.tokens import role_name
from lmaas.protos.errors import InvalidArgument
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

__all__ = ["AuditLog"]

log = logging.getLogger("lmaas.audit")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_DELETE_BATCH = 64


class AuditLog:
    def __init__(
        self, store: Store, replica_id: str, *, limit: int = 10_000, trim_every: int = 100,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._store = store
        self._replica = _UNSAFE.sub("_", replica_id)[:64] or "replica"
        self._limit = limit
        self._trim_every = max(1, trim_every)
        self._clock = clock
        self._seq = itertools.count()
        self._trimming: asyncio.Task[None] | None = None

    async def record(self, entry: pb.AuditEntry) -> None:
        if not entry.time_ms:
            entry.time_ms = self._clock()
        entry.replica = entry.replica or self._replica
        n = next(self._seq)
        fields = {
            "principal": entry.principal, "role": role_name(entry.role), "method": entry.method,
            "code": entry.code, "request": entry.request, "peer": entry.peer,
        }
        level = logging.INFO if entry.code == "OK" else logging.WARNING
        log.log(
            level, "audit %s by %s (%s): %s%s | %s", entry.method.rsplit("/", 1)[-1], entry.principal,
            role_name(entry.role), entry.code, f" {entry.message}" if entry.message else "", entry.request,
            extra={"fields": fields},
        )
        key = f"{keys.AUDIT}{entry.time_ms:015d}-{self._replica}-{n:09d}"
        try:
            await self._store.put(key, entry.SerializeToString())
        except Exception as exc:  # the audit never fails the call it describes
            log.error("could not write audit entry %s: %s", key, exc)
            return
        if n % self._trim_every == self._trim_every - 1 and (self._trimming is None or self._trimming.done()):
            self._trimming = asyncio.create_task(self._trim_in_background(), name="lmaas-audit-trim")

    async def entries(self) -> list[pb.AuditEntry]:
        """Every stored entry, oldest first."""
        result = await self._store.range(keys.AUDIT)
        return [pb.AuditEntry.FromString(kv.value) for kv in result.kvs]

    async def page(self, *, limit: int = 100, before: str = "") -> tuple[list[tuple[str, pb.AuditEntry]], str, int]:
        """Up to ``limit`` entries, newest first, older than the entry keyed ``before`` ("" = from the newest).

        Returns ``(key, entry)`` pairs, the cursor of the next (older) page ("" = no more) and the store
        revision. Keys sort by time, so the cursor stays valid while entries are added or trimmed.
        """
        if limit <= 0:
            raise InvalidArgument(f"invalid page size {limit}: expected at least 1")
        if before and not before.startswith(keys.AUDIT):
            raise InvalidArgument(f"invalid audit cursor {before!r}")
        result = await self._store.range(keys.AUDIT)
        kvs = [kv for kv in result.kvs if not before or kv.key < before]
        chosen = kvs[::-1][:limit]
        out = [(kv.key, pb.AuditEntry.FromString(kv.value)) for kv in chosen]
        more = len(kvs) > limit
        return out, (chosen[-1].key if more and chosen else ""), result.revision

    async def _trim_in_background(self) -> None:
        await self.trim()

    async def trim(self) -> int:
        """Delete the oldest entries beyond the limit; returns how many went."""
        try:
            result = await self._store.range(keys.AUDIT)
            surplus = [kv.key for kv in result.kvs[: max(0, len(result.kvs) - self._limit)]]
            for i in range(0, len(surplus), _DELETE_BATCH):
                await self._store.txn([], [Delete(k) for k in surplus[i : i + _DELETE_BATCH]])
            return len(surplus)
        except Exception as exc:
            log.error("could not trim the audit trail: %s", exc)
            return 0

    async def close(self) -> None:
        task, self._trimming = self._trimming, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
