"""One artifact cache shared by several real processes (issue 12, item 1).

A real Artifacts gRPC server (the control plane's servicer over a real ArtifactStore, counting its downloads)
on a loopback port, worker-side caches in child processes (``cache_child.py``) and in this one. Nothing waits
on time: every step waits for a condition (a line from a child, a count on the server, a file on disk).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc.aio
import pytest
from lmaas.control_plane.artifacts import ArtifactStore
from lmaas.control_plane.servicers import ArtifactsServicer
from lmaas.protos.lmaas.worker.v1 import artifacts_pb2, artifacts_pb2_grpc
from lmaas.server.artifact_cache import ArtifactCache, evict

CHILD = Path(__file__).with_name("cache_child.py")
WAIT = 60.0  # a bound on each wait (a hang fails instead of blocking CI), never a time that is measured


class CountingArtifacts(ArtifactsServicer):
    """The control plane's Artifacts servicer; counts downloads and can hold the first one after one chunk."""

    def __init__(self, store: ArtifactStore) -> None:
        super().__init__(store)
        self.offsets: list[int] = []  # resume offset of each Download call
        self.hold = asyncio.Event()  # set: the first download goes on after its first chunk
        self.hold.set()

    async def Download(
        self, request: artifacts_pb2.DownloadRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[artifacts_pb2.DownloadChunk]:
        first = not self.offsets
        self.offsets.append(request.offset)
        sent = 0
        async for chunk in super().Download(request, context):
            yield chunk
            sent += 1
            if first and sent == 1:
                await self.hold.wait()


class Served:
    def __init__(self, servicer: CountingArtifacts, address: str, store: ArtifactStore) -> None:
        self.servicer, self.address, self.store = servicer, address, store

    async def push(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        await self.store.receive(digest, len(data), 0, chunks())
        return digest


@pytest.fixture()
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store = ArtifactStore(tmp_path / "store", max_bytes=1 << 30)
    servicer = CountingArtifacts(store)
    server = grpc.aio.server()
    artifacts_pb2_grpc.add_ArtifactsServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield Served(servicer, f"127.0.0.1:{port}", store)
    await server.stop(None)


async def eventually(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not check():
            await asyncio.sleep(0.02)


async def child(root: Path, served: Served, digest: str, size: int, mode: str = "fetch") -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), str(root), served.address, digest, str(size), mode,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )


async def line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(WAIT):
        return (await proc.stdout.readline()).decode().strip()


def leftovers(root: Path) -> list[Path]:
    """Partial downloads and private folders anywhere in the cache."""
    return [p for p in root.rglob("*") if ".partial" in p.name or ".deleting" in p.name or ".unpacking" in p.name]


async def test_four_processes_download_one_digest_once(served: Served, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # three chunks
    digest = await served.push(data)
    root = tmp_path / "cache"
    served.servicer.hold.clear()  # the first download stays in flight until all four processes run
    procs = [await child(root, served, digest, len(data)) for _ in range(4)]
    assert [await line(p) for p in procs] == ["start"] * 4
    await eventually(lambda: len(served.servicer.offsets) == 1)
    served.servicer.hold.set()
    results = [await line(p) for p in procs]
    codes = [await asyncio.wait_for(p.wait(), WAIT) for p in procs]
    assert codes == [0, 0, 0, 0]
    assert results == [f"ok {digest}"] * 4  # each verified the same, whole file
    assert served.servicer.offsets == [0]  # one download for four processes
    path = ArtifactCache(root).path(digest, "onnx")
    assert path.read_bytes() == data
    assert leftovers(root) == []


async def test_sigkill_during_a_download_leaves_the_cache_usable(served: Served, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    digest = await served.push(data)
    root = tmp_path / "cache"
    entry = ArtifactCache(root).path(digest, "onnx").parent
    served.servicer.hold.clear()
    proc = await child(root, served, digest, len(data))
    assert await line(proc) == "start"

    def part_written() -> bool:  # the first chunk reached the child's own partial file
        return any(p.stat().st_size > 0 for p in entry.glob("model.onnx.partial-*")) if entry.is_dir() else False

    await eventually(part_written)
    proc.send_signal(signal.SIGKILL)
    assert await asyncio.wait_for(proc.wait(), WAIT) == -signal.SIGKILL
    served.servicer.hold.set()

    cache = ArtifactCache(root)  # a fresh process's view: the dead one's locks went with it
    async with grpc.aio.insecure_channel(served.address) as channel:
        path = await cache.fetch(artifacts_pb2_grpc.ArtifactsStub(channel), digest, "onnx", len(data))
    assert path.read_bytes() == data
    assert served.servicer.offsets[0] == 0 and served.servicer.offsets[1] > 0  # resumed the dead one's part
    assert leftovers(root) == []
    # Another process finds it whole and verified, without downloading.
    again = await child(root, served, digest, len(data))
    assert [await line(again), await line(again)] == ["start", f"ok {digest}"]
    assert await asyncio.wait_for(again.wait(), WAIT) == 0
    assert len(served.servicer.offsets) == 2


async def test_eviction_is_lru_and_never_removes_an_artifact_in_use(served: Served, tmp_path: Path) -> None:
    a, b, c = (os.urandom(200_000) for _ in range(3))
    da, db, dc = [await served.push(x) for x in (a, b, c)]
    root = tmp_path / "cache"
    holder = await child(root, served, da, len(a), "hold")  # another process serves A
    assert [await line(holder), await line(holder)] == ["start", f"ok {da}"]

    cache = ArtifactCache(root)  # no size limit: nothing is evicted while we set the scene
    async with grpc.aio.insecure_channel(served.address) as channel:
        stub = artifacts_pb2_grpc.ArtifactsStub(channel)
        for digest, data in ((db, b), (dc, c)):
            await cache.fetch(stub, digest, "onnx", len(data))
    await cache.retain(set())  # this process no longer uses B or C
    for age, digest in enumerate((da, db, dc)):  # last uses: A longest ago, then B, then C
        os.utime(cache.lock_path(digest), (1_000_000 + age, 1_000_000 + age))
    exists = {d: cache.path(d, "onnx").is_file for d in (da, db, dc)}

    freed = evict(root, 2 * 200_000 + 1000)  # room for two: the LRU artifact goes, but A is in use
    assert (exists[da](), exists[db](), exists[dc]()) == (True, False, True)
    assert freed >= 200_000
    evict(root, 0)  # nothing fits: everything unused goes
    assert (exists[da](), exists[dc]()) == (True, False)

    assert holder.stdin is not None
    holder.stdin.close()  # A is no longer in use
    assert await asyncio.wait_for(holder.wait(), WAIT) == 0
    evict(root, 0)
    assert not exists[da]()
    assert leftovers(root) == []

    # An evicted artifact is simply fetched again; a limit on the cache keeps what this process uses.
    small = ArtifactCache(root, max_bytes=1)
    async with grpc.aio.insecure_channel(served.address) as channel:
        path = await small.fetch(artifacts_pb2_grpc.ArtifactsStub(channel), da, "onnx", len(a))
    assert path.read_bytes() == a  # over the limit, but leased: kept
    await small.release(da)
    assert not path.exists()  # released over the limit: evicted


async def test_eviction_clears_what_dead_processes_left(tmp_path: Path) -> None:
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()  # its pid is no process now
    root = tmp_path / "cache"
    digest = "ab" * 32
    for name in (f".{digest}.deleting-{dead.pid}-1", f".{digest}.partial-{dead.pid}-x"):
        folder = root / "sha256" / "ab" / name
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"half")
    evict(root, 1 << 30)
    assert leftovers(root) == []


def test_cache_size_flag_is_a_size(tmp_path: Path) -> None:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "lmaas.cli", "worker", "--control-plane", "127.0.0.1:1", "--cache-size", "lots"],
        capture_output=True, text=True, timeout=WAIT, cwd=tmp_path,
    )
    assert proc.returncode == 2 and "--cache-size" in proc.stderr and "not a size" in proc.stderr, proc.stderr
