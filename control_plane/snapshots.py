"""The complete desired state of a worker pool, built from the store.

A snapshot (``lmaas.worker.v1.Snapshot``) lists every model version a worker
of the pool must hold and every route. Per deployed model it assigns the
stable version, the canary version if any, and the stable version of the
previous good deployment, kept warm so that a rollback flips without a load.
Versions are immutable, so they are cached here by (model, version).
"""

from __future__ import annotations

import logging

from lmaas.control_plane import keys
from lmaas.control_plane.deployments import previous_record
from lmaas.control_plane.store.base import Store
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from lmaas.protos.lmaas.worker.v1 import sync_pb2

__all__ = ["SnapshotBuilder", "same_state"]

log = logging.getLogger(__name__)


def same_state(a: sync_pb2.Snapshot | None, b: sync_pb2.Snapshot) -> bool:
    """Whether two snapshots describe the same desired state (revisions aside)."""
    return a is not None and list(a.assignments) == list(b.assignments) and list(a.routes) == list(b.routes)


class SnapshotBuilder:
    def __init__(self, store: Store, *, keep_previous_warm: bool = True) -> None:
        self._store = store
        self._keep_previous = keep_previous_warm
        self._versions: dict[tuple[str, int], pb.ModelVersion] = {}

    async def _version(self, name: str, number: int) -> pb.ModelVersion | None:
        cached = self._versions.get((name, number))
        if cached is None:
            kv = await self._store.get(keys.version(name, number))
            if kv is None:
                return None
            cached = self._versions[name, number] = pb.ModelVersion.FromString(kv.value)
        return cached

    async def build(self, pool: str) -> sync_pb2.Snapshot:
        result = await self._store.range(keys.DEPLOYMENTS)
        snapshot = sync_pb2.Snapshot(revision=result.revision)
        for kv in result.kvs:
            deployment = pb.Deployment.FromString(kv.value)
            spec = deployment.spec
            if spec.stable_version <= 0 or (spec.pools and pool not in spec.pools):
                continue
            numbers = [spec.stable_version]
            if spec.canary_version:
                numbers.append(spec.canary_version)
            previous = previous_record(deployment) if self._keep_previous else None
            if previous is not None and previous.spec.stable_version not in numbers:
                numbers.append(previous.spec.stable_version)
            versions = [await self._version(deployment.model, n) for n in numbers]
            if any(v is None for v in versions):
                log.error("deployment of model %s names a missing version: %s", deployment.model, numbers)
                continue
            for v in sorted((v for v in versions if v is not None), key=lambda v: v.version):
                snapshot.assignments.add(
                    model=v.model, version=v.version, digest=v.digest, format=v.format, config_json=v.config_json,
                    size_bytes=v.size_bytes,
                )
            snapshot.routes.add(
                model=deployment.model, stable_version=spec.stable_version, canary_version=spec.canary_version,
                canary_weight=spec.canary_weight, generation=deployment.generation,
            )
        return snapshot
