"""Eviction of directory versions (format ``llm``) from a size-bounded cache: a version's folder goes first, then
the blobs no other version links; a blob two versions share stays while either is cached. Real control plane,
real ArtifactCache."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path

from cp_harness import ADMIN_TOKEN, address, channel
from lmaas.client.control import ControlPlaneClient
from lmaas.control_plane.app import ControlPlane
from lmaas.protos.lmaas.control.v1 import resources_pb2
from lmaas.protos.lmaas.worker.v1 import artifacts_pb2_grpc
from lmaas.protos.manifests import scan_directory
from lmaas.server.artifact_cache import ArtifactCache, evict

pytest_plugins = ["cp_fixtures"]  # cp, stubs

TOKENIZER = json.dumps({"model": {"vocab": {str(i): i for i in range(500)}}}).encode()


def write_version(root: Path, weights: bytes) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text("{}")
    (root / "tokenizer.json").write_bytes(TOKENIZER)  # the same bytes in both versions: one blob
    (root / "weights").mkdir()
    (root / "weights" / "model.safetensors").write_bytes(weights)
    return root


async def push(cp: ControlPlane, name: str, path: Path) -> resources_pb2.ModelVersion:
    def run() -> resources_pb2.ModelVersion:
        with ControlPlaneClient(address(cp), token=ADMIN_TOKEN) as c:
            return c.upload(name, path).version

    return await asyncio.to_thread(run)


def blob(cache: ArtifactCache, data: bytes) -> Path:
    return cache.blob_path(hashlib.sha256(data).hexdigest())


async def test_directory_versions_evict_folder_then_unshared_blobs(cp: ControlPlane, tmp_path: Path) -> None:
    w1, w2 = os.urandom(300_000), os.urandom(300_000)
    v1 = await push(cp, "llm", write_version(tmp_path / "v1", w1))
    v2 = await push(cp, "llm", write_version(tmp_path / "v2", w2))
    cache = ArtifactCache(tmp_path / "cache")
    async with channel(cp) as ch:
        stub = artifacts_pb2_grpc.ArtifactsStub(ch)
        p1 = await cache.fetch(stub, v1.digest, "llm", v1.size_bytes)
        p2 = await cache.fetch(stub, v2.digest, "llm", v2.size_bytes)
        assert cache.leased() == {v1.digest, v2.digest}  # the blobs were leased only while the folders were built
        await cache.release(v1.digest)
        evict(cache.root, 400_000)  # room for one version
        assert not p1.exists() and not blob(cache, w1).exists()  # the folder, then its own weights
        assert blob(cache, TOKENIZER).exists() and blob(cache, w2).exists()  # v2 still links them
        assert scan_directory(p2)[0].digest == v2.digest
        evict(cache.root, 0)
        assert scan_directory(p2)[0].digest == v2.digest  # in use: kept whatever the size
        await cache.release(v2.digest)
        evict(cache.root, 0)
        assert not p2.exists() and not list((cache.root / "blobs").glob("*/*[0-9a-f]"))
        # a download a dead process left of a blob nobody fetches again goes too
        dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        await dead.wait()
        left = blob(cache, w2).with_name(f"{blob(cache, w2).name}.partial-{dead.pid}")
        left.write_bytes(w2[:1000])
        evict(cache.root, 0)
        assert not left.exists()
        again = await cache.fetch(stub, v1.digest, "llm", v1.size_bytes)  # evicted: fetched and built again
        assert (again / "weights" / "model.safetensors").read_bytes() == w1
