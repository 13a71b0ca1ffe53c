"""Artifact upload and download: verification, resume, truncation, limits, dedup; nothing half-written."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cp_harness import Stubs, expect_status, push, sha, version_requests
from lmaas.control_plane.app import ControlPlane
from lmaas.control_plane.artifacts import ArtifactStore
from lmaas.protos.errors import Aborted, DataLoss, FailedPrecondition, InvalidArgument, ResourceExhausted
from lmaas.protos.lmaas.control.v1 import registry_pb2
from lmaas.protos.lmaas.worker.v1 import artifacts_pb2

DATA = os.urandom(10_000)

pytest_plugins = ["cp_fixtures"]  # cp, stubs


async def chunks(data: bytes, size: int = 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


# -- the store itself --------------------------------------------------------------------------------------------


async def test_store_verifies_and_publishes_atomically(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, max_bytes=1 << 20)
    assert await store.receive(sha(DATA), len(DATA), 0, chunks(DATA)) is False
    assert store.path(sha(DATA)).read_bytes() == DATA
    assert await store.receive(sha(DATA), len(DATA), 0, chunks(b"never read")) is True  # dedup
    assert list((tmp_path / "uploads").iterdir()) == []
    pieces = [p async for p in store.read(sha(DATA), 9000, chunk_size=600)]
    assert [o for o, _ in pieces] == [9000, 9600] and b"".join(d for _, d in pieces) == DATA[9000:]


async def test_store_rejects_mismatch_surplus_and_limits(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, max_bytes=5000)
    small = DATA[:4000]
    with pytest.raises(DataLoss):
        await store.receive(sha(b"other"), len(small), 0, chunks(small))
    assert not store.exists(sha(b"other")) and store.upload_offset(sha(b"other")) == 0
    with pytest.raises(InvalidArgument, match="more than"):
        await store.receive(sha(small), 100, 0, chunks(small))
    with pytest.raises(ResourceExhausted):
        await store.receive(sha(DATA), len(DATA), 0, chunks(DATA))
    with pytest.raises(InvalidArgument, match="digest"):
        store.path("../../etc/passwd")


async def test_store_keeps_truncated_upload_for_resume(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, max_bytes=1 << 20)
    with pytest.raises(InvalidArgument, match="truncated"):
        await store.receive(sha(DATA), len(DATA), 0, chunks(DATA[:3000]))
    assert store.upload_offset(sha(DATA)) == 3000 and not store.exists(sha(DATA))
    with pytest.raises(FailedPrecondition):
        await store.receive(sha(DATA), len(DATA), 5000, chunks(DATA[5000:]))
    assert await store.receive(sha(DATA), len(DATA), 3000, chunks(DATA[3000:])) is False
    assert store.path(sha(DATA)).read_bytes() == DATA


async def test_concurrent_uploads_of_one_digest_are_excluded(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, max_bytes=1 << 20)
    gate = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield DATA[:10]
        await gate.wait()
        yield DATA[10:]

    first = asyncio.create_task(store.receive(sha(DATA), len(DATA), 0, slow()))
    await asyncio.sleep(0.1)
    with pytest.raises(Aborted):
        await store.receive(sha(DATA), len(DATA), 0, chunks(DATA))
    gate.set()
    assert await first is False and store.exists(sha(DATA))


# -- through gRPC ------------------------------------------------------------------------------------------------


async def test_digest_mismatch_is_data_loss_and_writes_nothing(stubs: Stubs, cp: ControlPlane) -> None:
    requests = version_requests("m", DATA, digest=sha(b"something else"))
    await expect_status(grpc.StatusCode.DATA_LOSS, stubs.registry.CreateVersion(iter(requests)))
    await expect_status(grpc.StatusCode.NOT_FOUND, stubs.registry.GetModel(registry_pb2.GetModelRequest(name="m")))
    assert list((cp.settings.artifact_dir / "sha256").iterdir()) == []


async def test_truncated_upload_resumes(stubs: Stubs) -> None:
    requests = version_requests("m", DATA)
    details = await expect_status(grpc.StatusCode.INVALID_ARGUMENT, stubs.registry.CreateVersion(iter(requests[:4])))
    assert "truncated" in details
    await expect_status(grpc.StatusCode.NOT_FOUND, stubs.registry.GetModel(registry_pb2.GetModelRequest(name="m")))
    status = await stubs.registry.GetUploadStatus(registry_pb2.GetUploadStatusRequest(digest=sha(DATA)))
    assert not status.exists and status.offset == 3000
    version = await push(stubs, "m", DATA, offset=status.offset)
    assert version.version == 1 and version.size_bytes == len(DATA)


async def test_oversized_upload_is_resource_exhausted(stubs: Stubs) -> None:
    await expect_status(
        grpc.StatusCode.RESOURCE_EXHAUSTED, push(stubs, "m", b"x", size=1 << 40)
    )


async def test_header_twice_is_invalid_argument(stubs: Stubs) -> None:
    requests = version_requests("m", DATA)
    twice = iter([requests[0], requests[0]])
    await expect_status(grpc.StatusCode.INVALID_ARGUMENT, stubs.registry.CreateVersion(twice))


async def test_download_with_resume_offset(stubs: Stubs) -> None:
    await push(stubs, "m", DATA)
    got = [c async for c in stubs.artifacts.Download(artifacts_pb2.DownloadRequest(digest=sha(DATA), offset=4321))]
    assert got[0].offset == 4321 and got[0].total_size == len(DATA)
    assert b"".join(c.data for c in got) == DATA[4321:]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stubs.artifacts.Download(artifacts_pb2.DownloadRequest(digest=sha(b"unknown"))):
            pass
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stubs.artifacts.Download(artifacts_pb2.DownloadRequest(digest="../../x")):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
