"""Content-addressed artifact store on a local directory.

Layout under ``root``::

    sha256/ab/cdef...        verified blobs, named by their digest (ab = first two hex digits)
    uploads/<digest>.partial bytes of an upload in progress or interrupted (resume from its size)

Every path is built from a validated lowercase hex sha256, never from a user
string. A blob appears only by an atomic rename of a fully received, fsynced
and verified file, so readers never see a partial artifact; the same bytes
uploaded twice are stored once. Concurrent uploads of one digest (from any
process sharing the directory) are excluded with ``flock``: the second one gets
ABORTED. Filesystem errors become :class:`~lmaas.protos.errors.Internal`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lmaas.protos.digests import sha256_file
from lmaas.protos.errors import (
    Aborted,
    ArtifactNotFound,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
)

__all__ = ["CHUNK_SIZE", "ArtifactStore", "GarbageCollected", "check_digest", "collect_garbage", "sha256_file"]

CHUNK_SIZE = 1 << 20
_DIGEST = re.compile(r"[0-9a-f]{64}")


def check_digest(digest: str) -> str:
    """A lowercase hex sha256, or InvalidArgument."""
    if not _DIGEST.fullmatch(digest):
        raise InvalidArgument(f"invalid sha256 digest {digest!r}: expected 64 lowercase hex characters")
    return digest


class ArtifactStore:
    """Blobs by sha256 under ``root``; at most ``max_bytes`` per artifact."""

    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "uploads").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / "sha256" / digest[:2] / digest[2:]

    def _partial(self, digest: str) -> Path:
        return self.root / "uploads" / f"{check_digest(digest)}.partial"

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise ArtifactNotFound(digest) from None

    def upload_offset(self, digest: str) -> int:
        """Bytes kept from an interrupted upload of ``digest`` (0 if none)."""
        try:
            return self._partial(digest).stat().st_size
        except FileNotFoundError:
            return 0

    async def receive(self, digest: str, size: int, offset: int, chunks: AsyncIterator[bytes]) -> bool:
        """Store ``size`` bytes with sha256 ``digest``, the ones from ``offset`` on coming from ``chunks``.

        Returns True when the blob was already stored (the chunks are not read).
        Raises InvalidArgument for a truncated upload (what arrived is kept for a
        resume), DataLoss for a digest mismatch and InvalidArgument for surplus
        bytes (the partial file is deleted), FailedPrecondition for a resume
        offset beyond what is kept, Aborted while another upload of the digest runs.
        """
        check_digest(digest)
        if size < 0 or offset < 0 or offset > size:
            raise InvalidArgument(f"invalid upload range: offset {offset}, size_bytes {size}")
        if size > self.max_bytes:
            raise ResourceExhausted(f"artifact of {size} bytes exceeds the limit of {self.max_bytes} bytes")
        if self.exists(digest):
            if self.size(digest) != size:
                raise DataLoss(f"artifact sha256:{digest} is stored with {self.size(digest)} bytes, not {size}")
            return True
        partial = self._partial(digest)
        f = await asyncio.to_thread(_open_locked, partial, digest)
        try:
            if self.exists(digest):  # another upload finished while this one waited for the lock
                await asyncio.to_thread(_discard, partial)
                return True
            kept = os.fstat(f.fileno()).st_size
            if offset > kept:
                raise FailedPrecondition(f"cannot resume sha256:{digest} at {offset}: only {kept} bytes are kept")
            await asyncio.to_thread(_seek_truncate, f, offset)
            received = offset
            async for chunk in chunks:
                received += len(chunk)
                if received > size:
                    await asyncio.to_thread(_discard, partial)
                    raise InvalidArgument(f"upload of sha256:{digest} sent more than the declared {size} bytes")
                await asyncio.to_thread(f.write, chunk)
            await asyncio.to_thread(_flush, f)
            if received < size:
                raise InvalidArgument(
                    f"upload of sha256:{digest} truncated: {received} of {size} bytes arrived; resume from {received}"
                )
            actual = await asyncio.to_thread(sha256_file, partial)
            if actual != digest:
                await asyncio.to_thread(_discard, partial)
                raise DataLoss(f"artifact digest mismatch: declared sha256:{digest}, received sha256:{actual}")
            await asyncio.to_thread(self._publish, partial, digest)
            return False
        finally:
            f.close()

    def _publish(self, partial: Path, digest: str) -> None:
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def read(
        self, digest: str, offset: int = 0, chunk_size: int = CHUNK_SIZE
    ) -> AsyncIterator[tuple[int, bytes]]:
        """``(offset, bytes)`` pieces of a stored blob from ``offset`` on."""
        path = self.path(digest)
        try:
            f = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise ArtifactNotFound(digest) from None
        try:
            total = os.fstat(f.fileno()).st_size
            if offset < 0 or offset > total:
                raise InvalidArgument(f"offset {offset} is outside artifact sha256:{digest} of {total} bytes")
            f.seek(offset)
            while data := await asyncio.to_thread(f.read, chunk_size):
                yield offset, data
                offset += len(data)
        finally:
            f.close()


@dataclass(frozen=True)
class GarbageCollected:
    partial_uploads: int
    blobs: int
    bytes: int


def _collect(store: ArtifactStore, referenced: frozenset[str], grace: float, now: float) -> GarbageCollected:
    partials = blobs = freed = 0
    for partial in (store.root / "uploads").glob("*.partial"):
        try:
            st = partial.stat()
            if now - st.st_mtime < grace:
                continue
            fd = os.open(partial, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # an upload still writing it holds the lock: keep it
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            partial.unlink(missing_ok=True)
            partials, freed = partials + 1, freed + st.st_size
        finally:
            os.close(fd)
    for blob in (store.root / "sha256").glob("??/*"):
        digest = blob.parent.name + blob.name
        if digest in referenced or not _DIGEST.fullmatch(digest):
            continue
        try:
            st = blob.stat()
            if now - st.st_mtime < grace:
                continue  # maybe a file of a directory version whose manifest is not registered yet
            blob.unlink()
        except FileNotFoundError:
            continue
        blobs, freed = blobs + 1, freed + st.st_size
    return GarbageCollected(partials, blobs, freed)


async def collect_garbage(store: ArtifactStore, referenced: Iterable[str], *, grace: float) -> GarbageCollected:
    """Delete partial uploads untouched for ``grace`` seconds and blobs that no version references (directly or
    through a manifest: the caller lists every digest in use) and that are older than ``grace`` seconds."""
    return await asyncio.to_thread(_collect, store, frozenset(referenced), grace, time.time())


def _open_locked(path: Path, digest: str) -> BinaryIO:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Aborted(f"an upload of sha256:{digest} is already in progress; retry later") from None
    return os.fdopen(fd, "r+b")


def _seek_truncate(f: BinaryIO, offset: int) -> None:
    f.truncate(offset)
    f.seek(offset)


def _flush(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
