"""Fixtures of the REST API tests: an in-process control plane (auth on, SQLite) serving HTTP on port 0,
and httpx clients with the admin token, a reader token, or none."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))  # cp_harness, cp_fixtures

import httpx
from cp_harness import ADMIN_TOKEN, running
from lmaas.control_plane.app import ControlPlane
from lmaas.control_plane.store.sqlite import SqliteStore
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb


def base_url(cp: ControlPlane) -> str:
    return f"http://127.0.0.1:{cp.http_port}"


def client(cp: ControlPlane, token: str | None = ADMIN_TOKEN) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=base_url(cp), headers=headers, timeout=30)


@pytest.fixture()
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    store = SqliteStore(tmp_path / "store.db")
    try:
        async with running(store, tmp_path, http_port=0) as cp:
            yield cp
    finally:
        await store.close()


@pytest.fixture()
async def admin(plane: ControlPlane) -> AsyncIterator[httpx.AsyncClient]:
    async with client(plane) as c:
        yield c


@pytest.fixture()
async def reader(plane: ControlPlane) -> AsyncIterator[httpx.AsyncClient]:
    _, secret, _ = await plane.tokens.create(pb.ROLE_READER, "rest tests reader", created_by="test")
    async with client(plane, secret) as c:
        yield c


@pytest.fixture()
async def anonymous(plane: ControlPlane) -> AsyncIterator[httpx.AsyncClient]:
    async with client(plane, None) as c:
        yield c
