"""Directory versions (format llm) over REST, as over gRPC: each file is stored with PUT /api/v1/artifacts/
{digest} (UploadArtifact), then the manifest is pushed as the version; a manifest naming a file that is not
uploaded is refused and nothing is registered."""

from __future__ import annotations

import hashlib

import httpx
from lmaas.control_plane.app import ControlPlane
from lmaas.protos.manifests import Manifest, ManifestFile

FILES = {"config.json": b'{"layers": 1}', "tokenizer.json": b'{"vocab": {}}', "weights/model.safetensors": b"\0" * 999}


def manifest() -> Manifest:
    return Manifest.of("llm", [ManifestFile(path, hashlib.sha256(data).hexdigest(), len(data))
                               for path, data in FILES.items()])


async def push_manifest(admin: httpx.AsyncClient, m: Manifest) -> httpx.Response:
    data = m.to_bytes()
    return await admin.post("/api/v1/models/tiny-llm/versions", content=data,
                            headers={"X-LMaaS-Format": "llm", "X-LMaaS-Sha256": m.digest})


async def test_files_then_manifest(plane: ControlPlane, admin: httpx.AsyncClient) -> None:
    m = manifest()
    for data in FILES.values():
        digest = hashlib.sha256(data).hexdigest()
        stored = await admin.put(f"/api/v1/artifacts/{digest}", content=data)
        assert stored.status_code == 200, stored.text
        assert stored.json() == {"digest": digest, "size_bytes": len(data), "deduplicated": False}
    again = await admin.put(f"/api/v1/artifacts/{hashlib.sha256(FILES['config.json']).hexdigest()}",
                            content=FILES["config.json"])
    assert again.json()["deduplicated"] is True
    pushed = await push_manifest(admin, m)
    assert pushed.status_code == 201, pushed.text
    body = pushed.json()
    assert (body["version"], body["format"], body["digest"], body["size_bytes"]) == (1, "llm", m.digest, m.total_size)
    whole = await admin.get("/api/v1/models/tiny-llm/versions/1/artifact")
    assert Manifest.parse(whole.content) == m


async def test_a_manifest_naming_a_missing_file_is_refused(plane: ControlPlane, admin: httpx.AsyncClient) -> None:
    m = manifest()
    reply = await push_manifest(admin, m)
    assert reply.status_code == 409 and reply.json()["code"] == "FAILED_PRECONDITION"
    assert "upload it first" in reply.json()["detail"]
    assert not plane.artifacts.exists(m.digest)
    assert (await admin.get("/api/v1/models/tiny-llm")).status_code == 404
    wrong = await admin.put(f"/api/v1/artifacts/{'0' * 64}", content=b"not those bytes")
    assert wrong.status_code == 400 and wrong.json()["code"] == "DATA_LOSS"
