"""The worker's sync gives the artifact cache back what it no longer uses, and a size-bounded cache evicts it:
a real control plane and store, the real Syncer and ArtifactCache, FakeHost for the model manager."""

from __future__ import annotations

import os
from pathlib import Path

from cp_harness import Stubs, address, deploy, eventually, final_rollout, push, sha, worker
from lmaas.control_plane.app import ControlPlane
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

pytest_plugins = ["cp_fixtures"]  # cp, stubs


async def test_unassigned_versions_are_released_and_evicted(stubs: Stubs, cp: ControlPlane, tmp_path: Path) -> None:
    weights = [os.urandom(100_000) for _ in range(3)]
    for data in weights:
        await push(stubs, "m", data)
    async with worker(address(cp), tmp_path) as w:
        cache = w.syncer.cache
        cache.max_bytes = 250_000  # two versions fit
        paths = [cache.path(sha(data), "onnx") for data in weights]
        for v in (1, 2, 3):
            await deploy(stubs, "m", v)
            assert (await final_rollout(stubs, "m")).phase == pb.ROLLOUT_PHASE_SUCCEEDED
        await eventually(lambda: w.host.versions("m") == [2, 3])  # v1 neither serves nor is the previous one
        await eventually(lambda: not paths[0].exists())  # released once unloaded, then evicted
        assert paths[1].read_bytes() == weights[1] and paths[2].read_bytes() == weights[2]
        assert cache.leased() == {sha(weights[1]), sha(weights[2])}
        # A rollback to the evicted version downloads it again.
        await deploy(stubs, "m", 1)
        assert (await final_rollout(stubs, "m")).phase == pb.ROLLOUT_PHASE_SUCCEEDED
        assert w.host.routes["m"].stable == 1 and paths[0].read_bytes() == weights[0]
