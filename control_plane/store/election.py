"""Leader election over the store contract: one lease-held key per election, the same code on SQLite and etcd.

A candidate grants a lease and creates ``/lmaas/v1/leader/<name>`` with it in
a transaction that requires the key to be absent; whoever succeeds leads for as
long as the lease lives. The others watch the key and campaign again when it
is deleted (the leader resigned, or its lease expired because it died or lost
the store). A leader that learns its lease is gone stops leading at once
(:meth:`Election.lost` returns); since the key is deleted with the lease, a
new leader can only be elected after that, so two replicas never lead under
the same key at one store revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from lmaas.control_plane.store.base import Compare, EventType, Lease, Put, Store, StoreError

__all__ = ["LEADER_PREFIX", "Election"]

log = logging.getLogger(__name__)

LEADER_PREFIX = "/lmaas/v1/leader/"


class Election:
    def __init__(self, store: Store, name: str, candidate: str, *, ttl: int = 5) -> None:
        self._store = store
        self.key = LEADER_PREFIX + name
        self.candidate = candidate
        self._ttl = ttl
        self._lease: Lease | None = None

    @property
    def leading(self) -> bool:
        return self._lease is not None and not self._lease.expired

    async def leader(self) -> str | None:
        """The current leader's candidate name, if any."""
        kv = await self._store.get(self.key)
        return kv.value.decode() if kv is not None else None

    async def campaign(self) -> None:
        """Return once this candidate leads (retrying through store errors)."""
        delay = 0.1
        while True:
            try:
                lease = await self._store.lease(self._ttl)
                try:
                    result = await self._store.txn(
                        [Compare.absent(self.key)], [Put(self.key, self.candidate.encode(), lease.id)]
                    )
                except BaseException:
                    with contextlib.suppress(Exception):
                        await lease.revoke()
                    raise
                if result.succeeded:
                    self._lease = lease
                    log.info("%s leads %s", self.candidate, self.key)
                    return
                await lease.revoke()
                await self._wait_vacant(result.revision)
                delay = 0.1
            except StoreError as exc:
                log.warning("election %s: %s; retrying in %.1fs", self.key, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _wait_vacant(self, revision: int) -> None:
        kv = await self._store.get(self.key)
        if kv is None:
            return
        events = self._store.watch(self.key, revision + 1)
        try:
            async for event in events:
                if event.kv.key == self.key and event.type is EventType.DELETE:
                    return
        finally:  # end the store's watch now, not when the generator is collected
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    async def lost(self) -> None:
        """Return when this candidate stops leading (its lease expired or it resigned)."""
        lease = self._lease
        if lease is None:
            return
        await lease.wait_expired()

    async def resign(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(Exception):
                await lease.revoke()
