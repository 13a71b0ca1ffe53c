"""The REST routes the console needs, through httpx: whoami per role, statistics, generate's refusals."""

from __future__ import annotations

from pathlib import Path

import httpx
from console_support import Plane
from cp_harness import ADMIN_TOKEN, lmaas
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb


def client(plane: Plane, token: str | None = ADMIN_TOKEN) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=plane.url + "/api/v1", headers=headers, timeout=30)


def test_whoami_names_the_role_and_its_permissions(plane: Plane) -> None:
    expected = {pb.ROLE_READER: ("reader", ["read"]), pb.ROLE_DEPLOYER: ("deployer", ["deploy", "download", "read"]),
                pb.ROLE_ADMIN: ("admin", ["admin", "deploy", "download", "read", "sync"])}
    for role, (name, permissions) in expected.items():
        secret = plane.token(role)
        with client(plane, secret) as api:
            me = api.get("/whoami").json()
        assert me == {"principal": f"token:{secret.split('_')[1]}", "role": name, "permissions": permissions}
    with client(plane, None) as anonymous:
        answer = anonymous.get("/whoami")
    assert answer.status_code == 401 and answer.headers["content-type"] == "application/problem+json"


def test_statistics_and_generate_refusals(plane: Plane) -> None:
    reader = plane.token(pb.ROLE_READER)
    with client(plane) as api, client(plane, reader) as reading:
        assert api.get("/models/missing/statistics").json()["code"] == "NOT_FOUND"
        assert api.post("/models", json={"name": "demo"}).status_code == 201
        stats = api.get("/models/demo/statistics").json()
        assert stats == {"model": "demo", "source": "workers", "sample_every_s": 5.0, "versions": [],
                         "unreachable": []}
        assert reading.get("/models/demo/statistics").status_code == 200  # read permission
        body = {"prompt": "hi", "max_tokens": 4}
        denied = reading.post("/models/demo/generate", json=body)
        assert denied.status_code == 403 and denied.json()["code"] == "PERMISSION_DENIED"
        both = api.post("/models/demo/generate", json={**body, "messages": [{"role": "user", "content": "hi"}]})
        assert both.status_code == 422
        assert api.post("/models/demo/generate", json={"max_tokens": 4}).status_code == 422
        assert api.post("/models/demo/generate", json={"messages": [{"role": "robot", "content": "x"}]}
                        ).status_code == 422
        idle = api.post("/models/demo/generate", json=body)
        assert idle.status_code == 409 and "no connected worker holds demo" in idle.json()["detail"]
        assert api.post("/models/missing/generate", json=body).status_code == 404


def test_statistics_name_the_workers_that_did_not_answer(plane: Plane, tmp_path: Path) -> None:
    """The test's workers advertise inference addresses nobody serves (w1:8001): listed, not an error."""
    (tmp_path / "held.onnx").write_bytes(b"held v1")
    lmaas("model", "push", "held", str(tmp_path / "held.onnx"), "-q", address=plane.grpc)
    lmaas("deploy", "held", "1", "--wait", address=plane.grpc)
    with client(plane) as api:
        stats = api.get("/models/held/statistics").json()
    assert stats["unreachable"] == ["w1", "w2"] and stats["versions"] == []
