"""Untrusted input on the control plane: names that look like paths, oversized text, metadata, configs,
pools, worker reports and messages get INVALID_ARGUMENT / RESOURCE_EXHAUSTED, and nothing lands on disk or
in the store (``lmaas.control_plane.limits``)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from cp_harness import Stubs, channel, deploy, expect_status, push, running
from lmaas.control_plane import keys
from lmaas.control_plane.app import ControlPlane
from lmaas.control_plane.limits import MAX_CONFIG_BYTES, MAX_DESCRIPTION, MAX_HELD, MAX_METADATA_ENTRIES, MAX_POOLS
from lmaas.control_plane.store.base import Store
from lmaas.protos.lmaas.control.v1 import deployments_pb2 as dpb
from lmaas.protos.lmaas.control.v1 import registry_pb2
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from lmaas.protos.lmaas.worker.v1 import sync_pb2

pytest_plugins = ["cp_fixtures"]  # cp, stubs

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PATHISH = ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b", "-x", ".x", "x" * 129, "a\x00b", "m/versions/1"]


async def test_path_like_names_are_rejected_everywhere(stubs: Stubs, cp: ControlPlane) -> None:
    for name in PATHISH:
        await expect_status(INVALID, stubs.registry.CreateModel(registry_pb2.CreateModelRequest(name=name)))
        await expect_status(INVALID, stubs.registry.GetModel(registry_pb2.GetModelRequest(name=name)))
        await expect_status(INVALID, push(stubs, name, b"weights"))
        await expect_status(INVALID, deploy(stubs, name, 1))
    assert (await cp.store.range(keys.PREFIX + "models/")).kvs == []
    artifacts = cp.settings.artifact_dir
    assert sorted(p.name for p in artifacts.iterdir()) == ["sha256", "uploads"]
    assert not any(artifacts.parent.glob("etc")) and not list((artifacts / "sha256").iterdir())


async def test_model_description_and_metadata_are_bounded(stubs: Stubs) -> None:
    def create(**kw: object) -> object:
        return stubs.registry.CreateModel(registry_pb2.CreateModelRequest(name="m", **kw))  # type: ignore[arg-type]

    assert "limit is 4096" in await expect_status(INVALID, create(description="d" * (MAX_DESCRIPTION + 1)))
    many = {f"k{i}": "v" for i in range(MAX_METADATA_ENTRIES + 1)}
    await expect_status(INVALID, create(metadata=many))
    await expect_status(INVALID, create(metadata={"k": "v" * 1025}))
    await expect_status(INVALID, create(metadata={"k" * 129: "v"}))
    await expect_status(INVALID, create(metadata={"": "v"}))
    created = await create(description="d" * MAX_DESCRIPTION, metadata={f"k{i}": "v" * 1024 for i in range(64)})
    assert len(created.model.metadata) == 64  # type: ignore[attr-defined]


async def test_version_config_and_description_are_bounded(stubs: Stubs) -> None:
    big = json.dumps({"x": "y" * MAX_CONFIG_BYTES})
    assert "exceeds" in await expect_status(INVALID, push(stubs, "m", b"w", config_json=big))
    await expect_status(INVALID, push(stubs, "m", b"w", config_json="[1, 2]"))
    await expect_status(INVALID, push(stubs, "m", b"w", config_json="not json"))
    requests = [registry_pb2.CreateVersionRequest(header=registry_pb2.CreateVersionHeader(
        model="m", format="onnx", digest="0" * 64, size_bytes=1, description="d" * (MAX_DESCRIPTION + 1)))]
    await expect_status(INVALID, stubs.registry.CreateVersion(iter(requests)))  # type: ignore[arg-type]


async def test_deployment_pools_are_bounded(stubs: Stubs) -> None:
    await push(stubs, "m", b"w")
    for pools in (["p"] * (MAX_POOLS + 1), ["../p"]):
        request = dpb.DeployRequest(model="m", spec=pb.DeploymentSpec(stable_version=1, pools=pools))
        await expect_status(INVALID, stubs.deployments.Deploy(request))
    request = dpb.DeployRequest(model="m", spec=pb.DeploymentSpec(stable_version=1, pools=["p"] * MAX_POOLS))
    assert (await stubs.deployments.Deploy(request)).deployment.generation == 1


async def test_worker_reports_are_bounded(stubs: Stubs, cp: ControlPlane) -> None:
    for hello in (
        sync_pb2.Hello(worker_id="w", inference_address="a" * 300),
        sync_pb2.Hello(worker_id="w", held=[sync_pb2.Held(model="m", version=1)] * (MAX_HELD + 1)),
        sync_pb2.Hello(worker_id="w", held=[sync_pb2.Held(model="m" * 300, version=1)]),
        sync_pb2.Hello(worker_id="../w"),
        sync_pb2.Hello(worker_id="w", pool="a/b"),
    ):
        call = stubs.sync.Sync(iter([sync_pb2.WorkerMessage(hello=hello)]))
        await expect_status(INVALID, call.read())
    assert (await cp.store.range(keys.WORKERS)).kvs == []


async def test_messages_beyond_the_limit_are_resource_exhausted(store: Store, tmp_path: Path) -> None:
    async with running(store, tmp_path, max_message_bytes=1 << 20) as cp, channel(cp) as ch:
        stubs = Stubs(ch)
        huge = registry_pb2.CreateModelRequest(name="m", description="d" * (2 << 20))
        await expect_status(grpc.StatusCode.RESOURCE_EXHAUSTED, stubs.registry.CreateModel(huge))
        chunky = push(stubs, "m", b"x" * (2 << 20), chunk=2 << 20)  # one chunk of 2 MiB
        await expect_status(grpc.StatusCode.RESOURCE_EXHAUSTED, chunky)


@pytest.mark.parametrize("size", [-1, 1 << 40])
async def test_upload_sizes_are_checked_before_any_byte(stubs: Stubs, size: int) -> None:
    code = INVALID if size < 0 else grpc.StatusCode.RESOURCE_EXHAUSTED
    await expect_status(code, push(stubs, "m", b"x", size=size))
