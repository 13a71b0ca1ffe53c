"""Rollout progress as server-sent events, from the same core watch as gRPC's WatchRollout: a worker whose
model load is held by a gate shows the rollout progressing, then succeeded once the gate opens; a newer
deploy supersedes a followed rollout; errors before the stream answer problem+json."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cp_harness import ADMIN_TOKEN, FakeHost, address, worker
from lmaas.control_plane.app import ControlPlane

DATA = b"an artifact for the events tests"
UPLOAD = {"X-LMaaS-Format": "onnx", "X-LMaaS-Sha256": hashlib.sha256(DATA).hexdigest()}


@dataclass
class GatedHost(FakeHost):
    """A FakeHost whose loads wait until ``gate`` is set: the rollout stays progressing until then."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def ensure_loaded(self, name: str, version: int, path: Path, config_json: str, digest: str) -> None:
        await self.gate.wait()
        await super().ensure_loaded(name, version, path, config_json, digest)


async def events(response: httpx.Response) -> AsyncIterator[tuple[str, int, dict[str, Any]]]:
    """(event, id, data) of a text/event-stream response."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if fields:
                yield fields["event"], int(fields["id"]), json.loads(fields["data"])
            fields = {}
            continue
        key, _, value = line.partition(": ")
        fields[key] = value


async def test_events_follow_a_rollout_to_success(plane: ControlPlane, admin: httpx.AsyncClient,
                                                  tmp_path: Path) -> None:
    host = GatedHost()
    async with worker(address(plane), tmp_path, "w1", host=host):
        assert (await admin.post("/api/v1/models/demo/versions", content=DATA, headers=UPLOAD)).status_code == 201
        deployed = (await admin.put("/api/v1/deployments/demo", json={"version": 1})).json()
        generation = deployed["deployment"]["generation"]
        assert deployed["rollout"]["phase"] == "progressing"
        seen: list[tuple[str, int, dict[str, Any]]] = []
        async with admin.stream("GET", "/api/v1/deployments/demo/rollout/events",
                                params={"generation": generation}) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            async with asyncio.timeout(20):
                async for event in events(stream):
                    seen.append(event)
                    if len(seen) == 1:  # the worker is still loading: open the gate only now
                        assert event[2]["phase"] == "progressing"
                        assert event[2]["workers"] == [{"worker_id": "w1", "state": "pending", "error": ""}]
                        host.gate.set()
        assert {e[0] for e in seen} == {"rollout"}
        assert [e[2]["generation"] for e in seen] == [generation] * len(seen)
        ids = [e[1] for e in seen]
        assert ids == sorted(ids)
        last = seen[-1][2]
        assert last["phase"] == "succeeded" and last["workers"] == [{"worker_id": "w1", "state": "acked", "error": ""}]
        assert host.serving("demo") == 1


async def test_a_newer_deploy_supersedes_the_followed_rollout(plane: ControlPlane, admin: httpx.AsyncClient,
                                                              tmp_path: Path) -> None:
    host = GatedHost()
    async with worker(address(plane), tmp_path, "w1", host=host):
        await admin.post("/api/v1/models/demo/versions", content=DATA, headers=UPLOAD)
        await admin.post("/api/v1/models/demo/versions", content=DATA,
                         headers={**UPLOAD, "X-LMaaS-Parent-Version": "1"})
        first = (await admin.put("/api/v1/deployments/demo", json={"version": 1})).json()["deployment"]["generation"]
        phases: list[str] = []
        async with admin.stream("GET", "/api/v1/deployments/demo/rollout/events",
                                params={"generation": first}) as stream:
            async with asyncio.timeout(20):
                async for _, _, data in events(stream):
                    phases.append(data["phase"])
                    if len(phases) == 1:
                        reply = await admin.put("/api/v1/deployments/demo", json={"version": 2})
                        assert reply.status_code == 200
        assert phases[0] == "progressing" and phases[-1] == "superseded"
        host.gate.set()


async def test_errors_before_the_stream_are_problems(admin: httpx.AsyncClient) -> None:
    reply = await admin.get("/api/v1/deployments/nope/rollout/events")
    assert reply.status_code == 404 and reply.headers["content-type"].startswith("application/problem+json")
    await admin.post("/api/v1/models/demo/versions", content=DATA, headers=UPLOAD)
    reply = await admin.get("/api/v1/deployments/demo/rollout/events")
    assert reply.status_code == 404 and "no rollout" in reply.json()["detail"]
    await admin.put("/api/v1/deployments/demo", json={"version": 1})
    reply = await admin.get("/api/v1/deployments/demo/rollout/events", params={"generation": 7})
    assert reply.status_code == 404 and "generation 7" in reply.json()["detail"]


async def test_an_idle_stream_sends_keep_alive_comments(plane: ControlPlane, tmp_path: Path) -> None:
    from lmaas.control_plane.rest import RestServer, create_app

    server = RestServer(create_app(plane, sse_keepalive=0.05), "127.0.0.1", 0, grace=1)
    port = await server.start()
    host = GatedHost()
    try:
        async with worker(address(plane), tmp_path, "w1", host=host), \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                  headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
            await api.post("/api/v1/models/demo/versions", content=DATA, headers=UPLOAD)
            await api.put("/api/v1/deployments/demo", json={"version": 1})
            lines: list[str] = []
            async with api.stream("GET", "/api/v1/deployments/demo/rollout/events") as stream:
                async with asyncio.timeout(20):
                    async for line in stream.aiter_lines():
                        lines.append(line)
                        if lines.count(": keep-alive") == 3:  # idle while the load waits: open the gate
                            host.gate.set()
            assert lines.count(": keep-alive") >= 3
            data = [json.loads(x[len("data: "):]) for x in lines if x.startswith("data: ")]
            assert data[0]["phase"] == "progressing" and data[-1]["phase"] == "succeeded"
    finally:
        await server.stop()
