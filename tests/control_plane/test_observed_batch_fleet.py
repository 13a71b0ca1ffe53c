"""Coalesced observed-state writes keep the rollout semantics: a NACK among many batched ACKs still fails the
rollout and restores the previous deployment (the coalescing itself: ``test_observed_batch_writer.py``)."""

from __future__ import annotations

from pathlib import Path

from cp_harness import ADMIN_TOKEN, Stubs, address, channel, deploy, eventually, final_rollout, push, running
from lmaas.control_plane.store.base import Store
from lmaas.protos.lmaas.control.v1 import deployments_pb2 as dpb
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

from benchmarks.fleet_sim import SimFleet


async def test_a_nack_among_batched_acks_fails_the_rollout(store: Store, tmp_path: Path) -> None:
    async with running(store, tmp_path) as cp, channel(cp) as ch:
        stubs = Stubs(ch)
        for i in range(2):
            await push(stubs, "m", f"weights {i}".encode())
        await deploy(stubs, "m", 1)
        sims = SimFleet([address(cp)], 24, token=ADMIN_TOKEN)
        sims.start()
        try:
            await sims.wait_connected(30)
            sims.workers[17].reject = frozenset({"m"})
            reply = await deploy(stubs, "m", 2)
            rollout = await final_rollout(stubs, "m", reply.deployment.generation)
            assert rollout.phase == pb.ROLLOUT_PHASE_FAILED, rollout
            assert "sim-00017 rejected generation" in rollout.message
            assert rollout.restored_generation == reply.deployment.generation + 1
            deployment = (await stubs.deployments.GetDeployment(dpb.GetDeploymentRequest(model="m"))).deployment
            assert deployment.spec.stable_version == 1
            await eventually(lambda: all(w.generations.get("m") == rollout.restored_generation for w in sims.workers))
        finally:
            await sims.close()

