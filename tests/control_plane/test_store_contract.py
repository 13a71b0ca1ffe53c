"""The metadata-store contract (``lmaas.control_plane.store.base``), run against SQLite and a real etcd."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from etcd_cluster import EtcdCluster, free_port
from lmaas.control_plane.store import open_store as open_store_url
from lmaas.control_plane.store.base import (
    Compare,
    Delete,
    Event,
    EventType,
    LeaseNotFound,
    Put,
    Store,
    StoreError,
    WatchCompacted,
)
from lmaas.control_plane.store.etcd import EtcdStore
from lmaas.control_plane.store.sqlite import SqliteStore

StoreFactory = Callable[[], Awaitable[Store]]  # the `open_store` fixture
WAIT = 10.0  # generous bound on anything that should happen "soon"


async def take(events: AsyncIterator[Event], n: int, timeout: float = WAIT) -> list[Event]:
    """The next ``n`` events, then close the iterator."""
    got: list[Event] = []
    async with contextlib.aclosing(events) as it:  # type: ignore[type-var]
        async with asyncio.timeout(timeout):
            async for event in it:
                got.append(event)
                if len(got) == n:
                    break
    return got


def summary(events: list[Event]) -> list[tuple[str, str, bytes, int]]:
    return [(e.type.value, e.kv.key, e.kv.value, e.kv.mod_revision) for e in events]


async def eventually(check: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


# -- keys and revisions --------------------------------------------------------------------------------------------


async def test_put_get(store: Store) -> None:
    assert await store.get("/a") is None
    r1 = await store.put("/a", b"one")
    kv = await store.get("/a")
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == ("/a", b"one", r1, r1, 1, 0)
    r2 = await store.put("/a", b"two")
    kv = await store.get("/a")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"two", r1, r2, 2)
    await store.delete("/a")
    r4 = await store.put("/a", b"three")
    kv = await store.get("/a")
    assert kv is not None
    assert (kv.create_revision, kv.mod_revision, kv.version) == (r4, r4, 1), "a re-created key starts over"


async def test_revision_increases_by_one_per_write(store: Store) -> None:
    r0 = await store.revision()
    assert await store.put("/r/a", b"1") == r0 + 1
    assert await store.put("/r/a", b"1") == r0 + 2, "an identical put is still a write"
    assert await store.put("/r/b", b"2") == r0 + 3
    assert await store.delete("/r/a") == r0 + 4
    assert await store.delete("/r/a") == r0 + 4, "deleting nothing is not a write"
    assert await store.delete("/nothing/", prefix=True) == r0 + 4
    result = await store.txn([], [Put("/r/c", b""), Put("/r/d", b""), Delete("/r/b")])
    assert (result.succeeded, result.revision) == (True, r0 + 5), "one transaction, one revision"
    result = await store.txn([Compare.absent("/r/c")], [Put("/r/e", b"")])
    assert (result.succeeded, result.revision) == (False, r0 + 5), "a failed transaction without failure ops"
    assert await store.revision() == r0 + 5
    listing = await store.range("/r/")
    assert listing.revision == r0 + 5


async def test_range_is_sorted_bytewise_and_bounded_by_the_prefix(store: Store) -> None:
    for key in ["/p/b", "/p/a/2", "/p/a/10", "/p/\u00e9", "/p0", "/p", "/q/x", "/p/a/1"]:
        await store.put(key, key.encode())
    listing = await store.range("/p/")
    assert [kv.key for kv in listing.kvs] == ["/p/a/1", "/p/a/10", "/p/a/2", "/p/b", "/p/\u00e9"]
    assert all(kv.value == kv.key.encode() for kv in listing.kvs)
    assert listing.revision == await store.revision()
    everything = await store.range("")
    assert [kv.key for kv in everything.kvs][:2] == ["/p", "/p/a/1"] and len(everything.kvs) == 8
    assert (await store.range("/none/")).kvs == []


async def test_delete_prefix_deletes_only_under_it(store: Store) -> None:
    for key in ["/d/1", "/d/2", "/d/sub/3", "/d0", "/e"]:
        await store.put(key, b"x")
    r0 = await store.revision()
    assert await store.delete("/d/", prefix=True) == r0 + 1
    assert [kv.key for kv in (await store.range("")).kvs] == ["/d0", "/e"]


async def test_empty_keys_are_refused(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.put("", b"x")
    with pytest.raises(ValueError):
        await store.get("")
    with pytest.raises(ValueError):
        await store.txn([], [Put("", b"")])


# -- transactions --------------------------------------------------------------------------------------------------


async def test_txn_create_if_absent(store: Store) -> None:
    first = await store.txn([Compare.absent("/m/x")], [Put("/m/x", b"mine")], [Put("/m/lost", b"1")])
    assert first.succeeded
    second = await store.txn([Compare.absent("/m/x")], [Put("/m/x", b"theirs")], [Put("/m/lost", b"2")])
    assert not second.succeeded
    assert second.revision == first.revision + 1, "the failure branch wrote"
    assert (await store.get("/m/x")).value == b"mine"  # type: ignore[union-attr]
    assert (await store.get("/m/lost")).value == b"2"  # type: ignore[union-attr]


async def test_txn_cas_on_mod_revision(store: Store) -> None:
    await store.put("/cas", b"v1")
    kv = await store.get("/cas")
    assert kv is not None
    await store.put("/cas", b"v2")  # someone else wrote in between
    stale = await store.txn([Compare.unchanged("/cas", kv.mod_revision)], [Put("/cas", b"mine")])
    assert not stale.succeeded
    fresh = await store.get("/cas")
    assert fresh is not None
    ok = await store.txn([Compare.unchanged("/cas", fresh.mod_revision)], [Put("/cas", b"mine")])
    assert ok.succeeded
    assert (await store.get("/cas")).value == b"mine"  # type: ignore[union-attr]


async def test_txn_compare_targets_and_ops(store: Store) -> None:
    r = await store.put("/t", b"bbb")
    await store.put("/t", b"bbb")  # version 2, create_revision r

    async def holds(*compares: Compare) -> bool:
        return (await store.txn(list(compares), [])).succeeded

    assert await holds(Compare("/t", "value", "==", b"bbb"))
    assert await holds(Compare("/t", "value", "!=", b"aaa"))
    assert await holds(Compare("/t", "value", ">", b"aaa"), Compare("/t", "value", "<", b"ccc"))
    assert not await holds(Compare("/t", "value", "<", b"bbb"))
    assert await holds(Compare("/t", "version", "==", 2), Compare("/t", "version", ">", 1))
    assert await holds(Compare("/t", "create_revision", "==", r), Compare("/t", "mod_revision", ">", r))
    assert not await holds(Compare("/t", "version", "==", 2), Compare("/t", "version", "<", 2)), "all must hold"
    assert await holds(Compare("/missing", "version", "==", 0), Compare("/missing", "mod_revision", "<", 1))
    assert not await holds(Compare("/missing", "value", "!=", b"x")), "a value compare on a missing key fails"
    assert not await holds(Compare("/missing", "value", "==", b""))
    assert await holds()


async def test_txn_rejects_malformed_requests(store: Store) -> None:
    with pytest.raises(ValueError, match="twice"):
        await store.txn([], [Put("/k", b"1"), Put("/k", b"2")])
    with pytest.raises(ValueError, match="puts and deletes"):
        await store.txn([], [Delete("/k/", prefix=True), Put("/k/x", b"1")])
    with pytest.raises(ValueError):
        await store.txn([Compare("/k", "version", "~", 1)], [])
    with pytest.raises(ValueError):
        await store.txn([Compare("/k", "lease", "==", 1)], [])
    with pytest.raises(ValueError):
        await store.txn([Compare("/k", "version", "==", b"1")], [])
    with pytest.raises(ValueError):
        await store.txn([Compare("/k", "value", "==", 1)], [])


async def test_concurrent_cas_increments(open_store: StoreFactory, store: Store) -> None:
    """20 read-then-CAS incrementers on two store objects: exactly 20 successes, each its own revision."""
    other = await open_store()
    await store.put("/counter", b"0")
    successes: list[int] = []
    conflicts = 0

    async def increment(s: Store) -> None:
        nonlocal conflicts
        while True:
            kv = await s.get("/counter")
            assert kv is not None
            result = await s.txn(
                [Compare.unchanged("/counter", kv.mod_revision)], [Put("/counter", str(int(kv.value) + 1).encode())]
            )
            if result.succeeded:
                successes.append(result.revision)
                return
            conflicts += 1

    async with asyncio.timeout(30):
        await asyncio.gather(*(increment((store, other)[i % 2]) for i in range(20)))
    final = await store.get("/counter")
    assert final is not None and final.value == b"20" and final.version == 21
    assert len(set(successes)) == 20 and final.mod_revision == max(successes)
    assert conflicts > 0, "the test should have produced CAS conflicts"


# -- watch ---------------------------------------------------------------------------------------------------------


async def test_watch_replays_history_in_order_then_follows(store: Store) -> None:
    start = await store.revision() + 1
    r1 = await store.put("/w/a", b"1")
    r2 = await store.put("/w/b", b"2")
    r3 = await store.delete("/w/a")
    r4 = (await store.txn([], [Put("/w/c", b"3"), Put("/x/other", b"-")])).revision
    r5 = await store.delete("/w/", prefix=True)
    events = store.watch("/w/", start)
    history = await take(events, 6)
    assert summary(history) == [
        ("put", "/w/a", b"1", r1),
        ("put", "/w/b", b"2", r2),
        ("delete", "/w/a", b"", r3),
        ("put", "/w/c", b"3", r4),
        ("delete", "/w/b", b"", r5),
        ("delete", "/w/c", b"", r5),
    ]
    assert history[0].kv.create_revision == r1 and history[0].kv.version == 1
    assert history[4].kv.version == 0 and history[4].kv.create_revision == 0

    # from the middle of history, then live
    follower = store.watch("/w/", r3)
    task = asyncio.create_task(take(follower, 5))
    await asyncio.sleep(0.1)
    r6 = await store.put("/w/d", b"4")
    got = await task
    assert [e.kv.mod_revision for e in got] == [r3, r4, r5, r5, r6]


async def watching(store: Store, prefix: str, got: list[Event]) -> asyncio.Task[None]:
    """A live watch of ``prefix`` from revision 0 collecting into ``got``, returned once it is surely established
    (it has shown a probe key put after it started); the probe's events are left out of ``got``."""
    probe = prefix + "~probe"

    async def consume() -> None:
        async for event in store.watch(prefix, 0):
            if event.kv.key == probe:
                seen.set()
            else:
                got.append(event)

    seen = asyncio.Event()
    task = asyncio.create_task(consume())
    async with asyncio.timeout(WAIT):
        while not seen.is_set():
            await store.put(probe, b"")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(seen.wait(), 0.05)
    return task


