"""REST auth through the one access table: 401 without a token and 403 for a reader on every mutation, for
every route of the OpenAPI document; denials and mutations audited like gRPC calls; paged audit reads;
--no-auth honoured."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import client
from cp_harness import running
from lmaas.control_plane.app import ControlPlane
from lmaas.control_plane.auth import AUDITED, METHODS, Permission
from lmaas.control_plane.rest.openapi import generate
from lmaas.control_plane.store.sqlite import SqliteStore

DATA = b"artifact bytes of the auth tests"
SHA = hashlib.sha256(DATA).hexdigest()
PATH_VALUES = {"name": "demo", "version": "1", "digest": SHA, "token_id": "0123456789ab"}


def calls() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(rpc, verb, url, request kwargs) for every operation of the document, with a plausible request."""
    out = []
    for path, item in generate()["paths"].items():
        for verb, op in item.items():
            url = path.format(**PATH_VALUES)
            kwargs: dict[str, Any] = {}
            if verb == "post" and path.endswith("/versions"):
                kwargs = {"content": DATA, "headers": {"X-LMaaS-Format": "onnx", "X-LMaaS-Sha256": SHA}}
            elif verb == "put":
                kwargs = {"json": {"version": 1}}
            elif path == "/api/v1/models" and verb == "post":
                kwargs = {"json": {"name": "other"}}
            elif path == "/api/v1/tokens" and verb == "post":
                kwargs = {"json": {"role": "admin"}}
            elif path.endswith("/rollback"):
                kwargs = {"json": {}}
            out.append((op["x-lmaas-rpc"], verb.upper(), url, kwargs))
    return out


CALLS = calls()
MUTATIONS = [c for c in CALLS if METHODS[c[0]] is not Permission.READ]


def test_the_routes_cover_every_mutation_and_read() -> None:
    rpcs = {rpc for rpc, *_ in CALLS}
    assert {m for m in AUDITED} <= rpcs  # every audited gRPC mutation has a REST route
    assert len(MUTATIONS) >= 8


def assert_problem(reply: httpx.Response, status: int, code: str) -> None:
    assert reply.status_code == status, (reply.request.method, reply.request.url, reply.text)
    assert reply.headers["content-type"].startswith("application/problem+json")
    body = reply.json()
    assert body["status"] == status and body["code"] == code and body["type"] == f"urn:lmaas:error:{code}"
    assert body["detail"] and body["title"] and body["instance"] == reply.request.url.path


@pytest.mark.parametrize(("rpc", "verb", "url", "kwargs"), CALLS, ids=[f"{c[1]} {c[2]}" for c in CALLS])
async def test_no_token_is_401_everywhere(
    anonymous: httpx.AsyncClient, rpc: str, verb: str, url: str, kwargs: dict[str, Any]
) -> None:
    reply = await anonymous.request(verb, url, **kwargs)
    assert_problem(reply, 401, "UNAUTHENTICATED")
    assert reply.headers["www-authenticate"].startswith("Bearer")


async def test_a_bad_or_revoked_token_is_401(plane: ControlPlane, admin: httpx.AsyncClient) -> None:
    async with client(plane, "lmaas_000000000000_" + "x" * 43) as forged:
        assert_problem(await forged.get("/api/v1/models"), 401, "UNAUTHENTICATED")
    async with client(plane, None) as basic:
        assert_problem(await basic.get("/api/v1/models", headers={"authorization": "Basic eDp5"}), 401,
                       "UNAUTHENTICATED")
    made = (await admin.post("/api/v1/tokens", json={"role": "reader", "description": "short-lived"})).json()
    async with client(plane, made["secret"]) as holder:
        assert (await holder.get("/api/v1/models")).status_code == 200
        revoked = await admin.delete(f"/api/v1/tokens/{made['token']['id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at_ms"] > 0
        assert_problem(await holder.get("/api/v1/models"), 401, "UNAUTHENTICATED")


