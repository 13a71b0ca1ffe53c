"""Metadata-store fixtures: a real etcd (session-wide), a 3-member etcd cluster, and ``store`` over both backends."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from etcd_cluster import EtcdCluster, etcd_binary
from lmaas.control_plane.store.base import Store
from lmaas.control_plane.store.etcd import EtcdStore
from lmaas.control_plane.store.sqlite import SqliteStore

StoreFactory = Callable[[], Awaitable[Store]]


def _require_etcd() -> None:
    if etcd_binary() is None:
        if os.environ.get("CI"):  # CI installs etcd: a missing one is a failure there, not a skip
            pytest.fail("etcd is not installed; .ci/install-system.sh should have installed etcd-server")
        pytest.skip("etcd is not installed (apt-get install etcd-server)")


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdCluster]:
    """One etcd member for the whole session (50/500 ms heartbeat/election: 1 s leases, ~1 s restarts).

    Tests share it, so they must not assume absolute revisions; ``store`` deletes every key before each test.
    A test may restart it (``etcd_server.members[0].restart()``) but must leave it running.
    """
    _require_etcd()
    cluster = EtcdCluster(1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture()
def etcd_cluster3() -> Iterator[EtcdCluster]:
    """A fresh 3-member etcd cluster on loopback, for fault tests (kill the leader, a follower...)."""
    _require_etcd()
    cluster = EtcdCluster(3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(params=["sqlite", "etcd"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "etcd":
        _require_etcd()
    return name


@pytest.fixture()
async def open_store(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Opens more stores on the same backing data (same SQLite file / same etcd); all closed at teardown."""
    opened: list[Store] = []

    async def factory() -> Store:
        store: Store
        if backend == "sqlite":
            store = SqliteStore(tmp_path / "store.db")
        else:
            cluster: EtcdCluster = request.getfixturevalue("etcd_server")
            store = EtcdStore(cluster.endpoints)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


@pytest.fixture()
async def store(open_store: StoreFactory, backend: str) -> Store:
    """A store on an empty keyspace (etcd: the shared server, wiped; SQLite: a new file)."""
    store = await open_store()
    if backend == "etcd":
        await store.delete("", prefix=True)
    return store
