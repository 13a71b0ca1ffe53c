"""WorkerSync end to end over real gRPC: a real control plane and store, the real worker-side Syncer and
ArtifactCache, and FakeHost (the only fake) standing in for the worker's model manager."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from cp_harness import (
    WAIT,
    FakeHost,
    StoreFactory,
    Stubs,
    address,
    channel,
    deploy,
    eventually,
    final_rollout,
    push,
    running,
    sha,
    worker,
)
from lmaas.control_plane import keys
from lmaas.control_plane.app import ControlPlane
from lmaas.control_plane.store.base import Store
from lmaas.protos.lmaas.control.v1 import deployments_pb2 as dpb
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from lmaas.protos.lmaas.control.v1 import workers_pb2
from lmaas.protos.lmaas.worker.v1 import sync_pb2
from lmaas.server.sync import Route

pytest_plugins = ["cp_fixtures"]  # cp, stubs


async def versions(stubs: Stubs, n: int, name: str = "m") -> None:
    for i in range(n):
        await push(stubs, name, f"weights of version {i + 1}".encode())


async def test_deploy_flows_to_worker_and_rollout_succeeds(stubs: Stubs, cp: ControlPlane, tmp_path: Path) -> None:
    await versions(stubs, 2)
    async with worker(address(cp), tmp_path) as w:
        await eventually(lambda: cp.metrics.connected_workers._value.get() == 1)
        reply = await deploy(stubs, "m", 1)
        rollout = await final_rollout(stubs, "m", reply.deployment.generation)
        assert rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED, rollout
        assert [(x.worker_id, x.state) for x in rollout.workers] == [("w1", pb.WORKER_ROLLOUT_STATE_ACKED)]
        assert w.host.routes == {"m": Route(1)}
        # v2 loads beside v1, routing flips, v1 stays warm as the previous stable version
        reply = await deploy(stubs, "m", 2)
        assert (await final_rollout(stubs, "m")).phase == pb.ROLLOUT_PHASE_SUCCEEDED
        assert w.host.routes == {"m": Route(2)} and w.host.versions("m") == [1, 2]
        # rollback flips without loading anything
        loads = len(w.host.loads)
        await stubs.deployments.Rollback(dpb.RollbackRequest(model="m"))
        assert (await final_rollout(stubs, "m")).phase == pb.ROLLOUT_PHASE_SUCCEEDED
        assert w.host.routes == {"m": Route(1)} and len(w.host.loads) == loads
        listed = await stubs.workers.ListWorkers(workers_pb2.ListWorkersRequest())
        (info,) = listed.workers
        assert info.worker_id == "w1" and info.pool == "default" and info.acked_revision == info.desired_revision
        assert [(o.model, o.ok, list(o.loaded_versions)) for o in info.models] == [("m", True, [1, 2])]
        assert cp.registry.get_sample_value("lmaas_control_worker_revision", {"worker": "w1", "kind": "acked"}) > 0
    await eventually(lambda: cp.metrics.connected_workers._value.get() == 0)
    assert await cp.store.get(keys.worker("w1")) is None  # lease revoked with the stream
    assert (await cp.store.range(keys.OBSERVED)).kvs == []


async def test_unassigned_versions_are_unloaded_after_the_flip(stubs: Stubs, cp: ControlPlane, tmp_path: Path) -> None:
    await versions(stubs, 3)
    async with worker(address(cp), tmp_path) as w:
        for v in (1, 2, 3):
            await deploy(stubs, "m", v)
            assert (await final_rollout(stubs, "m")).phase == pb.ROLLOUT_PHASE_SUCCEEDED
        await eventually(lambda: w.host.versions("m") == [2, 3])  # v1 neither serves nor is the previous one
        assert ("m", 1) in w.host.unloads


async def test_canary_route(stubs: Stubs, cp: ControlPlane, tmp_path: Path) -> None:
    await versions(stubs, 2)
    async with worker(address(cp), tmp_path) as w:
        await deploy(stubs, "m", 1, canary=2, weight=30)
        assert (await final_rollout(stubs, "m")).phase == pb.ROLLOUT_PHASE_SUCCEEDED
        assert w.host.routes == {"m": Route(1, 2, 30)}


async def test_nack_fails_rollout_and_restores_previous_state(stubs: Stubs, cp: ControlPlane, tmp_path: Path) -> None:
    await versions(stubs, 1)
    await push(stubs, "m", b"corrupt weights")  # v2: the host cannot load it
    async with worker(address(cp), tmp_path) as w:
        await deploy(stubs, "m", 1)
        assert (await final_rollout(stubs, "m")).phase == pb.ROLLOUT_PHASE_SUCCEEDED
        bad = await deploy(stubs, "m", 2)
        rollout = await final_rollout(stubs, "m", bad.deployment.generation)
        assert rollout.phase == pb.ROLLOUT_PHASE_FAILED, rollout
        assert "w1" in rollout.message and "cannot parse" in rollout.message
        assert rollout.restored_generation == bad.deployment.generation + 1
        got = await stubs.deployments.GetDeployment(dpb.GetDeploymentRequest(model="m"))
        assert got.deployment.spec.stable_version == 1 and got.deployment.history[-2].failed
        assert got.deployment.history[-1].reason == "auto-rollback"
        assert w.host.routes == {"m": Route(1)}  # v1 served throughout
        async with asyncio.timeout(WAIT):  # the worker acknowledges the restored generation
            while True:
                info = (await stubs.workers.ListWorkers(workers_pb2.ListWorkersRequest())).workers[0]
                if info.models and info.models[0].generation == rollout.restored_generation:
                    break
                await asyncio.sleep(0.02)
        assert info.models[0].ok and w.host.routes == {"m": Route(1)} and w.host.versions("m") == [1]
        assert cp.registry.get_sample_value("lmaas_control_rollouts_total", {"outcome": "failed"}) == 1.0
        # a later rollback skips the failed record: nothing good to go back to
        reply = await stubs.deployments.Rollback(dpb.RollbackRequest(model="m", to_version=1))
        assert reply.deployment.spec.stable_version == 1


async def test_nack_of_first_deploy_unserves_the_model(stubs: Stubs, cp: ControlPlane, tmp_path: Path) -> None:
    await push(stubs, "m", b"corrupt")
    async with worker(address(cp), tmp_path) as w:
        await deploy(stubs, "m", 1)
        assert (await final_rollout(stubs, "m")).phase == pb.ROLLOUT_PHASE_FAILED
        got = await stubs.deployments.GetDeployment(dpb.GetDeploymentRequest(model="m"))
        assert got.deployment.spec.stable_version == 0
        assert w.host.routes == {}


async def test_reconnect_reports_held_and_reloads_nothing(
    stubs: Stubs, cp: ControlPlane, tmp_path: Path
) -> None:
    await versions(stubs, 1)
    host = FakeHost()
    async with worker(address(cp), tmp_path, host=host):
        await deploy(stubs, "m", 1)
        assert (await final_rollout(stubs, "m")).phase == pb.ROLLOUT_PHASE_SUCCEEDED
    assert host.loads == [("m", 1)]
    async with worker(address(cp), tmp_path, host=host) as w:  # a new Syncer (process restart) on the same host
        await eventually(lambda: w.syncer.applied_revision > 0)
        info = (await stubs.workers.ListWorkers(workers_pb2.ListWorkersRequest())).workers[0]
        assert [(h.model, h.version) for h in info.held] == [("m", 1)]
    assert host.loads == [("m", 1)]


async def test_worker_keeps_serving_while_control_plane_is_down(
    store: Store, tmp_path: Path
) -> None:
    async with running(store, tmp_path) as cp1:
        port = cp1.grpc_port
        async with channel(cp1) as ch:
            s = Stubs(ch)
            await versions(s, 2)
            host = FakeHost()
            async with worker(address(cp1), tmp_path, host=host) as w:
                await deploy(s, "m", 1)
                assert (await final_rollout(s, "m")).phase == pb.ROLLOUT_PHASE_SUCCEEDED
                await cp1.stop(grace=0.1)
                await asyncio.sleep(0.3)
                assert host.routes == {"m": Route(1)}  # still serving
                async with running(store, tmp_path, grpc_port=port) as cp2, channel(cp2) as ch2:
                    s2 = Stubs(ch2)
                    await eventually(lambda: cp2.metrics.connected_workers._value.get() == 1)
                    await deploy(s2, "m", 2)
                    assert (await final_rollout(s2, "m")).phase == pb.ROLLOUT_PHASE_SUCCEEDED
                    assert w.host.routes == {"m": Route(2)}


async def test_two_replicas_on_one_store_both_push(store: Store, tmp_path: Path, open_store: StoreFactory) -> None:
    second = await open_store()  # another connection to the same store, as another process would have
    async with (
        running(store, tmp_path, replica_id="cp-a") as a,
        running(second, tmp_path, replica_id="cp-b") as b,
        channel(a) as ca,
    ):
        sa = Stubs(ca)
        await versions(sa, 2)
        async with worker(address(a), tmp_path, "wa") as wa, worker(address(b), tmp_path, "wb") as wb:
            await eventually(lambda: a.metrics.connected_workers._value.get() == 1)
            await eventually(lambda: b.metrics.connected_workers._value.get() == 1)
            reply = await deploy(sa, "m", 1)  # written through replica a only
            rollout = await final_rollout(sa, "m", reply.deployment.generation)
            assert rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED
            assert sorted(x.worker_id for x in rollout.workers) == ["wa", "wb"]
            assert wa.host.routes == wb.host.routes == {"m": Route(1)}
            await deploy(sa, "m", 2)
            await final_rollout(sa, "m")
            assert wb.host.routes == {"m": Route(2)}
            listed = await sa.workers.ListWorkers(workers_pb2.ListWorkersRequest())
            info = {w.worker_id: w for w in listed.workers}
            assert (info["wa"].control_plane, info["wb"].control_plane) == ("cp-a", "cp-b")


async def test_failover_to_the_next_address(store: Store, tmp_path: Path, open_store: StoreFactory) -> None:
    second = await open_store()
    async with (
        running(store, tmp_path, replica_id="cp-a") as a,
        running(second, tmp_path, replica_id="cp-b") as b,
        channel(b) as cb,
    ):
        sb = Stubs(cb)
        await versions(sb, 2)
        async with worker([address(a), address(b)], tmp_path) as w:
            await eventually(lambda: a.metrics.connected_workers._value.get() == 1)
            await deploy(sb, "m", 1)
            await eventually(lambda: w.host.routes == {"m": Route(1)})
            await a.stop(grace=0.1)  # the worker moves to b
            await eventually(lambda: b.metrics.connected_workers._value.get() == 1)
            await deploy(sb, "m", 2)
            assert (await final_rollout(sb, "m")).phase == pb.ROLLOUT_PHASE_SUCCEEDED
            assert w.host.routes == {"m": Route(2)}


async def test_pools_select_deployments(stubs: Stubs, cp: ControlPlane, tmp_path: Path) -> None:
    await versions(stubs, 1, "gpu-model")
    await versions(stubs, 1, "cpu-model")
    async with worker(address(cp), tmp_path, "g", pool="gpu") as g, worker(address(cp), tmp_path, "c") as c:
        spec = pb.DeploymentSpec(stable_version=1, pools=["gpu"])
        await stubs.deployments.Deploy(dpb.DeployRequest(model="gpu-model", spec=spec))
        rollout = await final_rollout(stubs, "gpu-model")
        assert [x.worker_id for x in rollout.workers] == ["g"] and rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED
        await deploy(stubs, "cpu-model", 1)
        assert (await final_rollout(stubs, "cpu-model")).phase == pb.ROLLOUT_PHASE_SUCCEEDED
        assert set(g.host.routes) == {"gpu-model", "cpu-model"} and set(c.host.routes) == {"cpu-model"}


async def test_rollout_waits_for_every_worker(stubs: Stubs, cp: ControlPlane, tmp_path: Path) -> None:
    await versions(stubs, 1)
    slow = FakeHost(load_delay=0.6)
    async with worker(address(cp), tmp_path, "fast"), worker(address(cp), tmp_path, "slow", host=slow):
        await eventually(lambda: cp.metrics.connected_workers._value.get() == 2)
        await deploy(stubs, "m", 1)
        states = []
        async with asyncio.timeout(WAIT):
            async for update in stubs.deployments.WatchRollout(dpb.WatchRolloutRequest(model="m")):
                states.append({x.worker_id: x.state for x in update.rollout.workers})
        assert states[-1] == {"fast": pb.WORKER_ROLLOUT_STATE_ACKED, "slow": pb.WORKER_ROLLOUT_STATE_ACKED}
        assert any(s.get("slow") == pb.WORKER_ROLLOUT_STATE_PENDING for s in states)
        assert slow.routes == {"m": Route(1)}


async def test_watch_reports_superseded(stubs: Stubs, cp: ControlPlane, tmp_path: Path) -> None:
    await versions(stubs, 2)
    slow = FakeHost(load_delay=1.0)
    async with worker(address(cp), tmp_path, host=slow):
        await eventually(lambda: cp.metrics.connected_workers._value.get() == 1)
        first = await deploy(stubs, "m", 1)
        await deploy(stubs, "m", 2)
        rollout = await final_rollout(stubs, "m", first.deployment.generation)
        assert rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED or rollout.phase == pb.ROLLOUT_PHASE_SUPERSEDED


async def test_corrupt_cache_is_downloaded_again(stubs: Stubs, cp: ControlPlane, tmp_path: Path) -> None:
    data = b"weights of version 1"
    await push(stubs, "m", data)
    host = FakeHost()
    async with worker(address(cp), tmp_path, host=host) as w:
        await deploy(stubs, "m", 1)
        await final_rollout(stubs, "m")
        path = w.syncer.cache.path(sha(data), "onnx")
        assert path.read_bytes() == data and path.name == "model.onnx"
    path.write_bytes(b"bit rot")
    host.models.clear()  # the worker restarted: nothing loaded, a corrupt file in the cache
    async with worker(address(cp), tmp_path, host=host) as w:
        await eventually(lambda: host.routes == {"m": Route(1)})
        assert host.models["m", 1][1] == data and path.read_bytes() == data


async def test_partial_download_resumes(stubs: Stubs, cp: ControlPlane, tmp_path: Path) -> None:
    data = bytes(range(256)) * 20_000  # 5 MB: several chunks
    await push(stubs, "m", data)
    from lmaas.server.artifact_cache import ArtifactCache

    cache = ArtifactCache(tmp_path / "cache-w1")
    partial = cache.path(sha(data), "onnx").with_suffix(".onnx.partial")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:1_234_567])
    async with worker(address(cp), tmp_path) as w:
        await deploy(stubs, "m", 1)
        assert (await final_rollout(stubs, "m")).phase == pb.ROLLOUT_PHASE_SUCCEEDED
        assert w.host.models["m", 1][1] == data
    assert not partial.exists()


async def test_sync_protocol_errors(stubs: Stubs) -> None:
    async def only(*messages: sync_pb2.WorkerMessage):  # type: ignore[no-untyped-def]
        for m in messages:
            yield m

    for messages in [
        [sync_pb2.WorkerMessage(ack=sync_pb2.Ack())],
        [sync_pb2.WorkerMessage(hello=sync_pb2.Hello(worker_id="bad/id"))],
        [sync_pb2.WorkerMessage(hello=sync_pb2.Hello(worker_id="w"))] * 2,
    ]:
        call = stubs.sync.Sync(only(*messages))
        try:
            async with asyncio.timeout(WAIT):
                async for _ in call:
                    pass
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
        else:
            raise AssertionError("stream ended without an error")