async def test_a_reader_gets_403_on_every_mutation_and_nothing_changes(
    plane: ControlPlane, admin: httpx.AsyncClient, reader: httpx.AsyncClient
) -> None:
    pushed = await admin.post("/api/v1/models/demo/versions", content=DATA,
                              headers={"X-LMaaS-Format": "onnx", "X-LMaaS-Sha256": SHA})
    assert pushed.status_code == 201
    before = (await admin.get("/api/v1/models")).json()
    tokens_before = (await admin.get("/api/v1/tokens")).json()["tokens"]
    for rpc, verb, url, kwargs in MUTATIONS:
        reply = await reader.request(verb, url, **kwargs)
        assert_problem(reply, 403, "PERMISSION_DENIED")
        assert METHODS[rpc].value in reply.json()["detail"]
    after = (await admin.get("/api/v1/models")).json()
    assert after["models"] == before["models"]
    assert (await admin.get("/api/v1/models/demo/versions")).json()["versions"][0]["version"] == 1
    assert len((await admin.get("/api/v1/models/demo/versions")).json()["versions"]) == 1
    assert (await admin.get("/api/v1/deployments/demo")).status_code == 404
    assert (await admin.get("/api/v1/tokens")).json()["tokens"] == tokens_before
    # reads stay open to the reader
    for rpc, verb, url, kwargs in CALLS:
        if METHODS[rpc] is Permission.READ and "events" not in url:
            assert (await reader.request(verb, url, **kwargs)).status_code not in (401, 403), url
    # every denied attempt at an audited mutation is in the trail, under the RPC's name
    entries = (await admin.get("/api/v1/audit", params={"limit": 1000})).json()["entries"]
    denied = {e["method"] for e in entries if e["code"] == "PERMISSION_DENIED" and e["role"] == "reader"}
    assert denied == {rpc for rpc, *_ in MUTATIONS if rpc in AUDITED}
    assert all(e["peer"].startswith("http:127.0.0.1:") for e in entries)


async def test_rest_mutations_are_audited_like_grpc_calls(admin: httpx.AsyncClient) -> None:
    await admin.post("/api/v1/models/demo/versions", content=DATA,
                     headers={"X-LMaaS-Format": "onnx", "X-LMaaS-Sha256": SHA})
    assert (await admin.put("/api/v1/deployments/demo", json={"version": 1})).status_code == 200
    assert (await admin.put("/api/v1/deployments/demo", json={"version": 9})).status_code == 404
    entries = (await admin.get("/api/v1/audit")).json()["entries"]
    failed, ok, pushed = entries[:3]
    assert failed["method"] == ok["method"] == "/lmaas.control.v1.Deployments/Deploy"
    assert (ok["code"], failed["code"]) == ("OK", "NOT_FOUND")
    assert 'model: "demo"' in ok["request"] and "stable_version: 1" in ok["request"]
    assert ok["principal"] == "token:00000000ad01" and ok["role"] == "admin"
    assert pushed["method"] == "/lmaas.control.v1.ModelRegistry/CreateVersion" and SHA in pushed["request"]


async def test_the_audit_trail_reads_in_pages_newest_first(admin: httpx.AsyncClient) -> None:
    for i in range(7):
        await admin.post("/api/v1/models", json={"name": f"m{i}"})
    seen: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = (await admin.get("/api/v1/audit", params={"limit": 3, "before": cursor})).json()
        assert len(page["entries"]) <= 3
        seen += page["entries"]
        if page["next"] is None:
            break
        cursor = page["next"]
    created = [e for e in seen if e["method"].endswith("/CreateModel")]
    assert [e["request"] for e in created] == [f'name: "m{i}"' for i in reversed(range(7))]
    times = [e["time_ms"] for e in seen]
    assert times == sorted(times, reverse=True)
    bad = await admin.get("/api/v1/audit", params={"before": "not-a-cursor"})
    assert bad.status_code == 400 and bad.json()["code"] == "INVALID_ARGUMENT"
    assert (await admin.get("/api/v1/audit", params={"limit": 0})).status_code == 422


async def test_no_auth_opens_everything(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "open.db")
    try:
        async with running(store, tmp_path, http_port=0, auth=False) as cp, client(cp, None) as anyone:
            reply = await anyone.post("/api/v1/models/demo/versions", content=DATA,
                                      headers={"X-LMaaS-Format": "onnx", "X-LMaaS-Sha256": SHA})
            assert reply.status_code == 201 and reply.json()["created_by"] == "anonymous"
            assert (await anyone.put("/api/v1/deployments/demo", json={"version": 1})).status_code == 200
            assert (await anyone.get("/api/v1/tokens")).status_code == 200
    finally:
        await store.close()
