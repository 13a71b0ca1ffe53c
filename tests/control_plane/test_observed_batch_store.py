"""``Store.txn_batch``: several independent compare-and-swaps in one atomic write, on SQLite and a real etcd."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from lmaas.control_plane.store.base import MAX_TXN_OPS, Compare, Delete, EventType, LeaseNotFound, Put, Store, Txn


async def test_each_transaction_of_a_batch_runs_its_own_branch_in_one_revision(store: Store) -> None:
    r_a = await store.put("/b/a", b"a1")
    await store.put("/b/gone", b"x")
    head = await store.revision()
    results = await store.txn_batch([
        Txn([Compare.unchanged("/b/a", r_a)], [Put("/b/a", b"a2")], [Put("/b/a-failed", b"!")]),
        Txn([Compare.unchanged("/b/c", 12345)], [Put("/b/c", b"never")], [Put("/b/c-failed", b"yes")]),
        Txn([], [Delete("/b/gone")]),
    ])
    assert [r.succeeded for r in results] == [True, False, True]
    assert {r.revision for r in results} == {head + 1}  # every change shares one revision
    got = await store.range("/b/")
    assert [(kv.key, kv.value, kv.mod_revision) for kv in got.kvs] == [
        ("/b/a", b"a2", head + 1), ("/b/c-failed", b"yes", head + 1)
    ]


async def test_compares_see_the_state_before_the_batch(store: Store) -> None:
    # the second transaction's compare holds although the first one creates the key in the same batch
    results = await store.txn_batch([
        Txn([Compare.absent("/s/k")], [Put("/s/k", b"1")]),
        Txn([Compare.absent("/s/k")], [Put("/s/other", b"2")], [Put("/s/saw-k", b"!")]),
    ])
    assert [r.succeeded for r in results] == [True, True]
    assert sorted(kv.key for kv in (await store.range("/s/")).kvs) == ["/s/k", "/s/other"]


async def test_a_batch_that_changes_nothing_keeps_the_revision(store: Store) -> None:
    await store.put("/n/a", b"a")
    head = await store.revision()
    results = await store.txn_batch([Txn([Compare.absent("/n/a")], [Put("/n/a", b"b")]), Txn([], [Delete("/n/z")])])
    assert [(r.succeeded, r.revision) for r in results] == [(False, head), (True, head)]
    assert await store.revision() == head
    assert await store.txn_batch([]) == []


async def test_batch_changes_reach_watchers_in_order_in_one_revision(store: Store) -> None:
    head = await store.revision()
    events = store.watch("/w/", head + 1)
    await store.txn_batch([Txn([], [Put("/w/1", b"one"), Put("/w/2", b"two")]), Txn([], [Put("/w/3", b"three")])])
    got = []
    async with contextlib.aclosing(events) as it:
        async with asyncio.timeout(10):
            async for event in it:
                got.append((event.type, event.kv.key, event.kv.mod_revision))
                if len(got) == 3:
                    break
    assert got == [(EventType.PUT, k, head + 1) for k in ("/w/1", "/w/2", "/w/3")]


async def test_leased_batch_writes_expire_with_their_lease(store: Store) -> None:
    lease = await store.lease(5)
    await store.txn_batch([Txn([], [Put("/l/a", b"a", lease.id)]), Txn([], [Put("/l/b", b"b", lease.id)])])
    assert len((await store.range("/l/")).kvs) == 2
    await lease.revoke()
    assert (await store.range("/l/")).kvs == []
    with pytest.raises(LeaseNotFound):  # the whole batch fails: nothing of it is written
        await store.txn_batch([Txn([], [Put("/l/c", b"c")]), Txn([], [Put("/l/d", b"d", lease.id)])])
    assert (await store.range("/l/")).kvs == []


@pytest.mark.parametrize(
    "batch",
    [
        [Txn([], [Put("/v/k", b"1")]), Txn([], [Put("/v/k", b"2")])],
        [Txn([], [Put("/v/k", b"1")]), Txn([Compare.absent("/v/x")], [], [Put("/v/k", b"2")])],
        [Txn([], [Put("/v/p/k", b"1")]), Txn([], [Delete("/v/p/", prefix=True)])],
        [Txn([], [Put("/v/k", b"1"), Put("/v/k", b"2")])],
        [Txn([], [Put("", b"1")])],
        [Txn([], [Put(f"/v/{i}", b"1")]) for i in range(MAX_TXN_OPS)],
        [Txn([], [Put(f"/v/{i}/{j}", b"1") for j in range(MAX_TXN_OPS - 1)]) for i in range(2)],
    ],
    ids=["put-twice", "put-in-failure-branch", "put-under-delete", "twice-in-one", "empty-key", "too-many", "too-wide"],
)
async def test_an_invalid_batch_is_refused_whole(store: Store, batch: list[Txn]) -> None:
    head = await store.revision()
    with pytest.raises(ValueError):
        await store.txn_batch(batch)
    assert await store.revision() == head


@pytest.mark.parametrize("n", [1, 64, MAX_TXN_OPS - 2])
async def test_a_batch_at_the_op_limit_is_accepted(store: Store, n: int) -> None:
    # n transactions, each as wide as the limit leaves: etcd counts them this way
    width = MAX_TXN_OPS - n
    batch = [Txn([Compare.absent(f"/f/{i}/0")], [Put(f"/f/{i}/{j}", b"x") for j in range(width)]) for i in range(n)]
    results = await store.txn_batch(batch)
    assert all(r.succeeded for r in results) and len(results) == n
    assert len((await store.range("/f/")).kvs) == n * width
