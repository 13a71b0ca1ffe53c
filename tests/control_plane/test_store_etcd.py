"""etcd-only store behaviour: failover between cluster members and keepalive across a restart."""

from __future__ import annotations

import asyncio
import contextlib
import time

from etcd_cluster import EtcdCluster
from lmaas.control_plane.store.base import Event, StoreError
from lmaas.control_plane.store.etcd import EtcdStore

WAIT = 15.0


async def _writes_and_watch_survive(cluster: EtcdCluster, store: EtcdStore, victim: int) -> None:
    """Write 3 keys, kill member ``victim``, write 3 more: every write succeeds and the watch sees all 6 once.

    The later writes start once the cluster has a leader again: a write that a follower forwarded to a leader
    that just died is lost inside etcd and times out, and that is ambiguous (it may have been applied), so the
    store cannot retry it and raises StoreError. The store does fail over by itself, and it retries a write
    that surely was not sent.
    """
    start = await store.revision() + 1
    got: list[Event] = []

    async def consume() -> None:
        async for event in store.watch("/f/", start):
            got.append(event)
            if len(got) == 6:
                return

    task = asyncio.create_task(consume())
    try:
        revisions = [await store.put(f"/f/{i}", b"x") for i in range(3)]
        await asyncio.to_thread(cluster.members[victim].kill)
        await asyncio.to_thread(cluster.leader_index)
        revisions += [await store.put(f"/f/{i}", b"y") for i in range(3, 6)]
        await asyncio.wait_for(task, WAIT)
    finally:
        task.cancel()
    assert [e.kv.mod_revision for e in got] == revisions
    assert [e.kv.key for e in got] == [f"/f/{i}" for i in range(6)]


async def test_failover_when_the_leader_dies(etcd_cluster3: EtcdCluster) -> None:
    leader = etcd_cluster3.leader_index()
    # talk to the leader first, so its death breaks both the unary channel and the watch stream
    order = [leader] + [i for i in range(3) if i != leader]
    store = EtcdStore([etcd_cluster3.members[i].endpoint for i in order])
    try:
        lease = await store.lease(2)
        await store.put("/f/leased", b"", lease=lease.id)
        await _writes_and_watch_survive(etcd_cluster3, store, leader)
        assert store.active_endpoint != etcd_cluster3.members[leader].endpoint
        assert await store.get("/f/leased") is not None and not lease.expired
        new_leader = await asyncio.to_thread(etcd_cluster3.leader_index)
        assert new_leader != leader
        # the old leader rejoins on its data dir and catches up
        await asyncio.to_thread(etcd_cluster3.members[leader].start)
        rejoined = EtcdStore([etcd_cluster3.members[leader].endpoint])
        try:
            assert (await rejoined.get("/f/5")) is not None
        finally:
            await rejoined.close()
    finally:
        await store.close()


async def test_failover_when_a_follower_dies(etcd_cluster3: EtcdCluster) -> None:
    follower = etcd_cluster3.follower_indexes()[0]
    order = [follower] + [i for i in range(3) if i != follower]
    store = EtcdStore([etcd_cluster3.members[i].endpoint for i in order])
    try:
        t0 = time.monotonic()
        await _writes_and_watch_survive(etcd_cluster3, store, follower)
        assert time.monotonic() - t0 < 5, "losing a follower needs no election"
    finally:
        await store.close()


async def test_write_during_an_election_fails_cleanly(etcd_cluster3: EtcdCluster) -> None:
    """Right after the leader dies a write either succeeds or raises StoreError within the timeout; never hangs."""
    leader = etcd_cluster3.leader_index()
    order = [leader] + [i for i in range(3) if i != leader]
    store = EtcdStore([etcd_cluster3.members[i].endpoint for i in order], timeout=2.0)
    try:
        await store.put("/e/before", b"")
        await asyncio.to_thread(etcd_cluster3.members[leader].kill)
        t0 = time.monotonic()
        with contextlib.suppress(StoreError):
            await store.put("/e/during", b"")
        assert time.monotonic() - t0 < 3.0
        await asyncio.to_thread(etcd_cluster3.leader_index)
        await store.put("/e/after", b"")
    finally:
        await store.close()


async def test_keepalive_survives_an_etcd_restart(etcd_server: EtcdCluster) -> None:
    store = EtcdStore(etcd_server.endpoints)
    try:
        lease = await store.lease(1)
        await store.put("/ka/key", b"", lease=lease.id)
        await asyncio.to_thread(etcd_server.members[0].restart)
        await asyncio.sleep(2.5 * lease.ttl)
        assert await store.get("/ka/key") is not None
        assert not lease.expired
        await lease.revoke()
        assert await store.get("/ka/key") is None
    finally:
        await store.close()
