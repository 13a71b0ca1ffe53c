"""Leader election through the store contract (SQLite and etcd), leader duties on real control planes, and the
garbage collection of abandoned uploads and unreferenced blobs with its grace period."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

from cp_harness import ADMIN_TOKEN, Stubs, channel, eventually, push, running
from lmaas.control_plane.artifacts import ArtifactStore, collect_garbage
from lmaas.control_plane.leader import referenced_digests
from lmaas.control_plane.store.base import Store
from lmaas.control_plane.store.election import Election
from lmaas.protos.manifests import Manifest, ManifestFile

StoreFactory = object


async def test_leadership_hands_over_when_the_leader_dies(open_store: StoreFactory, store: Store) -> None:
    first = await open_store()  # type: ignore[operator]
    second = await open_store()  # type: ignore[operator]
    a = Election(first, "duties", "a", ttl=1)
    b = Election(second, "duties", "b", ttl=1)
    async with asyncio.timeout(15):
        await a.campaign()
    assert a.leading and await b.leader() == "a"
    campaigning = asyncio.create_task(b.campaign())
    await asyncio.sleep(0.5)
    assert not campaigning.done()  # one leader at a time
    await first.close()  # the leader dies: its keepalives stop, its lease expires
    async with asyncio.timeout(15):
        await campaigning
    assert b.leading and await b.leader() == "b"
    # a resignation hands over at once
    c = Election(store, "duties", "c", ttl=5)
    waiting = asyncio.create_task(c.campaign())
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await b.resign()
    async with asyncio.timeout(15):
        await waiting
    assert await c.leader() == "c"
    lost = asyncio.create_task(c.lost())
    await c.resign()
    async with asyncio.timeout(5):
        await lost
    assert await c.leader() is None


async def test_one_of_two_control_planes_leads_and_the_other_takes_over(store: Store, tmp_path: Path) -> None:
    async with running(store, tmp_path, replica_id="r1") as one:
        await eventually(lambda: one.leader.election.leading)
        async with running(store, tmp_path, replica_id="r2") as two:
            await asyncio.sleep(0.3)
            assert not two.leader.election.leading
            await one.stop(grace=0.1)  # resigns: r2 takes over without waiting for a lease to expire
            await eventually(lambda: two.leader.election.leading)
            assert await two.leader.election.leader() == "r2"


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


async def test_gc_keeps_referenced_and_recent_blobs_and_removes_old_garbage(store: Store, tmp_path: Path) -> None:
    async with running(store, tmp_path) as cp, channel(cp, ADMIN_TOKEN) as ch:
        stubs = Stubs(ch)
        artifacts: ArtifactStore = cp.artifacts
        kept = await push(stubs, "m", b"weights that a version references")
        # a directory version: its files are referenced through its manifest only
        files = {"config.json": b"{}", "model.bin": b"directory weights"}
        for data in files.values():
            digest = hashlib.sha256(data).hexdigest()
            blob = artifacts.path(digest)
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
        listed = [ManifestFile(p, hashlib.sha256(d).hexdigest(), len(d)) for p, d in files.items()]
        manifest = Manifest.of("llm", listed)
        dir_version = await push(stubs, "d", manifest.to_bytes(), fmt="llm")
        # garbage: an unreferenced blob and an abandoned upload, each once fresh and once old
        orphans = []
        for data in (b"orphan, old", b"orphan, fresh"):
            blob = artifacts.path(hashlib.sha256(data).hexdigest())
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            orphans.append(blob)
        partials = [artifacts.root / "uploads" / f"{c * 64}.partial" for c in "ab"]
        for p in partials:
            p.write_bytes(b"half an upload")
        everything = [artifacts.path(kept.digest), artifacts.path(dir_version.digest),
                      *(artifacts.path(hashlib.sha256(d).hexdigest()) for d in files.values())]
        for path in [*everything, orphans[0], partials[0]]:
            _age(path, 7200)

        referenced = await referenced_digests(cp.store, artifacts)
        assert {kept.digest, dir_version.digest, *(hashlib.sha256(d).hexdigest() for d in files.values())} <= referenced
        done = await collect_garbage(artifacts, referenced, grace=3600)
        assert (done.partial_uploads, done.blobs) == (1, 1)
        assert all(p.exists() for p in everything)  # referenced, however old
        assert not orphans[0].exists() and orphans[1].exists()  # the fresh one is within the grace period
        assert not partials[0].exists() and partials[1].exists()
