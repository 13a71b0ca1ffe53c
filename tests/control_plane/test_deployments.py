"""Deployments over real gRPC and a real store: validation, history, rollback, concurrency, no half-writes."""

from __future__ import annotations

import asyncio

import grpc
from cp_harness import Stubs, deploy, expect_status, push
from lmaas.control_plane import keys
from lmaas.control_plane.app import ControlPlane
from lmaas.protos.lmaas.control.v1 import deployments_pb2 as dpb
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

pytest_plugins = ["cp_fixtures"]  # cp, stubs


async def three_versions(stubs: Stubs, name: str = "m") -> None:
    for i in range(3):
        await push(stubs, name, f"version {i + 1}".encode())


async def test_deploy_without_workers_succeeds_at_once(stubs: Stubs, cp: ControlPlane) -> None:
    await three_versions(stubs)
    reply = await deploy(stubs, "m", 1)
    assert reply.deployment.generation == 1 and reply.deployment.spec.stable_version == 1
    assert reply.rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED and reply.rollout.message == "no worker connected"
    assert reply.revision > 0
    got = await stubs.deployments.GetDeployment(dpb.GetDeploymentRequest(model="m"))
    assert got.deployment == reply.deployment
    assert cp.registry.get_sample_value("lmaas_control_rollouts_total", {"outcome": "succeeded"}) == 1.0


async def test_deploy_of_missing_model_or_version_is_not_found(stubs: Stubs) -> None:
    await expect_status(grpc.StatusCode.NOT_FOUND, deploy(stubs, "nope", 1))
    await push(stubs, "m", b"1")
    details = await expect_status(grpc.StatusCode.NOT_FOUND, deploy(stubs, "m", 5))
    assert "version 5" in details
    await expect_status(grpc.StatusCode.NOT_FOUND, deploy(stubs, "m", 1, canary=9, weight=10))
    await expect_status(
        grpc.StatusCode.NOT_FOUND, stubs.deployments.GetDeployment(dpb.GetDeploymentRequest(model="m"))
    )


async def test_invalid_specs_are_invalid_argument(stubs: Stubs) -> None:
    await three_versions(stubs)
    for stable, canary, weight in [(0, 0, 0), (1, 2, 101), (1, 0, 30), (1, 1, 30), (1, 2, -1)]:
        await expect_status(grpc.StatusCode.INVALID_ARGUMENT, deploy(stubs, "m", stable, canary, weight))


async def test_history_and_rollback(stubs: Stubs, cp: ControlPlane) -> None:
    await three_versions(stubs)
    await deploy(stubs, "m", 1)
    await deploy(stubs, "m", 2, canary=3, weight=30)
    await deploy(stubs, "m", 3)
    back = await stubs.deployments.Rollback(dpb.RollbackRequest(model="m"))
    assert (back.deployment.spec.stable_version, back.deployment.spec.canary_version) == (2, 3)
    assert back.deployment.spec.canary_weight == 30 and back.deployment.generation == 4
    assert back.rollout.reason == "rollback"
    again = await stubs.deployments.Rollback(dpb.RollbackRequest(model="m"))
    assert again.deployment.spec.stable_version == 3  # like `kubectl rollout undo`: back and forth
    to = await stubs.deployments.Rollback(dpb.RollbackRequest(model="m", to_version=1))
    assert to.deployment.spec == pb.DeploymentSpec(stable_version=1)
    assert [(r.generation, r.reason) for r in to.deployment.history] == [
        (1, "deploy"), (2, "deploy"), (3, "deploy"), (4, "rollback"), (5, "rollback"), (6, "rollback"),
    ]
    assert cp.registry.get_sample_value("lmaas_control_rollouts_total", {"outcome": "rolled_back"}) == 3.0
    to_missing = dpb.RollbackRequest(model="m", to_version=9)
    await expect_status(grpc.StatusCode.NOT_FOUND, stubs.deployments.Rollback(to_missing))


async def test_rollback_without_history_is_failed_precondition(stubs: Stubs) -> None:
    await three_versions(stubs)
    await expect_status(grpc.StatusCode.FAILED_PRECONDITION, stubs.deployments.Rollback(dpb.RollbackRequest(model="m")))
    await deploy(stubs, "m", 1)
    await expect_status(grpc.StatusCode.FAILED_PRECONDITION, stubs.deployments.Rollback(dpb.RollbackRequest(model="m")))
    await expect_status(grpc.StatusCode.NOT_FOUND, stubs.deployments.Rollback(dpb.RollbackRequest(model="zz")))


async def test_expected_generation_guards_against_lost_updates(stubs: Stubs) -> None:
    await three_versions(stubs)
    await deploy(stubs, "m", 1, expected_generation=-1)
    await expect_status(grpc.StatusCode.ABORTED, deploy(stubs, "m", 2, expected_generation=-1))
    await expect_status(grpc.StatusCode.ABORTED, deploy(stubs, "m", 2, expected_generation=7))
    ok = await deploy(stubs, "m", 2, expected_generation=1)
    assert ok.deployment.generation == 2


async def test_concurrent_deploys_never_half_write(stubs: Stubs, cp: ControlPlane) -> None:
    await three_versions(stubs)
    results = await asyncio.gather(
        *(deploy(stubs, "m", 1 + i % 3) for i in range(12)), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, dpb.DeployResponse)]
    lost = [r for r in results if not isinstance(r, dpb.DeployResponse)]
    assert won, results
    for exc in lost:
        assert isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.ABORTED, exc
    final = await stubs.deployments.GetDeployment(dpb.GetDeploymentRequest(model="m"))
    deployment = final.deployment
    # every success wrote exactly one generation and one history record, atomically with its rollout
    assert deployment.generation == len(won) == len(deployment.history)
    assert sorted(r.deployment.generation for r in won) == list(range(1, len(won) + 1))
    assert final.rollout.generation == deployment.generation
    assert deployment.spec == deployment.history[-1].spec
    kv = await cp.store.get(keys.rollout("m"))
    assert kv is not None and pb.Rollout.FromString(kv.value).spec == deployment.spec


async def test_list_deployments(stubs: Stubs) -> None:
    await three_versions(stubs, "b")
    await three_versions(stubs, "a")
    await deploy(stubs, "b", 2)
    await deploy(stubs, "a", 1, canary=2, weight=5)
    listed = await stubs.deployments.ListDeployments(dpb.ListDeploymentsRequest())
    assert [d.model for d in listed.deployments] == ["a", "b"]
    assert [r.model for r in listed.rollouts] == ["a", "b"]
