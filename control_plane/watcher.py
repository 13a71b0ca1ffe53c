"""One store watch per replica, fanned out to everything that waits for changes.

Each control-plane replica watches ``/lmaas/v1/`` once. Subscribers name key
prefixes and are woken when a key under one of them changes; they re-read what
they need from the store (events are hints, the store is the truth), so missed
or coalesced events cannot leave them stale. When the watch breaks (store down,
revision compacted) every subscriber is woken once the watch is re-established,
so each re-reads the state it may have missed.

Listeners (:meth:`StoreWatcher.listen`) get the events themselves, for
in-memory mirrors kept incrementally (rollout progress): on every (re)start a
listener re-lists what it mirrors and returns the lowest revision it read; the
watch resumes after the lowest of those, and each listener ignores the events
its own listing already contains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Protocol

from lmaas.control_plane import keys
from lmaas.control_plane.store.base import Event, Store, StoreError

__all__ = ["Listener", "StoreWatcher", "Subscription"]

log = logging.getLogger(__name__)


class Subscription:
    """Wakes :meth:`wait` after a change under one of ``prefixes`` (changes coalesce)."""

    def __init__(self, watcher: StoreWatcher, prefixes: tuple[str, ...]) -> None:
        self._watcher = watcher
        self.prefixes = prefixes
        self._event = asyncio.Event()

    def _notify(self) -> None:
        self._event.set()

    async def wait(self, timeout: float | None = None) -> bool:
        """True after a change since the previous wait; False on timeout."""
        try:
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for can turn a cancellation into a TimeoutError
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        self._event.clear()
        return True

    def close(self) -> None:
        self._watcher._subs.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Listener(Protocol):
    async def resync(self) -> int:
        """Re-list the mirrored state; the lowest store revision read (events after it are delivered)."""

    def apply(self, event: Event) -> None:
        """One change (may repeat a change the last resync already read: compare revisions)."""


class StoreWatcher:
    def __init__(self, store: Store, prefix: str = keys.PREFIX) -> None:
        self._store = store
        self._prefix = prefix
        self._subs: set[Subscription] = set()
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def subscribe(self, *prefixes: str) -> Subscription:
        sub = Subscription(self, prefixes)
        self._subs.add(sub)
        return sub

    def listen(self, listener: Listener) -> None:
        """Deliver every event to ``listener`` (register before :meth:`start`)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Start watching from the current revision; returns once the watch runs."""
        self._task = asyncio.create_task(self._run(), name="lmaas-store-watcher")
        await self._ready.wait()

    async def stop(self) -> None:
        task, self._task = self._task, None
        while task is not None and not task.done():
            # cancel again if a cancellation gets swallowed (asyncio.wait_for in Python 3.11 can do that)
            task.cancel()
            await asyncio.wait([task], timeout=0.5)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _dispatch(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener.apply(event)
            except Exception:
                log.exception("store watch listener failed on %s", event.kv.key)
        key = event.kv.key
        for sub in list(self._subs):
            if key.startswith(sub.prefixes):
                sub._notify()

    def _wake_all(self) -> None:
        for sub in list(self._subs):
            sub._notify()

    async def _run(self) -> None:
        delay = 0.1
        next_revision = 0
        while True:
            try:
                if next_revision == 0:
                    revision = await self._store.revision()
                    for listener in self._listeners:
                        revision = min(revision, await listener.resync())
                    next_revision = revision + 1
                    self._wake_all()  # a fresh start: whatever happened before is unknown
                stream = self._store.watch(self._prefix, next_revision)
                self._ready.set()
                async for event in stream:
                    next_revision = event.kv.mod_revision + 1
                    delay = 0.1
                    self._dispatch(event)
                return
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                # WatchCompacted or the store is unreachable: start over from "now" and wake everyone.
                log.warning("store watch failed (%s); re-watching in %.1fs", exc, delay)
                next_revision = 0
            except Exception:
                log.exception("store watch crashed; re-watching in %.1fs", delay)
                next_revision = 0
            self._ready.set()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)
