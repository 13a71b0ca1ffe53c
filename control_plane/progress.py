"""Rollout progress kept incrementally, from the replica's store watch.

Every replica mirrors, in memory, the three key spaces a rollout's progress is
made of: connected workers (``/workers/``: id → pool), what each acknowledged
(``/observed/``: per model, worker → generation, ok, error) and the rollouts
themselves (``/rollouts/``). Events update the mirror as they arrive; for each
progressing rollout it keeps the set of eligible workers that acknowledged its
generation and those that rejected it, so an Ack costs O(1) here and no store
read at all. When a rollout may finish (every eligible worker acknowledged, or
one rejected) the ``on_ready`` callback runs with the model name; the caller
(:class:`~lmaas.control_plane.deployments.Deployments`) then finishes it with
one compare-and-swap. After a restart, or when the watch breaks, the mirror is
rebuilt by listing the (leased) keys again: nothing here is durable.

Presence grace: a worker whose key disappears (its stream ended) still counts
as pending for ``presence_grace`` seconds, so a worker between two streams
does not make a rollout succeed with "no worker connected".

A replica killed mid-rollout: its workers' keys stay (pending) until its
lease expires, so the rollout waits for them; each reconnects (with jittered
backoff) to another replica, whose register overwrites its key and whose
first Ack rewrites its observed keys under the live lease. Only a worker that
has not come back within the lease TTL plus the grace is taken as gone.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lmaas.control_plane import keys
from lmaas.control_plane.store.base import Event, EventType, Store
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

__all__ = ["RolloutProgress"]

log = logging.getLogger(__name__)

_Obs = tuple[int, bool, str]  # generation, ok, error
_OBS: dict[_Obs, _Obs] = {}  # one tuple per distinct state: a thousand workers that ACKed share it


def _obs(obs: pb.ObservedModel) -> _Obs:
    value = (obs.generation, obs.ok, obs.error)
    found = _OBS.get(value)
    if found is None:
        if len(_OBS) >= 4096:
            _OBS.clear()
        _OBS[value] = found = value
    return found


@dataclass
class _Tracked:
    generation: int
    progressing: bool
    pools: frozenset[str]
    acked: set[str] = field(default_factory=set)
    nacked: dict[str, str] = field(default_factory=dict)


class RolloutProgress:
    def __init__(
        self, store: Store, *, presence_grace: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._grace = presence_grace
        self._clock = clock
        self.on_ready: Callable[[str], None] = lambda model: None
        self.synced = False
        self.revision = 0  # the newest store revision applied
        self._since: dict[str, int] = {}  # prefix → revision its last listing reflects
        self._workers: dict[str, str] = {}  # worker → pool
        self._created: dict[str, tuple[int, int]] = {}  # worker → (create_revision, lease): one per stream
        self._pools: dict[str, set[str]] = {}  # pool → workers
        self._observed: dict[str, dict[str, _Obs]] = {}  # model → worker → observed
        self._rollouts: dict[str, _Tracked] = {}
        self._departed: dict[str, tuple[str, float]] = {}  # worker → (pool, when its key went)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (store revision, woken once applied)

    # -- watcher listener ------------------------------------------------------------------------------------

    async def resync(self) -> int:
        workers = await self._store.range(keys.WORKERS)
        observed = await self._store.range(keys.OBSERVED)
        rollouts = await self._store.range(keys.ROLLOUTS)
        self._workers, self._pools, self._observed, self._rollouts, self._created = {}, {}, {}, {}, {}
        for kv in workers.kvs:
            self._created[kv.key[len(keys.WORKERS) :]] = (kv.create_revision, kv.lease)
            self._add_worker(kv.key[len(keys.WORKERS) :], pb.WorkerInfo.FromString(kv.value).pool)
        for kv in observed.kvs:
            obs = pb.ObservedModel.FromString(kv.value)
            self._observed.setdefault(sys.intern(obs.model), {})[sys.intern(obs.worker_id)] = _obs(obs)
        for kv in rollouts.kvs:
            self._track(pb.Rollout.FromString(kv.value))
        self._since = {keys.WORKERS: workers.revision, keys.OBSERVED: observed.revision,
                       keys.ROLLOUTS: rollouts.revision}
        self.revision = max(self._since.values())
        self.synced = True
        self._wake()
        for model, tracked in self._rollouts.items():
            if tracked.progressing:
                self.on_ready(model)  # it may have become final while nobody watched
        return min(self._since.values())

    def apply(self, event: Event) -> None:
        key = event.kv.key
        for prefix, handle in ((keys.OBSERVED, self._on_observed), (keys.WORKERS, self._on_worker),
                               (keys.ROLLOUTS, self._on_rollout)):
            if key.startswith(prefix):
                if event.kv.mod_revision > self._since.get(prefix, 0):
                    self.revision = max(self.revision, event.kv.mod_revision)
                    handle(key[len(prefix) :], event)
                    if self._waiters:
                        self._wake()
                return

    async def caught_up(self, revision: int, timeout: float) -> bool:
        """Wait until the mirror has applied the store up to ``revision`` (one watch, so every earlier change
        too); False after ``timeout`` seconds."""
        if self.revision >= revision:
            return True
        waiter = asyncio.get_running_loop().create_future()
        entry = (revision, waiter)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await waiter
            return True
        except TimeoutError:
            return False
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _wake(self) -> None:
        for revision, waiter in self._waiters:
            if revision <= self.revision and not waiter.done():
                waiter.set_result(None)

    def _on_worker(self, worker: str, event: Event) -> None:
        if event.type is EventType.DELETE:
            pool = self._workers.pop(worker, None)
            self._created.pop(worker, None)
            if pool is None:
                return
            self._pools.get(pool, set()).discard(worker)
            if self._grace > 0:
                self._departed[worker] = (pool, self._clock())
            for model, tracked in self._rollouts.items():
                tracked.acked.discard(worker)
                tracked.nacked.pop(worker, None)
                self._check(model, tracked)
            return
        identity = (event.kv.create_revision, event.kv.lease)
        if worker in self._workers and self._created.get(worker) == identity:
            return  # the common case: the same session rewrote its key (desired/acked revision); its pool is fixed
        self._created[worker] = identity
        pool = pb.WorkerInfo.FromString(event.kv.value).pool
        if self._workers.get(worker) == pool:
            return
        self._add_worker(worker, pool)
        for model, tracked in self._rollouts.items():
            self._classify(model, tracked, worker)

    def _add_worker(self, worker: str, pool: str) -> None:
        old = self._workers.get(worker)
        if old is not None:
            self._pools.get(old, set()).discard(worker)
        self._workers[worker] = pool
        self._pools.setdefault(pool, set()).add(worker)
        self._departed.pop(worker, None)

    def _on_observed(self, rest: str, event: Event) -> None:
        worker, _, model = rest.partition("/")
        if event.type is EventType.DELETE:
            self._observed.get(model, {}).pop(worker, None)
        else:
            self._observed.setdefault(sys.intern(model), {})[sys.intern(worker)] = _obs(
                pb.ObservedModel.FromString(event.kv.value)
            )
        tracked = self._rollouts.get(model)
        if tracked is not None and worker in self._workers:
            self._classify(model, tracked, worker)

    def _on_rollout(self, model: str, event: Event) -> None:
        if event.type is EventType.DELETE:
            self._rollouts.pop(model, None)
        else:
            self._track(pb.Rollout.FromString(event.kv.value))

    # -- per rollout -----------------------------------------------------------------------------------------

    def _track(self, rollout: pb.Rollout) -> None:
        tracked = _Tracked(rollout.generation, rollout.phase == pb.ROLLOUT_PHASE_PROGRESSING,
                           frozenset(rollout.spec.pools))
        self._rollouts[rollout.model] = tracked
        if tracked.progressing:
            for worker in self._eligible(tracked.pools):
                self._classify(rollout.model, tracked, worker, check=False)
            self._check(rollout.model, tracked)

    def _eligible(self, pools: frozenset[str]) -> list[str]:
        if not pools:
            return list(self._workers)
        return [w for p in pools for w in self._pools.get(p, ())]

    def _state(self, model: str, generation: int, worker: str) -> tuple[int, str]:
        obs = self._observed.get(model, {}).get(worker)
        if obs is not None and obs[0] == generation and not obs[1]:
            return pb.WORKER_ROLLOUT_STATE_NACKED, obs[2]
        if obs is not None and obs[0] >= generation and obs[1]:
            return pb.WORKER_ROLLOUT_STATE_ACKED, ""
        return pb.WORKER_ROLLOUT_STATE_PENDING, ""

    def _classify(self, model: str, tracked: _Tracked, worker: str, *, check: bool = True) -> None:
        if not tracked.progressing:
            return
        pool = self._workers.get(worker)
        if pool is None or (tracked.pools and pool not in tracked.pools):
            return
        state, error = self._state(model, tracked.generation, worker)
        tracked.acked.discard(worker)
        tracked.nacked.pop(worker, None)
        if state == pb.WORKER_ROLLOUT_STATE_ACKED:
            tracked.acked.add(worker)
        elif state == pb.WORKER_ROLLOUT_STATE_NACKED:
            tracked.nacked[worker] = error
        if check:
            self._check(model, tracked)

    def _eligible_count(self, pools: frozenset[str]) -> int:
        if not pools:
            return len(self._workers)
        return sum(len(self._pools.get(p, ())) for p in pools)

    def _check(self, model: str, tracked: _Tracked) -> None:
        if tracked.progressing and (tracked.nacked or len(tracked.acked) >= self._eligible_count(tracked.pools)):
            self.on_ready(model)

    def _waiting_for_departed(self, pools: frozenset[str]) -> bool:
        if not self._departed:
            return False
        deadline = self._clock() - self._grace
        for worker, (pool, when) in list(self._departed.items()):
            if when < deadline:
                del self._departed[worker]
            elif not pools or pool in pools:
                return True
        return False

    # -- queries ---------------------------------------------------------------------------------------------

    def fill(self, rollout: pb.Rollout) -> bool:
        """Set ``rollout.workers`` from the mirror (sorted by worker id); True while a departed worker of its pools
        is still within the presence grace period (then an all-acknowledged rollout must not succeed yet)."""
        del rollout.workers[:]
        pools = frozenset(rollout.spec.pools)
        for worker in sorted(self._eligible(pools)):
            state, error = self._state(rollout.model, rollout.generation, worker)
            rollout.workers.add(worker_id=worker, state=state, error=error)
        return self._waiting_for_departed(pools)

    def grace_expired(self) -> list[str]:
        """Progressing rollouts no longer held back by a departed worker (poll this about once a second)."""
        if not self._departed:
            return []
        held = [m for m, t in self._rollouts.items() if t.progressing and self._waiting_for_departed(t.pools)]
        self._waiting_for_departed(frozenset())  # drop expired entries
        return [m for m, t in self._rollouts.items() if t.progressing and m not in held]

    def observed_models(self, worker: str) -> list[str]:
        """The models the worker has observed keys of, as far as the watch has shown."""
        return [model for model, by_worker in self._observed.items() if worker in by_worker]

    def counts(self, model: str) -> tuple[int, int, int, int]:
        """(generation, acknowledged, rejected, eligible workers) of the model's tracked rollout; zeros if none."""
        tracked = self._rollouts.get(model)
        if tracked is None:
            return 0, 0, 0, 0
        return tracked.generation, len(tracked.acked), len(tracked.nacked), self._eligible_count(tracked.pools)

    def progressing(self) -> list[str]:
        return [m for m, t in self._rollouts.items() if t.progressing]
