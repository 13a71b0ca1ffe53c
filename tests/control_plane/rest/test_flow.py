"""End to end over REST with real processes: a control plane (``lmaas control-plane --http-port 0``) and a real
worker (``lmaas worker``, synced to it); httpx drives push → deploy → canary → rollback → history, rollout
events are followed over SSE, and the worker's OIP v2 HTTP answers show which version serves."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cp_harness import ADMIN_TOKEN, start_control_plane, write_scale_onnx
from processes import ServerProcess, start_worker

X = [0.0, 1.0, 2.0, 3.0]


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    control = start_control_plane(tmp_path)
    try:
        w = start_worker(None, "--control-plane", control.grpc, "--worker-id", "w1", "--cache-dir",
                         str(tmp_path / "cache"), env={"LMAAS_TOKEN": ADMIN_TOKEN})
        try:
            yield control, w
        finally:
            assert w.stop() == 0, w.output()
    finally:
        assert control.stop() == 0, control.output()


def push(api: httpx.Client, path: Path, **headers: str) -> dict[str, Any]:
    data = path.read_bytes()
    reply = api.post("/api/v1/models/scale/versions", content=data, headers={
        "X-LMaaS-Format": "onnx", "X-LMaaS-Sha256": hashlib.sha256(data).hexdigest(), **headers})
    assert reply.status_code == 201, reply.text
    body: dict[str, Any] = reply.json()
    return body


def follow(api: httpx.Client, generation: int) -> list[dict[str, Any]]:
    """Every rollout event of ``generation`` until the stream ends."""
    out = []
    with api.stream("GET", "/api/v1/deployments/scale/rollout/events", params={"generation": generation}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[len("data: "):]))
    return out


def rolled_out(api: httpx.Client, reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 200, reply.text
    state: dict[str, Any] = reply.json()
    updates = follow(api, state["deployment"]["generation"])
    assert updates and updates[-1]["phase"] == "succeeded", updates
    assert updates[-1]["workers"] == [{"worker_id": "w1", "state": "acked", "error": ""}]
    return state


def outputs(worker: httpx.Client, n: int = 1) -> set[float]:
    """The first output element of ``n`` inferences naming no version (x[1] = 1, so it is the scale)."""
    seen = set()
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X}]}
    for _ in range(n):
        reply = worker.post("/v2/models/scale/infer", json=body)
        assert reply.status_code == 200, reply.text
        seen.add(reply.json()["outputs"][0]["data"][1])
    return seen


def test_push_deploy_canary_rollback_history(cluster: tuple[ServerProcess, ServerProcess], tmp_path: Path) -> None:
    control, w = cluster
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=control.http_url, headers=headers, timeout=60) as api, \
            httpx.Client(base_url=w.http_url, timeout=60) as worker:
        workers = api.get("/api/v1/workers").json()["workers"]
        assert [x["worker_id"] for x in workers] == ["w1"]
        v1 = push(api, write_scale_onnx(tmp_path / "v1.onnx", 2.0))
        v2 = push(api, write_scale_onnx(tmp_path / "v2.onnx", 3.0), **{"X-LMaaS-Parent-Version": "1",
                                                                        "X-LMaaS-Description": "retrained"})
        assert (v1["version"], v2["version"]) == (1, 2)

        rolled_out(api, api.put("/api/v1/deployments/scale", json={"version": 1}))
        assert outputs(worker) == {2.0}

        canary = rolled_out(api, api.put("/api/v1/deployments/scale",
                                         json={"version": 1, "canary": {"version": 2, "weight": 50}}))
        assert canary["deployment"]["spec"] == {"stable_version": 1, "canary_version": 2, "canary_weight": 50,
                                                "pools": [], "lazy": False}
        assert outputs(worker, 200) == {2.0, 3.0}  # both serve: all one side has odds of 2**-199

        rolled_out(api, api.post("/api/v1/deployments/scale/rollback", json={}))  # the previous: v1 alone
        assert outputs(worker, 20) == {2.0}
        rolled_out(api, api.post("/api/v1/deployments/scale/rollback", json={"to": 2}))
        assert outputs(worker, 20) == {3.0}

        state = api.get("/api/v1/deployments/scale").json()
        history = state["deployment"]["history"]
        assert [(r["reason"], r["spec"]["stable_version"], r["spec"]["canary_version"]) for r in history] == [
            ("deploy", 1, 0), ("deploy", 1, 2), ("rollback", 1, 0), ("rollback", 2, 0)]
        assert {r["created_by"] for r in history} == {"token:00000000ad01"}
        assert state["rollout"]["phase"] == "succeeded"

        versions = api.get("/api/v1/models/scale/versions").json()["versions"]
        assert [(v["version"], v["parent_version"], v["format"]) for v in versions] == [(1, 0, "onnx"), (2, 1, "onnx")]
        assert versions[1]["description"] == "retrained" and versions[1]["digest"] == v2["digest"]
        assert all(v["created_by"] == "token:00000000ad01" and v["created_at_ms"] > 0 and v["size_bytes"] > 0
                   for v in versions)
        held = api.get("/api/v1/workers").json()["workers"][0]["held"]
        assert {h["version"] for h in held} >= {2}

        # lazy: loaded by the first request; a rollback to a version keeps the deployment lazy
        lazy = rolled_out(api, api.put("/api/v1/deployments/scale", json={"version": 1, "lazy": True}))
        assert lazy["deployment"]["spec"]["lazy"] is True
        assert outputs(worker) == {2.0}
        back = rolled_out(api, api.post("/api/v1/deployments/scale/rollback", json={"to": 2}))
        assert back["deployment"]["spec"] == {"stable_version": 2, "canary_version": 0, "canary_weight": 0,
                                              "pools": [], "lazy": True}
        assert outputs(worker) == {3.0}
