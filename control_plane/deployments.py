"""Deployments: the desired serving state per model, its history, and rollouts.

``/lmaas/v1/deployments/<name>`` holds the desired spec (stable version,
optional canary and weight, pools), a generation that increases with every
change, and a bounded history. ``/lmaas/v1/rollouts/<name>`` holds the
progress of the latest change. Both are written in one compare-and-swap
transaction, so a deploy is never half-written; a concurrent change of the
same deployment makes the later writer fail with ABORTED (re-read, retry).

A rollout is PROGRESSING until every connected worker of the model's pools has
acknowledged its generation (SUCCEEDED) or one rejected it (FAILED). A
rejection restores the previous good spec as a new generation at once (the
record that failed is marked and skipped by later rollbacks). Any replica may
evaluate a rollout; the compare-and-swap makes exactly one of them finish it.

Progress comes from :class:`~lmaas.control_plane.progress.RolloutProgress`
(an in-memory mirror fed by the store watch) when one is attached: an Ack then
costs no store read, and a rollout is evaluated only when the mirror says it
may finish. Without one (tests, tools) each evaluation re-reads every worker
and observed key. The elected leader fails rollouts that exceed the rollout
timeout (:meth:`Deployments.expire`), restoring the previous deployment.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from lmaas.control_plane import keys
from lmaas.control_plane.limits import MAX_POOLS, check_count
from lmaas.control_plane.metrics import ControlMetrics
from lmaas.control_plane.progress import RolloutProgress
from lmaas.control_plane.registry import Registry, now_ms
from lmaas.control_plane.store.base import Compare, KeyValue, Put, Store, StoreError
from lmaas.control_plane.watcher import StoreWatcher
from lmaas.protos.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

__all__ = ["FINAL_PHASES", "Deployments", "previous_record", "recount"]

log = logging.getLogger(__name__)

FINAL_PHASES = frozenset({pb.ROLLOUT_PHASE_SUCCEEDED, pb.ROLLOUT_PHASE_FAILED, pb.ROLLOUT_PHASE_SUPERSEDED})
_CAS_ATTEMPTS = 16
_CATCH_UP_SECONDS = 2.0  # how long a change waits for the watch to show it before answering
AUTOMATIC = "control-plane"


def previous_record(deployment: pb.Deployment) -> pb.DeploymentRecord | None:
    """The latest earlier record that serves, did not fail, and differs from the current spec."""
    record: pb.DeploymentRecord
    for record in reversed(deployment.history[:-1]):
        if not record.failed and record.spec.stable_version > 0 and record.spec != deployment.spec:
            return record
    return None


@dataclass(frozen=True)
class _Observed:
    workers: list[pb.WorkerInfo]
    observed: dict[tuple[str, str], pb.ObservedModel]
    revision: int


class Deployments:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        metrics: ControlMetrics,
        *,
        history_limit: int = 50,
        clock: Callable[[], int] = now_ms,
        progress: RolloutProgress | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._metrics = metrics
        self._history_limit = history_limit
        self._clock = clock
        self.progress = progress
        self._scheduled: set[str] = set()
        self._again: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        if progress is not None:
            progress.on_ready = self._schedule

    def _schedule(self, name: str) -> None:
        """Evaluate ``name`` soon, once: readiness reported while an evaluation runs triggers one more."""
        if name in self._scheduled:
            self._again.add(name)
            return
        self._scheduled.add(name)
        task = asyncio.get_running_loop().create_task(self._evaluate_scheduled(name), name=f"lmaas-evaluate-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _evaluate_scheduled(self, name: str) -> None:
        try:
            while True:
                self._again.discard(name)
                try:
                    await self.evaluate(name)
                except (Aborted, StoreError) as exc:
                    log.warning("rollout of model %s: %s", name, exc)
                if name not in self._again:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("evaluating the rollout of model %s failed", name)
        finally:
            self._scheduled.discard(name)

    def _mirror(self) -> RolloutProgress | None:
        return self.progress if self.progress is not None and self.progress.synced else None

    # -- changes ---------------------------------------------------------------------------------------------

    async def deploy(
        self, name: str, spec: pb.DeploymentSpec, *, expected_generation: int = 0, created_by: str
    ) -> tuple[pb.Deployment, pb.Rollout, int]:
        _check_spec(name, spec)
        for version in (spec.stable_version, spec.canary_version):
            if version:
                await self._registry.get_version(name, version)  # NOT_FOUND for a missing model or version
        return await self._change(
            name, spec, reason="deploy", message="", expected_generation=expected_generation, created_by=created_by
        )

    async def rollback(
        self, name: str, *, to_version: int = 0, expected_generation: int = 0, created_by: str
    ) -> tuple[pb.Deployment, pb.Rollout, int]:
        current = await self._get_deployment(name)
        if current is None:
            await self._registry.get_model(name)
            raise FailedPrecondition(f"model '{name}' was never deployed: nothing to roll back")
        deployment = pb.Deployment.FromString(current.value)
        if to_version:
            await self._registry.get_version(name, to_version)
            spec = pb.DeploymentSpec(stable_version=to_version, pools=deployment.spec.pools, lazy=deployment.spec.lazy)
            message = f"to version {to_version}"
        else:
            previous = previous_record(deployment)
            if previous is None:
                raise FailedPrecondition(f"model '{name}' has no earlier good deployment to roll back to")
            spec = previous.spec
            message = f"to generation {previous.generation}"
        return await self._change(
            name, spec, reason="rollback", message=message, expected_generation=expected_generation,
            created_by=created_by,
        )

    async def _change(
        self, name: str, spec: pb.DeploymentSpec, *, reason: str, message: str, expected_generation: int,
        created_by: str,
    ) -> tuple[pb.Deployment, pb.Rollout, int]:
        key = keys.deployment(name)
        kv = await self._store.get(key)
        if kv is None:
            deployment, guard = pb.Deployment(model=name), Compare.absent(key)
        else:
            deployment, guard = pb.Deployment.FromString(kv.value), Compare.unchanged(key, kv.mod_revision)
        if (expected_generation == -1 and kv is not None) or (expected_generation > 0 and (
            deployment.generation != expected_generation
        )):
            raise Aborted(
                f"deployment of model '{name}' is at generation {deployment.generation}, "
                f"not the expected {expected_generation}; re-read and retry"
            )
        now = self._clock()
        deployment.generation += 1
        deployment.spec.CopyFrom(spec)
        deployment.updated_at_ms = now
        deployment.history.append(
            pb.DeploymentRecord(
                generation=deployment.generation, spec=spec, reason=reason, message=message, created_at_ms=now,
                created_by=created_by,
            )
        )
        del deployment.history[: -self._history_limit]
        rollout = pb.Rollout(
            model=name, generation=deployment.generation, spec=spec, phase=pb.ROLLOUT_PHASE_PROGRESSING,
            reason=reason, message=message, started_at_ms=now,
        )
        result = await self._store.txn(
            [guard],
            [Put(key, deployment.SerializeToString()), Put(keys.rollout(name), rollout.SerializeToString())],
        )
        if not result.succeeded:
            raise Aborted(f"deployment of model '{name}' changed concurrently; re-read and retry")
        log.info("model %s: %s generation %d %s", name, reason, deployment.generation, _describe(spec))
        mirror = self._mirror()
        if mirror is not None:
            # judged by a mirror that has seen this write and every worker registered before it (a rollout
            # evaluated earlier could succeed with "no worker connected"); if the watch lags longer, the mirror
            # evaluates it when it catches up
            await mirror.caught_up(result.revision, _CATCH_UP_SECONDS)
        evaluated = await self.evaluate(name)
        return deployment, evaluated or rollout, result.revision

    # -- reads -----------------------------------------------------------------------------------------------

    async def _get_deployment(self, name: str) -> KeyValue | None:
        keys.check_name(name)
        return await self._store.get(keys.deployment(name))

    async def get(self, name: str) -> tuple[pb.Deployment, pb.Rollout, int]:
        kv = await self._get_deployment(name)
        if kv is None:
            await self._registry.get_model(name)
            raise NotFound(f"model '{name}' is not deployed")
        rollout, revision = await self.rollout(name)
        return pb.Deployment.FromString(kv.value), rollout, revision

    async def list(self) -> tuple[list[pb.Deployment], list[pb.Rollout], int]:
        deployments = await self._store.range(keys.DEPLOYMENTS)
        rollouts = await self._store.range(keys.ROLLOUTS)
        by_model = {kv.key[len(keys.ROLLOUTS) :]: pb.Rollout.FromString(kv.value) for kv in rollouts.kvs}
        mirror = self._mirror()
        observed = await self._observed() if mirror is None else None
        out_d, out_r = [], []
        for kv in deployments.kvs:
            deployment = pb.Deployment.FromString(kv.value)
            rollout = by_model.get(deployment.model, pb.Rollout(model=deployment.model))
            if mirror is not None:
                mirror.fill(rollout)
            elif observed is not None:
                _fill_workers(rollout, observed)
            out_d.append(deployment)
            out_r.append(rollout)
        return out_d, out_r, rollouts.revision

    async def rollout(self, name: str) -> tuple[pb.Rollout, int]:
        """The latest rollout of a model, with per-worker progress."""
        kv = await self._store.get(keys.rollout(name))
        if kv is None:
            raise NotFound(f"model '{name}' has no rollout")
        rollout = pb.Rollout.FromString(kv.value)
        mirror = self._mirror()
        if mirror is not None:
            mirror.fill(rollout)
            return rollout, max(kv.mod_revision, mirror.revision)
        observed = await self._observed()
        _fill_workers(rollout, observed)
        return rollout, max(kv.mod_revision, observed.revision)

    async def _observed(self) -> _Observed:
        workers = await self._store.range(keys.WORKERS)
        observed = await self._store.range(keys.OBSERVED)
        by_key = {}
        for kv in observed.kvs:
            obs = pb.ObservedModel.FromString(kv.value)
            by_key[obs.worker_id, obs.model] = obs
        return _Observed([pb.WorkerInfo.FromString(kv.value) for kv in workers.kvs], by_key, observed.revision)

    async def watch_rollout(
        self, name: str, generation: int, watcher: StoreWatcher, *, poll: float = 5.0
    ) -> AsyncIterator[tuple[pb.Rollout, int]]:
        """The rollout's state now and after each change, until a final phase."""
        keys.check_name(name)
        with watcher.subscribe(keys.rollout(name), keys.WORKERS, keys.OBSERVED) as sub:
            last: pb.Rollout | None = None
            while True:
                rollout, revision = await self.rollout(name)
                if generation == 0:
                    generation = rollout.generation
                if rollout.generation < generation:
                    raise NotFound(f"model '{name}' has no rollout of generation {generation}")
                if rollout.generation > generation:
                    superseded = pb.Rollout(
                        model=name, generation=generation, phase=pb.ROLLOUT_PHASE_SUPERSEDED,
                        message=f"superseded by generation {rollout.generation}", finished_at_ms=self._clock(),
                    )
                    yield superseded, revision
                    return
                if rollout != last:
                    yield rollout, revision
                    last = rollout
                if rollout.phase in FINAL_PHASES:
                    return
                await sub.wait(poll)

    # -- rollout progress ------------------------------------------------------------------------------------

    async def evaluate(self, name: str) -> pb.Rollout | None:
        """Finish the model's rollout if every worker acknowledged it or one rejected it; the rollout after."""
        for _ in range(_CAS_ATTEMPTS):
            kv = await self._store.get(keys.rollout(name))
            if kv is None:
                return None
            rollout: pb.Rollout = pb.Rollout.FromString(kv.value)
            if rollout.phase != pb.ROLLOUT_PHASE_PROGRESSING:
                return rollout
            mirror = self._mirror()
            waiting = False
            if mirror is not None:
                if mirror.revision < kv.mod_revision:
                    # The watch has not shown this rollout yet, nor maybe a worker that registered just before
                    # it: judging now could succeed with "no worker connected". The mirror calls on_ready
                    # (evaluate again) when it applies the rollout's event.
                    return rollout
                waiting = mirror.fill(rollout)
            else:
                _fill_workers(rollout, await self._observed())
            nacked = [w for w in rollout.workers if w.state == pb.WORKER_ROLLOUT_STATE_NACKED]
            if nacked:
                error = f"worker {nacked[0].worker_id} rejected generation {rollout.generation}: {nacked[0].error}"
                done = await self._fail(rollout, kv, error)
            elif not waiting and all(w.state == pb.WORKER_ROLLOUT_STATE_ACKED for w in rollout.workers):
                done = await self._succeed(rollout, kv)
            else:
                return rollout
            if done is not None:
                self._metrics.rollout_finished(done)
                return done
        raise Aborted(f"rollout of model '{name}' kept changing during evaluation")

    async def _succeed(self, rollout: pb.Rollout, kv: KeyValue) -> pb.Rollout | None:
        stored: pb.Rollout = pb.Rollout.FromString(kv.value)
        stored.phase = pb.ROLLOUT_PHASE_SUCCEEDED
        stored.finished_at_ms = self._clock()
        count = len(rollout.workers)
        stored.message = f"acknowledged by {count} worker{'s' * (count != 1)}" if count else "no worker connected"
        result = await self._store.txn(
            [Compare.unchanged(kv.key, kv.mod_revision)], [Put(kv.key, stored.SerializeToString())]
        )
        if not result.succeeded:
            return None
        log.info("model %s: generation %d rolled out (%s)", stored.model, stored.generation, stored.message)
        stored.workers.extend(rollout.workers)
        return stored

    async def expire(self, timeout_ms: int) -> tuple[pb.Rollout, ...]:
        """Fail every rollout progressing for longer than ``timeout_ms`` and restore its previous deployment
        (a duty of the elected leader: one replica does it)."""
        failed: builtins.list[pb.Rollout] = []
        result = await self._store.range(keys.ROLLOUTS)
        now = self._clock()
        for kv in result.kvs:
            rollout = pb.Rollout.FromString(kv.value)
            if rollout.phase != pb.ROLLOUT_PHASE_PROGRESSING or now - rollout.started_at_ms < timeout_ms:
                continue
            mirror = self._mirror()
            if mirror is not None:
                mirror.fill(rollout)
            else:
                _fill_workers(rollout, await self._observed())
            pending = sorted(w.worker_id for w in rollout.workers if w.state != pb.WORKER_ROLLOUT_STATE_ACKED)
            shown = ", ".join(pending[:5]) + (f" and {len(pending) - 5} more" if len(pending) > 5 else "")
            error = (f"timed out after {timeout_ms / 1000:g}s: {len(pending)} of {len(rollout.workers)} worker(s) "
                     f"did not acknowledge generation {rollout.generation}" + (f" ({shown})" if shown else ""))
            done = await self._fail(rollout, kv, error)
            if done is not None:
                self._metrics.rollout_finished(done)
                failed.append(done)
        return tuple(failed)

    async def _fail(self, rollout: pb.Rollout, kv: KeyValue, error: str) -> pb.Rollout | None:
        name = rollout.model
        dkey = keys.deployment(name)
        dkv = await self._store.get(dkey)
        if dkv is None:
            return None
        deployment = pb.Deployment.FromString(dkv.value)
        stored: pb.Rollout = pb.Rollout.FromString(kv.value)
        now = self._clock()
        ops = []
        if deployment.generation == rollout.generation:
            deployment.history[-1].failed = True
            previous = previous_record(deployment)
            spec = previous.spec if previous is not None else pb.DeploymentSpec()
            deployment.generation += 1
            deployment.spec.CopyFrom(spec)
            deployment.updated_at_ms = now
            deployment.history.append(
                pb.DeploymentRecord(
                    generation=deployment.generation, spec=spec, reason="auto-rollback", message=error,
                    created_at_ms=now, created_by=AUTOMATIC,
                )
            )
            del deployment.history[: -self._history_limit]
            ops.append(Put(dkey, deployment.SerializeToString()))
            stored.restored_generation = deployment.generation
        stored.phase = pb.ROLLOUT_PHASE_FAILED
        stored.message = error
        stored.finished_at_ms = now
        ops.append(Put(kv.key, stored.SerializeToString()))
        result = await self._store.txn(
            [Compare.unchanged(kv.key, kv.mod_revision), Compare.unchanged(dkey, dkv.mod_revision)], ops
        )
        if not result.succeeded:
            return None
        log.warning("model %s: rollout failed, restored %s: %s", name, _describe(deployment.spec), error)
        stored.workers.extend(rollout.workers)
        return stored

    async def monitor(self, watcher: StoreWatcher, *, poll: float = 10.0) -> None:
        """Re-evaluate progressing rollouts when workers come and go (runs on every replica)."""
        if self.progress is not None:
            await self._monitor_mirror(poll)
            return
        with watcher.subscribe(keys.WORKERS, keys.ROLLOUTS) as sub:
            while True:
                await sub.wait(poll)
                try:
                    result = await self._store.range(keys.ROLLOUTS)
                    for kv in result.kvs:
                        rollout = pb.Rollout.FromString(kv.value)
                        if rollout.phase == pb.ROLLOUT_PHASE_PROGRESSING:
                            with contextlib.suppress(Aborted):
                                await self.evaluate(rollout.model)
                except StoreError as exc:
                    log.warning("rollout monitor: %s", exc)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("rollout monitor failed")


    async def _monitor_mirror(self, poll: float) -> None:
        # The mirror reports readiness itself; this loop covers the presence grace running out, and re-checks
        # every progressing rollout now and then in case a finishing write was lost (a store error).
        progress = self.progress
        assert progress is not None
        last_sweep = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(min(1.0, poll))
            for name in progress.grace_expired():
                self._schedule(name)
            now = asyncio.get_running_loop().time()
            if now - last_sweep >= poll:
                last_sweep = now
                for name in progress.progressing():
                    self._schedule(name)


