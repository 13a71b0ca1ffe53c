"""The observed state of the data plane: connected workers and what each acknowledged."""

from __future__ import annotations

from lmaas.control_plane import keys
from lmaas.control_plane.store.base import Store
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

__all__ = ["list_workers"]


async def list_workers(store: Store, pool: str = "") -> tuple[list[pb.WorkerInfo], int]:
    """Every connected worker (of ``pool``, if given), sorted by id, with its observed models."""
    workers = await store.range(keys.WORKERS)
    observed = await store.range(keys.OBSERVED)
    by_worker: dict[str, list[pb.ObservedModel]] = {}
    for kv in observed.kvs:
        obs = pb.ObservedModel.FromString(kv.value)
        by_worker.setdefault(obs.worker_id, []).append(obs)
    out = []
    for kv in workers.kvs:
        info = pb.WorkerInfo.FromString(kv.value)
        if pool and info.pool != pool:
            continue
        info.models.extend(by_worker.get(info.worker_id, []))
        out.append(info)
    return out, observed.revision
