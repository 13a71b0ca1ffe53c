"""TxnBatcher: concurrent compare-and-swaps share store requests, and each keeps its own outcome."""

from __future__ import annotations

import asyncio

from lmaas.control_plane.store.base import Compare, Delete, LeaseNotFound, Put, Store
from lmaas.control_plane.store.batcher import TxnBatcher


async def test_concurrent_writes_share_requests_and_keep_their_own_results(store: Store) -> None:
    revisions = {f"/w/{i}": await store.put(f"/w/{i}", b"v0") for i in range(100)}
    batcher = TxnBatcher(store)
    # every tenth one compares against a stale revision: it alone fails, its failure branch runs
    results = await asyncio.gather(*(
        batcher.txn([Compare.unchanged(k, r - (i % 10 == 0))], [Put(k, b"v1")], [Put(k + "-lost", b"!")])
        for i, (k, r) in enumerate(revisions.items())
    ))
    assert [r.succeeded for r in results] == [i % 10 != 0 for i in range(100)]
    assert 1 < batcher.requests < 10  # the first alone, then the ones that queued behind it, 64 at most each
    got = {kv.key: kv.value for kv in (await store.range("/w/")).kvs}
    assert sum(v == b"v1" for v in got.values()) == 90 and sum(k.endswith("-lost") for k in got) == 10
    await batcher.close()


async def test_writes_of_one_key_are_not_merged_and_apply_in_order(store: Store) -> None:
    batcher = TxnBatcher(store)
    await asyncio.gather(*(batcher.txn([], [Put("/o/k", str(i).encode())]) for i in range(20)))
    kv = await store.get("/o/k")
    assert kv is not None and kv.value == b"19" and kv.version == 20  # twenty writes, none lost or reordered
    await batcher.close()


async def test_a_bad_write_fails_alone(store: Store) -> None:
    batcher = TxnBatcher(store)
    lease = await store.lease(5)
    await lease.revoke()
    good = [batcher.txn([], [Put(f"/b/{i}", b"x")]) for i in range(10)]
    bad_lease = batcher.txn([], [Put("/b/leased", b"x", lease.id)])
    twice = batcher.txn([], [Put("/b/p/k", b"x"), Delete("/b/p/", prefix=True)])
    outcomes = await asyncio.gather(*good, bad_lease, twice, return_exceptions=True)
    assert all(not isinstance(o, BaseException) and o.succeeded for o in outcomes[:10])
    assert isinstance(outcomes[10], LeaseNotFound)
    assert isinstance(outcomes[11], ValueError)
    assert len((await store.range("/b/")).kvs) == 10
    await batcher.close()


async def test_a_write_wider_than_a_batch_goes_alone(store: Store) -> None:
    batcher = TxnBatcher(store)
    result = await batcher.txn([], [Put(f"/x/{i}", b"x") for i in range(127)])
    assert result.succeeded and len((await store.range("/x/")).kvs) == 127
    assert batcher.requests == 1
    await batcher.close()
