"""The worker's cache of artifacts downloaded from the control plane.

Layout under ``root``: ``sha256/ab/<digest>/model.<ext>`` with the extension
of the artifact's format (``model.onnx``, ``model.pt`` for TorchScript,
``model.pt2`` for torch.export), so the loader recognizes it by name. A
download goes to ``model.<ext>.partial`` and resumes from that file's size
after an interruption; the whole file is verified against its sha256 before
an atomic rename makes it visible. A cached file is verified again the first
time this process uses it: a corrupt one is deleted and downloaded again.
Paths come only from validated digests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from lmaas.protos.digests import sha256_file as _sha256
from lmaas.protos.errors import DataLoss, InvalidArgument
from lmaas.protos.lmaas.worker.v1 import artifacts_pb2, artifacts_pb2_grpc

__all__ = ["EXTENSIONS", "ArtifactCache"]

log = logging.getLogger("lmaas.worker.cache")

EXTENSIONS = {"onnx": ".onnx", "torchscript": ".pt", "torch_export": ".pt2"}
_DIGEST = re.compile(r"[0-9a-f]{64}")
_BLOCK = 1 << 20


class ArtifactCache:
    """Downloads, verifies and keeps artifacts; ``max_bytes_per_second`` throttles downloads (None = no limit)."""

    def __init__(self, root: Path, *, max_bytes_per_second: float | None = None) -> None:
        self.root = root
        self.max_bytes_per_second = max_bytes_per_second
        self._verified: set[Path] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    def path(self, digest: str, fmt: str) -> Path:
        if not _DIGEST.fullmatch(digest):
            raise InvalidArgument(f"invalid artifact digest {digest!r}")
        ext = EXTENSIONS.get(fmt)
        if ext is None:
            raise InvalidArgument(f"unknown artifact format {fmt!r}: expected one of {', '.join(EXTENSIONS)}")
        return self.root / "sha256" / digest[:2] / digest / f"model{ext}"

    async def fetch(
        self, stub: artifacts_pb2_grpc.ArtifactsStub, digest: str, fmt: str, size: int,
        *, metadata: Sequence[tuple[str, str]] = (),
    ) -> Path:
        """The verified local file of an artifact, downloading (or resuming) it if needed.

        ``metadata`` goes with the download call (the worker's bearer token).
        """
        path = self.path(digest, fmt)
        async with self._locks.setdefault(digest, asyncio.Lock()):
            if path.is_file():
                if path in self._verified:
                    return path
                if await asyncio.to_thread(_sha256, path) == digest:
                    self._verified.add(path)
                    return path
                log.warning("cached artifact %s is corrupt; downloading it again", path)
                path.unlink()
            partial = path.with_name(path.name + ".partial")
            for attempt in range(2):
                resumed = await self._download(stub, digest, size, partial, metadata)
                actual = await asyncio.to_thread(_sha256, partial)
                if actual == digest:
                    os.replace(partial, path)
                    self._verified.add(path)
                    return path
                partial.unlink()
                if not resumed or attempt:
                    raise DataLoss(f"downloaded artifact has sha256:{actual}, expected sha256:{digest}")
                log.warning("resumed download of sha256:%s failed verification; downloading it whole", digest)
            raise AssertionError("unreachable")  # pragma: no cover

    async def _download(
        self, stub: artifacts_pb2_grpc.ArtifactsStub, digest: str, size: int, partial: Path,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> bool:
        """Append the rest of the artifact to ``partial``; True if it resumed from an existing part."""
        partial.parent.mkdir(parents=True, exist_ok=True)
        offset = partial.stat().st_size if partial.exists() else 0
        if offset > size:
            partial.unlink()
            offset = 0
        if offset == size and size > 0:
            return True
        resumed = offset > 0
        if resumed:
            log.info("resuming download of sha256:%s at byte %d of %d", digest, offset, size)
        started = time.monotonic()
        received = 0
        f = await asyncio.to_thread(_open_append, partial)
        try:
            request = artifacts_pb2.DownloadRequest(digest=digest, offset=offset)
            async for chunk in stub.Download(request, metadata=tuple(metadata) or None):
                if chunk.offset != offset:
                    raise DataLoss(f"artifact sha256:{digest}: chunk at {chunk.offset}, expected {offset}")
                await asyncio.to_thread(f.write, chunk.data)
                offset += len(chunk.data)
                received += len(chunk.data)
                if offset > size:
                    raise DataLoss(f"artifact sha256:{digest} is larger than the announced {size} bytes")
                if self.max_bytes_per_second:
                    ahead = received / self.max_bytes_per_second - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            await asyncio.to_thread(_sync, f)
        finally:
            f.close()
        return resumed

    def discard(self, digest: str, fmt: str) -> None:
        """Delete a cached artifact (and any partial download of it)."""
        path = self.path(digest, fmt)
        self._verified.discard(path)
        for p in (path, path.with_name(path.name + ".partial")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _open_append(path: Path) -> BinaryIO:
    return path.open("ab")


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())
