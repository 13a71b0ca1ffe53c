"""ModelRegistry over real gRPC and a real store: versions, validation, statuses."""

from __future__ import annotations

import asyncio
import json

import grpc
from cp_harness import Stubs, expect_status, push, sha, version_requests
from lmaas.control_plane.app import ControlPlane
from lmaas.protos.lmaas.control.v1 import deployments_pb2, registry_pb2

NAME = registry_pb2.GetModelRequest

pytest_plugins = ["cp_fixtures"]  # cp, stubs


async def test_versions_are_assigned_increasing_and_immutable(stubs: Stubs) -> None:
    v1 = await push(stubs, "m", b"one", config_json=json.dumps({"max_batch_size": 4}))
    v2 = await push(stubs, "m", b"two", fmt="torchscript", parent=1)
    assert (v1.version, v2.version) == (1, 2)
    assert v2.parent_version == 1 and v2.format == "torchscript" and v2.digest == sha(b"two")
    listed = await stubs.registry.ListVersions(registry_pb2.ListVersionsRequest(model="m"))
    assert [v.version for v in listed.versions] == [1, 2]
    assert listed.revision > 0
    got = await stubs.registry.GetVersion(registry_pb2.GetVersionRequest(model="m", version=1))
    assert got.version == v1 and got.version.size_bytes == 3
    model = await stubs.registry.GetModel(NAME(name="m"))
    assert model.model.latest_version == 2


async def test_concurrent_pushes_get_distinct_numbers(stubs: Stubs) -> None:
    versions = await asyncio.gather(*(push(stubs, "c", f"blob {i}".encode()) for i in range(8)))
    assert sorted(v.version for v in versions) == list(range(1, 9))
    listed = await stubs.registry.ListVersions(registry_pb2.ListVersionsRequest(model="c"))
    assert len(listed.versions) == 8


async def test_same_bytes_are_stored_once(stubs: Stubs, cp: ControlPlane) -> None:
    await push(stubs, "a", b"shared")
    status = await stubs.registry.GetUploadStatus(registry_pb2.GetUploadStatusRequest(digest=sha(b"shared")))
    assert status.exists and status.offset == 6
    header_only = version_requests("b", b"shared")[:1]
    reply = await stubs.registry.CreateVersion(iter(header_only))
    assert reply.deduplicated and reply.version.version == 1
    assert len(list((cp.settings.artifact_dir / "sha256").rglob("*"))) == 2  # one directory, one blob


async def test_unknown_model_and_version_are_not_found(stubs: Stubs) -> None:
    await expect_status(grpc.StatusCode.NOT_FOUND, stubs.registry.GetModel(NAME(name="nope")))
    await expect_status(
        grpc.StatusCode.NOT_FOUND, stubs.registry.ListVersions(registry_pb2.ListVersionsRequest(model="nope"))
    )
    await push(stubs, "m", b"x")
    details = await expect_status(
        grpc.StatusCode.NOT_FOUND, stubs.registry.GetVersion(registry_pb2.GetVersionRequest(model="m", version=7))
    )
    assert "version 7" in details


async def test_bad_input_is_invalid_argument(stubs: Stubs) -> None:
    for kw, words in [
        ({"fmt": "pickle"}, "format"),
        ({"config_json": "{not json"}, "config"),
        ({"config_json": json.dumps({"max_batch_size": -1})}, "config"),
        ({"digest": "ABC"}, "digest"),
    ]:
        details = await expect_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            stubs.registry.CreateVersion(iter(version_requests("m", b"x", **kw))),  # type: ignore[arg-type]
        )
        assert words in details
    for name in ("../etc", "a/b", "", ".hidden", "x" * 200):
        await expect_status(
            grpc.StatusCode.INVALID_ARGUMENT, stubs.registry.CreateVersion(iter(version_requests(name, b"x")))
        )
    await expect_status(grpc.StatusCode.INVALID_ARGUMENT, stubs.registry.CreateVersion(iter([])))
    await expect_status(grpc.StatusCode.NOT_FOUND, stubs.registry.GetModel(NAME(name="m")))


async def test_missing_parent_is_failed_precondition(stubs: Stubs) -> None:
    await expect_status(grpc.StatusCode.FAILED_PRECONDITION, push(stubs, "m", b"x", parent=3))


async def test_create_model_and_list(stubs: Stubs) -> None:
    created = await stubs.registry.CreateModel(
        registry_pb2.CreateModelRequest(name="zeta", description="d", metadata={"team": "ml"})
    )
    assert created.model.metadata["team"] == "ml" and created.revision > 0
    await expect_status(
        grpc.StatusCode.ALREADY_EXISTS, stubs.registry.CreateModel(registry_pb2.CreateModelRequest(name="zeta"))
    )
    await push(stubs, "alpha", b"1")
    listed = await stubs.registry.ListModels(registry_pb2.ListModelsRequest())
    assert [m.name for m in listed.models] == ["alpha", "zeta"]


async def test_registering_never_changes_routing(stubs: Stubs) -> None:
    await push(stubs, "m", b"1")
    await expect_status(
        grpc.StatusCode.NOT_FOUND, stubs.deployments.GetDeployment(deployments_pb2.GetDeploymentRequest(model="m"))
    )


async def test_repeated_push_returns_the_same_version(stubs: Stubs) -> None:
    first = await stubs.registry.CreateVersion(iter(version_requests("m", b"same")))
    again = await stubs.registry.CreateVersion(iter(version_requests("m", b"same")))
    assert (first.existing, again.existing, again.deduplicated) == (False, True, True)
    assert again.version == first.version
    other_config = await stubs.registry.CreateVersion(iter(version_requests("m", b"same", config_json="{}")))
    assert other_config.version.version == 2 and not other_config.existing


async def test_store_outage_is_unavailable(stubs: Stubs, cp: ControlPlane) -> None:
    await cp.store.close()
    listing = stubs.registry.ListModels(registry_pb2.ListModelsRequest())
    assert await expect_status(grpc.StatusCode.UNAVAILABLE, listing)
