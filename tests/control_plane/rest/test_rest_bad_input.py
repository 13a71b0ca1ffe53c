"""Bad input gets a precise 4xx as problem+json, stores nothing, and the server keeps serving: malformed JSON,
schema mismatches, wrong media types, oversize bodies (declared or streamed), bad upload headers, digest
mismatches, unsatisfiable ranges."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import client
from cp_harness import running
from lmaas.control_plane.app import ControlPlane
from lmaas.control_plane.rest.app import MAX_JSON_BYTES
from lmaas.control_plane.store.sqlite import SqliteStore

DATA = bytes(range(256)) * 40
SHA = hashlib.sha256(DATA).hexdigest()
UPLOAD = {"X-LMaaS-Format": "onnx", "X-LMaaS-Sha256": SHA}


def problem(reply: httpx.Response, status: int, code: str) -> str:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/problem+json")
    body = reply.json()
    assert body["status"] == status and body["code"] == code
    return str(body["detail"])


async def still_serving(admin: httpx.AsyncClient) -> None:
    assert (await admin.get("/api/v1/models")).status_code == 200


@pytest.mark.parametrize(("body", "status", "needle"), [
    (b"{not json", 400, "not valid JSON"),
    (b'{"version": "two"}', 422, "version"),
    (b'{"version": 0}', 422, "version"),
    (b'{"version": 1, "canary": {"version": 2, "weight": 101}}', 422, "weight"),
    (b'{"version": 1, "surprise": true}', 422, "surprise"),
    (b"[1, 2]", 422, "body"),
    (b"", 422, "body"),
])
async def test_bad_json_bodies(admin: httpx.AsyncClient, body: bytes, status: int, needle: str) -> None:
    reply = await admin.put("/api/v1/deployments/demo", content=body, headers={"content-type": "application/json"})
    assert needle in problem(reply, status, "INVALID_ARGUMENT")
    assert isinstance(reply.json()["errors"], list) and reply.json()["errors"]
    await still_serving(admin)


async def test_core_validation_is_400(admin: httpx.AsyncClient) -> None:
    await admin.post("/api/v1/models/demo/versions", content=DATA, headers=UPLOAD)
    reply = await admin.put("/api/v1/deployments/demo", json={"version": 1, "canary": {"version": 1, "weight": 5}})
    assert "also the stable version" in problem(reply, 400, "INVALID_ARGUMENT")
    reply = await admin.post("/api/v1/models", json={"name": "../etc"})
    assert problem(reply, 422, "INVALID_ARGUMENT")  # the schema's name pattern
    reply = await admin.post("/api/v1/models", json={"name": "demo"})
    problem(reply, 409, "ALREADY_EXISTS")
    missing = await admin.get("/api/v1/models/nope")
    problem(missing, 404, "NOT_FOUND")  # and the exact error, as gRPC's rich status carries it
    assert missing.json()["reason"] == "MODEL_NOT_FOUND" and missing.json()["metadata"]["name"] == "nope"
    missing = await admin.get("/api/v1/models/demo/versions/7")
    problem(missing, 404, "NOT_FOUND")
    assert missing.json()["metadata"] == {"name": "demo", "version": "7"}
    problem(await admin.post("/api/v1/deployments/demo/rollback"), 409, "FAILED_PRECONDITION")


async def test_wrong_media_type_is_415(admin: httpx.AsyncClient) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        reply = await admin.put("/api/v1/deployments/demo", content=b'{"version": 1}',
                                headers={"content-type": content_type})
        assert content_type.split(";")[0] in problem(reply, 415, "INVALID_ARGUMENT")
    await still_serving(admin)


async def test_oversize_json_is_413_declared_or_streamed(admin: httpx.AsyncClient) -> None:
    big = b'{"version": 1, "pools": ["' + b"a" * MAX_JSON_BYTES + b'"]}'
    problem(await admin.put("/api/v1/deployments/demo", content=big, headers={"content-type": "application/json"}),
            413, "RESOURCE_EXHAUSTED")

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 1 << 16):
            yield big[i : i + (1 << 16)]

    reply = await admin.put("/api/v1/deployments/demo", content=chunked(), headers={"content-type": "application/json"})
    problem(reply, 413, "RESOURCE_EXHAUSTED")
    await still_serving(admin)


async def test_oversize_artifact_is_413_and_nothing_is_stored(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "small.db")
    try:
        async with running(store, tmp_path, http_port=0, max_artifact_bytes=4096) as cp, client(cp) as admin:
            reply = await admin.post("/api/v1/models/demo/versions", content=DATA, headers=UPLOAD)
            assert "4096" in problem(reply, 413, "RESOURCE_EXHAUSTED")
            assert not cp.artifacts.exists(SHA) and cp.artifacts.upload_offset(SHA) == 0
            problem(await admin.get("/api/v1/models/demo"), 404, "NOT_FOUND")
            small = b"small enough"
            ok = await admin.post("/api/v1/models/demo/versions", content=small,
                                  headers={**UPLOAD, "X-LMaaS-Sha256": hashlib.sha256(small).hexdigest()})
            assert ok.status_code == 201
    finally:
        await store.close()


async def test_digest_mismatch_is_400_and_nothing_is_stored(plane: ControlPlane, admin: httpx.AsyncClient) -> None:
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    reply = await admin.post("/api/v1/models/demo/versions", content=DATA, headers={**UPLOAD, "X-LMaaS-Sha256": wrong})
    assert "digest mismatch" in problem(reply, 400, "DATA_LOSS")
    assert not plane.artifacts.exists(wrong) and not plane.artifacts.exists(SHA)
    assert plane.artifacts.upload_offset(wrong) == 0  # the partial file is gone
    problem(await admin.get("/api/v1/models/demo"), 404, "NOT_FOUND")
    status = (await admin.get(f"/api/v1/uploads/{wrong}")).json()
    assert status == {"digest": wrong, "exists": False, "offset": 0}
    assert (await admin.post("/api/v1/models/demo/versions", content=DATA, headers=UPLOAD)).status_code == 201


@pytest.mark.parametrize(("headers", "status", "needle"), [
    ({"X-LMaaS-Format": "onnx"}, 422, "X-LMaaS-Sha256"),
    ({"X-LMaaS-Sha256": SHA}, 422, "X-LMaaS-Format"),
    ({**UPLOAD, "X-LMaaS-Sha256": "ABC"}, 400, "sha256"),
    ({**UPLOAD, "X-LMaaS-Format": "pickle"}, 400, "format"),
    ({**UPLOAD, "X-LMaaS-Offset": "-1"}, 422, "X-LMaaS-Offset"),
    ({**UPLOAD, "X-LMaaS-Offset": "99"}, 409, "resume"),
    ({**UPLOAD, "X-LMaaS-Size": "5"}, 400, "more than"),
    ({**UPLOAD, "X-LMaaS-Parent-Version": "3"}, 409, "parent"),
    ({**UPLOAD, "X-LMaaS-Config": "{not json"}, 400, "config"),
])
async def test_bad_upload_headers(
    plane: ControlPlane, admin: httpx.AsyncClient, headers: dict[str, str], status: int, needle: str
) -> None:
    reply = await admin.post("/api/v1/models/demo/versions", content=DATA, headers=headers)
    assert reply.status_code == status, reply.text
    assert needle.lower() in reply.json()["detail"].lower()
    assert (await admin.get("/api/v1/models/demo")).status_code == 404
    await still_serving(admin)


async def test_download_whole_and_ranged(admin: httpx.AsyncClient) -> None:
    await admin.post("/api/v1/models/demo/versions", content=DATA, headers=UPLOAD)
    whole = await admin.get("/api/v1/models/demo/versions/1/artifact")
    assert whole.status_code == 200 and whole.content == DATA and whole.headers["etag"] == f'"{SHA}"'
    part = await admin.get("/api/v1/models/demo/versions/1/artifact", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == DATA[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(DATA)}"
    tail = await admin.get("/api/v1/models/demo/versions/1/artifact", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == DATA[-10:]
    for bad in (f"bytes={len(DATA)}-", "bytes=5-1", "lines=1-2", "bytes=0-1,4-5"):
        reply = await admin.get("/api/v1/models/demo/versions/1/artifact", headers={"Range": bad})
        problem(reply, 416, "INVALID_ARGUMENT")
