"""Resumable uploads over REST, on the gRPC registry's own protocol: a client cut off mid-body leaves what
arrived, GET /api/v1/uploads/{digest} says how much, and the next POST sends the rest from X-LMaaS-Offset.
The pieces come from a raw socket, so the cut is a real disconnect."""

from __future__ import annotations

import asyncio
import hashlib
import os

import httpx
from cp_harness import ADMIN_TOKEN
from lmaas.control_plane.app import ControlPlane

DATA = os.urandom(3 << 20)
SHA = hashlib.sha256(DATA).hexdigest()


async def cut_upload(cp: ControlPlane, sent: int) -> None:
    """POST the whole artifact's headers but only ``sent`` bytes of its body, then hang up."""
    _, writer = await asyncio.open_connection("127.0.0.1", cp.http_port)
    head = (f"POST /api/v1/models/big/versions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
            f"X-LMaaS-Format: onnx\r\nX-LMaaS-Sha256: {SHA}\r\nContent-Length: {len(DATA)}\r\n\r\n")
    writer.write(head.encode() + DATA[:sent])
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def audited_uploads(admin: httpx.AsyncClient) -> list[dict[str, object]]:
    entries = (await admin.get("/api/v1/audit")).json()["entries"]
    return [e for e in entries if str(e["method"]).endswith("/CreateVersion")]


async def test_interrupt_query_resume(plane: ControlPlane, admin: httpx.AsyncClient) -> None:
    sent = (1 << 20) + 12345
    await cut_upload(plane, sent)
    # the server saw the disconnect, kept what arrived, and finished the call (its audit entry is the proof)
    async with asyncio.timeout(15):
        while not (ended := await audited_uploads(admin)):
            await asyncio.sleep(0.05)
    assert ended[0]["code"] == "INVALID_ARGUMENT" and "truncated" in str(ended[0]["message"])
    status = (await admin.get(f"/api/v1/uploads/{SHA}")).json()
    assert status == {"digest": SHA, "exists": False, "offset": sent}
    assert (await admin.get("/api/v1/models/big")).status_code == 404  # nothing registered yet

    rest = await admin.post("/api/v1/models/big/versions", content=DATA[sent:], headers={
        "X-LMaaS-Format": "onnx", "X-LMaaS-Sha256": SHA, "X-LMaaS-Offset": str(sent), "X-LMaaS-Size": str(len(DATA)),
    })
    assert rest.status_code == 201, rest.text
    version = rest.json()
    assert (version["version"], version["size_bytes"], version["digest"]) == (1, len(DATA), SHA)
    assert (await admin.get(f"/api/v1/uploads/{SHA}")).json() == {"digest": SHA, "exists": True, "offset": len(DATA)}
    back = await admin.get("/api/v1/models/big/versions/1/artifact")
    assert hashlib.sha256(back.content).hexdigest() == SHA

    # the same bytes again: stored once, no new version
    again = await admin.post("/api/v1/models/big/versions", content=DATA,
                             headers={"X-LMaaS-Format": "onnx", "X-LMaaS-Sha256": SHA})
    assert again.status_code == 200 and again.json()["deduplicated"] and again.json()["existing"]


async def test_a_resume_with_wrong_bytes_fails_the_digest_and_starts_over(
    plane: ControlPlane, admin: httpx.AsyncClient
) -> None:
    sent = 1 << 20
    await cut_upload(plane, sent)
    await eventually_status(admin, sent)
    tampered = bytes(b ^ 1 for b in DATA[sent : sent + 10]) + DATA[sent + 10 :]
    reply = await admin.post("/api/v1/models/big/versions", content=tampered, headers={
        "X-LMaaS-Format": "onnx", "X-LMaaS-Sha256": SHA, "X-LMaaS-Offset": str(sent), "X-LMaaS-Size": str(len(DATA)),
    })
    assert reply.status_code == 400 and reply.json()["code"] == "DATA_LOSS"
    assert (await admin.get(f"/api/v1/uploads/{SHA}")).json()["offset"] == 0
    assert (await admin.get("/api/v1/models/big")).status_code == 404


async def eventually_status(admin: httpx.AsyncClient, offset: int) -> None:
    """Wait until the cut upload's call ended (audited) with ``offset`` bytes kept."""
    async with asyncio.timeout(15):
        while not await audited_uploads(admin) or \
                (await admin.get(f"/api/v1/uploads/{SHA}")).json()["offset"] != offset:
            await asyncio.sleep(0.05)