def recount(rollout: pb.Rollout, workers: list[pb.WorkerInfo], observed: list[pb.ObservedModel]) -> None:
    """Fill ``rollout.workers`` by a full recount (what the incremental mirror must agree with)."""
    _fill_workers(rollout, _Observed(workers, {(o.worker_id, o.model): o for o in observed}, 0))


def _fill_workers(rollout: pb.Rollout, observed: _Observed) -> None:
    del rollout.workers[:]
    pools = set(rollout.spec.pools)
    for worker in observed.workers:
        if pools and worker.pool not in pools:
            continue
        obs = observed.observed.get((worker.worker_id, rollout.model))
        state, error = pb.WORKER_ROLLOUT_STATE_PENDING, ""
        if obs is not None and obs.generation == rollout.generation and not obs.ok:
            state, error = pb.WORKER_ROLLOUT_STATE_NACKED, obs.error
        elif obs is not None and obs.generation >= rollout.generation and obs.ok:
            state = pb.WORKER_ROLLOUT_STATE_ACKED
        rollout.workers.add(worker_id=worker.worker_id, state=state, error=error)


def _check_spec(name: str, spec: pb.DeploymentSpec) -> None:
    keys.check_name(name)
    if spec.stable_version <= 0:
        raise InvalidArgument(f"deployment of model '{name}' needs a stable version (an integer from 1)")
    if spec.canary_version < 0:
        raise InvalidArgument(f"invalid canary version {spec.canary_version}")
    if not 0 <= spec.canary_weight <= 100:
        raise InvalidArgument(f"invalid canary weight {spec.canary_weight}: expected a percentage 0-100")
    if spec.canary_weight and not spec.canary_version:
        raise InvalidArgument("a canary weight needs a canary version")
    if spec.canary_version and spec.canary_version == spec.stable_version:
        raise InvalidArgument(f"canary version {spec.canary_version} is also the stable version")
    check_count(spec.pools, "deployment pools", MAX_POOLS)
    for pool in spec.pools:
        keys.check_name(pool, "pool name")


def _describe(spec: pb.DeploymentSpec) -> str:
    if not spec.stable_version:
        return "(not served)"
    text = f"stable=v{spec.stable_version}"
    if spec.canary_version:
        text += f" canary=v{spec.canary_version}@{spec.canary_weight}%"
    return text + " lazy" * spec.lazy