async def test_watch_from_zero_starts_after_now(store: Store) -> None:
    await store.put("/z/old", b"")
    got: list[Event] = []
    task = await watching(store, "/z/", got)
    r1 = await store.put("/z/new", b"1")
    r2 = await store.delete("/z/old")
    await eventually(lambda: len(got) >= 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert summary(got) == [("put", "/z/new", b"1", r1), ("delete", "/z/old", b"", r2)]


async def test_watch_sees_only_its_prefix(store: Store) -> None:
    start = await store.revision() + 1
    await store.put("/w0", b"")
    await store.put("/w", b"")
    r = await store.put("/w/in", b"")
    await store.put("/v/in", b"")
    assert [e.kv.key for e in await take(store.watch("/w/", start), 1)] == ["/w/in"]
    assert [e.kv.mod_revision for e in await take(store.watch("/w/", start), 1)] == [r]


async def test_watch_compacted(store: Store) -> None:
    first = await store.put("/h/1", b"")
    await store.put("/h/2", b"")
    third = await store.put("/h/3", b"")
    await store.compact(third)
    await store.compact(first)  # idempotent
    with pytest.raises(WatchCompacted) as info:
        await take(store.watch("/h/", first), 1)
    assert info.value.compact_revision == third
    assert [e.kv.key for e in await take(store.watch("/h/", third), 1)] == ["/h/3"]
    with pytest.raises(ValueError):
        await store.compact(third + 100)


async def test_close_ends_open_watches(open_store: StoreFactory) -> None:
    store = await open_store()
    got: list[Event] = []
    task = await watching(store, "/c/", got)
    await store.put("/c/1", b"")
    await eventually(lambda: len(got) == 1)
    await store.close()
    await asyncio.wait_for(task, WAIT)  # ends without an error
    with pytest.raises(StoreError):
        await store.get("/c/1")


# etcd only
async def test_watch_resumes_after_etcd_restart(etcd_server: EtcdCluster) -> None:
    """Stop and restart etcd on the same data dir while a watch is open: no gap, no duplicate."""
    store = EtcdStore(etcd_server.endpoints)
    start = await store.revision() + 1
    got: list[Event] = []

    async def consume() -> None:
        async for event in store.watch("/rs/", start):
            got.append(event)
            if len(got) == 6:
                return

    task = asyncio.create_task(consume())
    try:
        before = [await store.put(f"/rs/{i}", b"before") for i in range(3)]
        await eventually(lambda: len(got) == 3)
        await asyncio.to_thread(etcd_server.members[0].restart)
        after = [await store.put(f"/rs/{i}", b"after") for i in range(3, 6)]  # the store reconnects by itself
        await asyncio.wait_for(task, WAIT)
    finally:
        task.cancel()
        await store.close()
    assert [e.kv.mod_revision for e in got] == before + after
    assert [e.kv.key for e in got] == [f"/rs/{i}" for i in range(6)]


# -- leases --------------------------------------------------------------------------------------------------------


async def test_lease_expiry_deletes_the_key_and_keepalive_keeps_it(store: Store) -> None:
    start = await store.revision() + 1
    dead = await store.lease(1, keepalive=False)  # type: ignore[call-arg]
    live = await store.lease(1)
    assert dead.id != live.id and dead.ttl >= 1 and live.ttl >= 1
    granted = time.monotonic()
    await store.put("/l/dead", b"", lease=dead.id)
    await store.put("/l/live", b"", lease=live.id)
    assert (await store.get("/l/live")).lease == live.id  # type: ignore[union-attr]

    async with contextlib.aclosing(store.watch("/l/", start)) as events:  # type: ignore[type-var]
        async with asyncio.timeout(dead.ttl + 3):
            async for event in events:
                if event.type is EventType.DELETE:
                    break
    assert event.kv.key == "/l/dead"
    assert await store.get("/l/dead") is None

    await asyncio.sleep(max(0.0, 2.5 * live.ttl - (time.monotonic() - granted)))
    assert await store.get("/l/live") is not None, "a kept-alive lease outlives its TTL"
    assert not live.expired

    revoked_from = await store.revision() + 1
    await live.revoke()
    await live.revoke()  # idempotent
    assert live.expired
    assert await store.get("/l/live") is None
    [deleted] = await take(store.watch("/l/", revoked_from), 1)
    assert (deleted.type, deleted.kv.key) == (EventType.DELETE, "/l/live")


async def test_revoke_deletes_all_keys_of_the_lease_in_one_revision(store: Store) -> None:
    lease = await store.lease(5)
    for i in range(3):
        await store.put(f"/rv/{i}", b"", lease=lease.id)
    await store.put("/rv/unleased", b"")
    r0 = await store.revision()
    await lease.revoke()
    assert await store.revision() == r0 + 1
    assert [kv.key for kv in (await store.range("/rv/")).kvs] == ["/rv/unleased"]
    events = await take(store.watch("/rv/", r0 + 1), 3)
    assert {e.kv.mod_revision for e in events} == {r0 + 1}


async def test_put_without_lease_detaches_and_unknown_lease_fails(store: Store) -> None:
    lease = await store.lease(5)
    await store.put("/u", b"1", lease=lease.id)
    await store.put("/u", b"2")  # lease 0: no longer attached
    await lease.revoke()
    assert (await store.get("/u")).value == b"2"  # type: ignore[union-attr]
    with pytest.raises(LeaseNotFound):
        await store.put("/u", b"3", lease=lease.id)
    with pytest.raises(LeaseNotFound):
        await store.txn([], [Put("/u", b"3", lease=lease.id)])
    assert (await store.get("/u")).value == b"2"  # type: ignore[union-attr]


async def test_lease_handle_learns_its_lease_is_gone(store: Store) -> None:
    lease = await store.lease(1)
    await store._revoke(lease.id)  # type: ignore[attr-defined]  # as if another owner revoked it
    await asyncio.wait_for(lease.wait_expired(), lease.ttl + 3)
    assert lease.expired


# -- SQLite only: across store objects and processes -----------------------------------------------------------


async def test_sqlite_stores_on_one_file_see_each_other(tmp_path: Path) -> None:
    a, b = SqliteStore(tmp_path / "s.db"), SqliteStore(tmp_path / "s.db")
    start = await a.revision() + 1
    watch = asyncio.create_task(take(a.watch("/s/", start), 3))
    lease = await b.lease(1, keepalive=False)  # type: ignore[call-arg]
    r1 = await b.put("/s/1", b"from b")
    r2 = await b.put("/s/2", b"leased", lease=lease.id)
    await b.close()  # b is gone: a must expire b's lease by itself
    got = await asyncio.wait_for(watch, WAIT)
    assert summary(got)[:2] == [("put", "/s/1", b"from b", r1), ("put", "/s/2", b"leased", r2)]
    assert (got[2].type, got[2].kv.key) == (EventType.DELETE, "/s/2")
    assert (await a.get("/s/1")).value == b"from b"  # type: ignore[union-attr]
    await a.close()


async def test_sqlite_sees_writes_of_another_process(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "p.db")
    start = await store.revision() + 1
    watch = asyncio.create_task(take(store.watch("/proc/", start), 2))
    script = (
        "import asyncio, sys\n"
        "from lmaas.control_plane.store.sqlite import SqliteStore\n"
        "async def main():\n"
        "    async with SqliteStore(sys.argv[1]) as s:\n"
        "        await s.put('/proc/x', b'1')\n"
        "        await s.delete('/proc/x')\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, store.path)
    assert await asyncio.wait_for(proc.wait(), WAIT) == 0
    got = await asyncio.wait_for(watch, WAIT)
    assert [(e.type, e.kv.mod_revision) for e in got] == [(EventType.PUT, start), (EventType.DELETE, start + 1)]
    await store.close()


# -- opening -------------------------------------------------------------------------------------------------------


def test_open_store_urls(tmp_path: Path) -> None:
    rel = open_store_url("sqlite:///state.db")
    assert isinstance(rel, SqliteStore) and rel.path == "state.db"
    absolute = open_store_url(f"sqlite:///{tmp_path}/state.db")  # an absolute path: four slashes in all
    assert isinstance(absolute, SqliteStore) and absolute.path == f"{tmp_path}/state.db"
    bare = open_store_url(str(tmp_path / "x.db"))
    assert isinstance(bare, SqliteStore) and bare.path == str(tmp_path / "x.db")
    etcd = open_store_url("etcd://127.0.0.1:2379,10.0.0.2:2379")
    assert isinstance(etcd, EtcdStore) and etcd.endpoints == ["127.0.0.1:2379", "10.0.0.2:2379"]
    for bad in ["etcd://", "mysql://x", "sqlite://", "etcd://nohost"]:
        with pytest.raises(ValueError):
            open_store_url(bad)


async def test_unreachable_store_raises_store_error(tmp_path: Path) -> None:
    etcd = EtcdStore([f"127.0.0.1:{free_port()}"], timeout=0.5)
    with pytest.raises(StoreError, match="UNAVAILABLE"):
        await etcd.put("/x", b"")
    await etcd.close()
    sqlite = SqliteStore(tmp_path / "missing-dir" / "store.db")
    with pytest.raises(StoreError, match="sqlite"):
        await sqlite.get("/x")
    await sqlite.close()

