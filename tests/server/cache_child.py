"""A process that uses a shared artifact cache, for tests/server/test_cache_shared.py.

``python cache_child.py ROOT ADDRESS DIGEST SIZE MODE``: prints ``start`` and fetches the artifact from the
Artifacts service at ADDRESS into the cache at ROOT, then prints ``ok <sha256 of the file>``. MODE ``fetch``
exits then; ``hold`` keeps the artifact in use (its lease) until stdin closes.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc.aio
from lmaas.protos.digests import sha256_file
from lmaas.protos.lmaas.worker.v1 import artifacts_pb2_grpc
from lmaas.server.artifact_cache import ArtifactCache

__all__: list[str] = []


async def main(root: str, address: str, digest: str, size: int, mode: str) -> None:
    cache = ArtifactCache(Path(root))
    async with grpc.aio.insecure_channel(address) as channel:
        print("start", flush=True)
        path = await cache.fetch(artifacts_pb2_grpc.ArtifactsStub(channel), digest, "onnx", size)
        print("ok", sha256_file(path), flush=True)
    if mode == "hold":
        await asyncio.to_thread(sys.stdin.read)  # until the test closes our stdin
        await cache.release(digest)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
