"""Fleet scale of the control plane (issue 13): shared snapshots, incremental rollout progress, rollout timeout,
presence grace, token revocation during a stream; real control planes over SQLite and etcd, simulated workers
(light real WorkerSync clients, :mod:`benchmarks.fleet_sim`)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from cp_harness import ADMIN_TOKEN, Stubs, address, channel, deploy, eventually, final_rollout, push, running
from lmaas.control_plane import keys, snapshots
from lmaas.control_plane.app import ControlPlane
from lmaas.control_plane.deployments import recount
from lmaas.control_plane.progress import RolloutProgress
from lmaas.control_plane.store.base import Store
from lmaas.control_plane.watcher import StoreWatcher
from lmaas.protos.lmaas.control.v1 import deployments_pb2 as dpb
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from lmaas.protos.lmaas.control.v1 import tokens_pb2
from lmaas.protos.lmaas.worker.v1 import sync_pb2_grpc

from benchmarks.fleet_sim import SimFleet, SimWorker


@contextlib.asynccontextmanager
async def fleet(cp: ControlPlane, n: int, **kw: object) -> AsyncIterator[SimFleet]:
    sims = SimFleet([address(cp)], n, token=ADMIN_TOKEN, **kw)  # type: ignore[arg-type]
    sims.start()
    try:
        await sims.wait_connected(30)
        yield sims
    finally:
        await sims.close()


async def test_streams_of_one_pool_share_one_snapshot_build_per_change(store: Store, tmp_path: Path) -> None:
    async with running(store, tmp_path) as cp, channel(cp) as ch:
        stubs = Stubs(ch)
        for i in range(3):
            await push(stubs, "m", f"weights {i}".encode())
        async with fleet(cp, 12, pool="p") as sims:
            assert cp.sync.cache.builds("p") == 1  # twelve streams, one build
            for version in (1, 2, 3):
                reply = await stubs.deployments.Deploy(
                    dpb.DeployRequest(model="m", spec=pb.DeploymentSpec(stable_version=version, pools=["p"]))
                )
                rollout = await final_rollout(stubs, "m", reply.deployment.generation)
                assert rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED, rollout
                assert len(rollout.workers) == 12
                assert all(w.generations["m"] == reply.deployment.generation for w in sims.workers)
            # one build per deployments revision, however many streams: the first, then one per deploy
            assert cp.sync.cache.builds("p") == 4


async def test_incremental_progress_equals_a_full_recount(store: Store, tmp_path: Path) -> None:
    """Random ACK/NACK orders, workers joining and leaving, then a fresh mirror (a replica restart)."""
    rng = random.Random(13)
    watcher = StoreWatcher(store)
    mirror = RolloutProgress(store)
    watcher.listen(mirror)
    await watcher.start()
    try:
        models = ["a", "b", "c"]
        workers = [f"w{i}" for i in range(12)]
        leases = {}
        for model in models:
            rollout = pb.Rollout(model=model, generation=5, phase=pb.ROLLOUT_PHASE_PROGRESSING,
                                 spec=pb.DeploymentSpec(stable_version=1, pools=["p"] if model == "c" else []))
            await store.put(keys.rollout(model), rollout.SerializeToString())
        for step in range(150):
            worker = rng.choice(workers)
            if worker not in leases:
                leases[worker] = await store.lease(30)
                info = pb.WorkerInfo(worker_id=worker, pool=rng.choice(["p", "q"]))
                await store.put(keys.worker(worker), info.SerializeToString(), leases[worker].id)
            elif step % 17 == 0:
                await leases.pop(worker).revoke()
                continue
            model = rng.choice(models)
            obs = pb.ObservedModel(worker_id=worker, model=model, generation=rng.choice([4, 5, 6]),
                                   ok=rng.random() > 0.2, error="bad")
            await store.put(keys.observed(worker, model), obs.SerializeToString(), leases[worker].id)
        last = await store.revision()
        await eventually(lambda: mirror.revision >= last, 10)

        async def full_recount() -> dict[str, list[tuple[str, int, str]]]:
            infos = [pb.WorkerInfo.FromString(kv.value) for kv in (await store.range(keys.WORKERS)).kvs]
            observed = [pb.ObservedModel.FromString(kv.value) for kv in (await store.range(keys.OBSERVED)).kvs]
            out = {}
            for model in models:
                rollout = pb.Rollout.FromString((await store.get(keys.rollout(model))).value)  # type: ignore[union-attr]
                recount(rollout, infos, observed)
                out[model] = [(w.worker_id, w.state, w.error) for w in rollout.workers]
            return out

        def mirrored(m: RolloutProgress) -> dict[str, list[tuple[str, int, str]]]:
            out = {}
            for model in models:
                rollout = pb.Rollout(model=model, generation=5,
                                     spec=pb.DeploymentSpec(pools=["p"] if model == "c" else []))
                m.fill(rollout)
                out[model] = [(w.worker_id, w.state, w.error) for w in rollout.workers]
            return out

        expected = await full_recount()
        assert any(states for states in expected.values())
        assert mirrored(mirror) == expected
        for model in models:  # the incremental counters agree with the recount too
            generation, acked, nacked, eligible = mirror.counts(model)
            states = [s for _, s, _ in expected[model]]
            assert (generation, acked, nacked, eligible) == (
                5, states.count(pb.WORKER_ROLLOUT_STATE_ACKED), states.count(pb.WORKER_ROLLOUT_STATE_NACKED),
                len(states),
            )
        restarted = RolloutProgress(store)
        await restarted.resync()
        assert mirrored(restarted) == expected
        for lease in leases.values():
            await lease.revoke()
    finally:
        await watcher.stop()


async def test_rollout_timeout_fails_and_restores_the_previous_deployment(store: Store, tmp_path: Path) -> None:
    async with running(store, tmp_path, rollout_timeout="2s") as cp, channel(cp) as ch:
        stubs = Stubs(ch)
        await push(stubs, "m", b"weights 1")
        await push(stubs, "m", b"weights 2")
        async with fleet(cp, 3) as sims:
            first = await deploy(stubs, "m", 1)
            assert (await final_rollout(stubs, "m", first.deployment.generation)).phase == pb.ROLLOUT_PHASE_SUCCEEDED
            for w in sims.workers[:2]:
                w.load_time = 3600  # these two never finish loading version 2, so never ACK
            second = await deploy(stubs, "m", 2)
            rollout = await final_rollout(stubs, "m", second.deployment.generation)
        assert rollout.phase == pb.ROLLOUT_PHASE_FAILED, rollout
        assert "timed out after 2s" in rollout.message and "2 of 3" in rollout.message, rollout.message
        got = await stubs.deployments.GetDeployment(dpb.GetDeploymentRequest(model="m"))
        assert got.deployment.spec.stable_version == 1
        assert got.deployment.history[-1].reason == "auto-rollback"
        assert rollout.restored_generation == got.deployment.generation


async def test_a_worker_between_two_streams_keeps_a_rollout_from_succeeding_empty(
    store: Store, tmp_path: Path
) -> None:
    async with running(store, tmp_path, presence_grace=30.0) as cp, channel(cp) as ch:
        stubs = Stubs(ch)
        await push(stubs, "m", b"weights 1")
        async with fleet(cp, 1):
            pass  # connected once, then gone (say, it is reconnecting)
        await eventually(lambda: cp.progress._workers == {})
        reply = await deploy(stubs, "m", 1)
        assert reply.rollout.phase == pb.ROLLOUT_PHASE_PROGRESSING, reply.rollout
        async with fleet(cp, 1):  # back: it acknowledges, and the rollout succeeds with it
            rollout = await final_rollout(stubs, "m", reply.deployment.generation)
        assert rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED and rollout.message == "acknowledged by 1 worker"


async def test_a_revoked_token_ends_its_open_worker_stream(store: Store, tmp_path: Path) -> None:
    async with running(store, tmp_path) as cp, channel(cp) as ch:
        stubs = Stubs(ch)
        created = await stubs.tokens.CreateToken(tokens_pb2.CreateTokenRequest(role=pb.ROLE_WORKER))
        async with grpc.aio.insecure_channel(address(cp)) as plain:
            sim = SimWorker("revokee", [sync_pb2_grpc.WorkerSyncStub(plain)], token=created.secret)
            task = asyncio.create_task(sim.run())
            try:
                await eventually(lambda: sim.acked_revision > 0)
                await stubs.tokens.RevokeToken(tokens_pb2.RevokeTokenRequest(id=created.token.id))
                async with asyncio.timeout(10):
                    await task  # run() returns once the stream ends UNAUTHENTICATED
            finally:
                task.cancel()
        assert sim.last_error is not None and sim.last_error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in (sim.last_error.details() or "")
        assert sim.connects == 1
        await eventually(lambda: cp.metrics.connected_workers._value.get() == 0)


async def test_a_shared_snapshot_is_encoded_once_for_every_stream(store: Store, tmp_path: Path) -> None:
    async with running(store, tmp_path) as cp, channel(cp) as ch:
        stubs = Stubs(ch)
        for i in range(2):
            await push(stubs, "m", f"weights {i}".encode())
        await deploy(stubs, "m", 1)
        before = snapshots.encodings
        async with fleet(cp, 10) as sims:
            assert snapshots.encodings - before == 1  # ten streams, one encoding
            reply = await deploy(stubs, "m", 2)
            rollout = await final_rollout(stubs, "m", reply.deployment.generation)
            assert rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED and len(rollout.workers) == 10
            assert all(w.generations["m"] == reply.deployment.generation for w in sims.workers)  # the bytes decode
            assert snapshots.encodings - before == 2


async def test_a_malformed_worker_message_is_invalid_argument(store: Store, tmp_path: Path) -> None:
    # WorkerSync requests are parsed by the control plane (not by gRPC), so a bad one gets a precise status
    async with running(store, tmp_path) as cp, channel(cp) as ch:
        call = ch.stream_stream("/lmaas.worker.v1.WorkerSync/Sync")(iter([b"\xff\xff\xff"]))
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
            assert "malformed" in (exc.details() or "")
        else:
            raise AssertionError("a malformed WorkerSync message was accepted")
