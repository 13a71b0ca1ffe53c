"""Singleton duties of the control plane, run by the elected leader replica only.

Every replica campaigns (:class:`~lmaas.control_plane.store.election.Election`,
a lease-held key); the one that leads runs, until it loses the lease:

* rollout timeouts: a rollout progressing for longer than ``rollout_timeout``
  fails and the previous deployment is restored (:meth:`Deployments.expire`);
* store compaction: history older than one compaction interval is forgotten
  (watchers resume within it; one that falls further behind re-lists);
* garbage collection of abandoned partial uploads and of blobs no version
  references (a directory version references its files through its manifest),
  both only after ``gc_grace`` seconds;
* audit trimming to the configured limit.

When the leader dies its lease expires and another replica takes over within
one lease TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from lmaas.control_plane import keys
from lmaas.control_plane.artifacts import ArtifactStore, collect_garbage
from lmaas.control_plane.audit import AuditLog
from lmaas.control_plane.deployments import Deployments
from lmaas.control_plane.store.base import Store, StoreError
from lmaas.control_plane.store.election import Election
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from lmaas.protos.manifests import MAX_MANIFEST_BYTES, Manifest

__all__ = ["LeaderDuties", "LeaderSettings", "referenced_digests"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaderSettings:
    rollout_timeout: float = 600.0  # seconds; 0 = rollouts never time out
    compact_every: float = 300.0  # seconds; 0 = never compact
    gc_every: float = 600.0
    gc_grace: float = 3600.0
    lease_ttl: int = 5


async def referenced_digests(store: Store, artifacts: ArtifactStore) -> set[str]:
    """Every blob digest a model version uses: its artifact and, for a directory version, its manifest's files."""
    result = await store.range(keys.MODELS)
    digests: set[str] = set()
    for kv in result.kvs:
        if "/versions/" not in kv.key[len(keys.MODELS) :]:
            continue
        version = pb.ModelVersion.FromString(kv.value)
        digests.add(version.digest)
        try:
            if artifacts.size(version.digest) > MAX_MANIFEST_BYTES:
                continue
            data = await asyncio.to_thread(artifacts.path(version.digest).read_bytes)
            manifest = Manifest.parse(data)
        except Exception:  # not a manifest (a single-file artifact) or not stored
            continue
        digests.update(f.sha256 for f in manifest.files)
    return digests


class LeaderDuties:
    def __init__(
        self, store: Store, election: Election, deployments: Deployments, artifacts: ArtifactStore, audit: AuditLog,
        settings: LeaderSettings,
    ) -> None:
        self._store = store
        self.election = election
        self._deployments = deployments
        self._artifacts = artifacts
        self._audit = audit
        self._settings = settings
        self._compacted_to = 0

    async def run(self) -> None:
        """Campaign, lead until the lease is lost, campaign again; forever (cancel to stop, which resigns)."""
        try:
            while True:
                await self.election.campaign()
                duties = asyncio.create_task(self._lead(), name="lmaas-leader-duties")
                lost = asyncio.create_task(self.election.lost())
                try:
                    await asyncio.wait({duties, lost}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    duties.cancel()
                    lost.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await duties
                log.warning("%s no longer leads: campaigning again", self.election.candidate)
        finally:
            await self.election.resign()

    async def _lead(self) -> None:
        s = self._settings
        tick = min(1.0, s.rollout_timeout / 4) if s.rollout_timeout > 0 else 1.0
        loop = asyncio.get_running_loop()
        now = loop.time()
        next_compact, next_gc = now + s.compact_every, now + min(s.gc_every, 5.0)
        revision_at_last_compact = await self._store.revision()
        while True:
            try:
                if s.rollout_timeout > 0:
                    await self._deployments.expire(int(s.rollout_timeout * 1000))
                now = loop.time()
                if s.compact_every > 0 and now >= next_compact:
                    next_compact = now + s.compact_every
                    revision = await self._store.revision()
                    await self.compact(revision_at_last_compact)
                    revision_at_last_compact = revision
                if s.gc_every > 0 and now >= next_gc:
                    next_gc = now + s.gc_every
                    await self.collect_garbage()
                    await self._audit.trim()
            except StoreError as exc:
                log.warning("leader duties: %s", exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("leader duties failed")
            await asyncio.sleep(tick)

    async def compact(self, revision: int) -> None:
        if revision <= self._compacted_to:
            return
        try:
            await self._store.compact(revision)
        except NotImplementedError:
            return
        self._compacted_to = revision
        log.info("compacted the store history before revision %d", revision)

    async def collect_garbage(self) -> None:
        started = time.monotonic()
        referenced = await referenced_digests(self._store, self._artifacts)
        done = await collect_garbage(self._artifacts, referenced, grace=self._settings.gc_grace)
        if done.partial_uploads or done.blobs:
            log.info("garbage collection: %d abandoned upload(s), %d unreferenced blob(s), %d bytes freed in %.1fs",
                     done.partial_uploads, done.blobs, done.bytes, time.monotonic() - started)
