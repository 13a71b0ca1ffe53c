"""The worker's cache of artifacts downloaded from the control plane.

Layout under ``root``::

    sha256/ab/<digest>/model.<ext>   a single-file version, named as lmaas.protos.formats says
                                     (model.onnx, model.pt, model.pt2) so the loader recognizes it
    blobs/ab/<digest>                one file of a directory version, or a manifest; shared by every
                                     version that holds the same bytes, read-only
    dirs/ab/<digest>/                a directory version (``llm``), named by its manifest's digest; its
                                     files are hard links to their blobs

A download goes to ``<file>.partial`` and resumes from that file's size after
an interruption; the whole file is verified against its sha256 before an
atomic rename makes it visible. A directory version is built in a staging
folder private to this process (``dirs/ab/.<digest>.partial-<pid>-<random>``) once every
file is verified, and renamed into place in one step, so a crash never leaves
a half directory under its digest. Manifest paths are checked again here and
must stay inside the version folder. A cached file or directory is verified
again the first time this process uses it: a corrupt one is deleted and
fetched again. Processes sharing one cache take a ``flock`` per download.
Paths come only from validated digests and manifest paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from lmaas.protos.compression import unpack
from lmaas.protos.digests import sha256_file as _sha256
from lmaas.protos.errors import DataLoss, InvalidArgument
from lmaas.protos.formats import FORMATS, get_format
from lmaas.protos.lmaas.worker.v1 import artifacts_pb2, artifacts_pb2_grpc
from lmaas.protos.manifests import MAX_MANIFEST_BYTES, Manifest, check_path

__all__ = ["EXTENSIONS", "ArtifactCache"]

log = logging.getLogger("lmaas.worker.cache")

#: Single-file format → the cached file's extension.
EXTENSIONS = {f.name: Path(f.file_name).suffix for f in FORMATS.values() if not f.directory}
_DIGEST = re.compile(r"[0-9a-f]{64}")
_BLOCK = 1 << 20
# Private folders: a directory being built (.<digest>.partial-<pid>-<random>) or deleted (...deleting-<pid>-<ns>).
_STAGING = re.compile(r"\.([0-9a-f]{64})\.(?:partial|deleting)-(\d+)-\w+")


class ArtifactCache:
    """Downloads, verifies and keeps artifacts; ``max_bytes_per_second`` throttles downloads (None = no limit)."""

    def __init__(self, root: Path, *, max_bytes_per_second: float | None = None) -> None:
        self.root = root
        self.max_bytes_per_second = max_bytes_per_second
        self._verified: set[Path] = set()
        self._locks: dict[Path, asyncio.Lock] = {}

    def path(self, digest: str, fmt: str) -> Path:
        """Where a version's artifact lives: a file, or a folder for a directory format."""
        _check_digest(digest)
        try:
            f = get_format(fmt)
        except InvalidArgument:
            raise InvalidArgument(f"unknown artifact format {fmt!r}: expected one of {', '.join(FORMATS)}") from None
        if f.directory:
            return self.root / "dirs" / digest[:2] / digest
        return self.root / "sha256" / digest[:2] / digest / f.file_name

    def blob_path(self, digest: str) -> Path:
        """Where one file of a directory version (or a manifest) is kept."""
        return self.root / "blobs" / _check_digest(digest)[:2] / digest

    async def fetch(
        self, stub: artifacts_pb2_grpc.ArtifactsStub, digest: str, fmt: str, size: int,
        *, metadata: Sequence[tuple[str, str]] = (),
    ) -> Path:
        """The verified local file (or directory) of an artifact, downloading (or resuming) it if needed.

        ``metadata`` goes with the download calls (the worker's bearer token).
        For a directory format ``size`` is the sum of the files (informative only).
        """
        path = self.path(digest, fmt)
        if get_format(fmt).directory:
            return await self._fetch_directory(stub, digest, fmt, path, metadata)
        path = await self._fetch_file(stub, digest, size, path, metadata)
        if inner := get_format(fmt).packed:  # compressed: the loader gets the original, verified by its sha256
            return await asyncio.to_thread(unpack, path, path.with_name(get_format(inner).file_name))
        return path

    async def _fetch_file(
        self, stub: artifacts_pb2_grpc.ArtifactsStub, digest: str, size: int, path: Path,
        metadata: Sequence[tuple[str, str]], *, read_only: bool = False,
    ) -> Path:
        async with self._locks.setdefault(path, asyncio.Lock()):
            if path in self._verified and path.is_file():
                return path
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = await asyncio.to_thread(_lock, path.with_name(path.name + ".lock"))
            try:
                if path.is_file():
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
                        if read_only:
                            partial.chmod(0o444)  # shared by hard links: nobody may write through one
                        os.replace(partial, path)
                        self._verified.add(path)
                        return path
                    partial.unlink()
                    if not resumed or attempt:
                        raise DataLoss(f"downloaded artifact has sha256:{actual}, expected sha256:{digest}")
                    log.warning("resumed download of sha256:%s failed verification; downloading it whole", digest)
                raise AssertionError("unreachable")  # pragma: no cover
            finally:
                lock.close()

    async def _fetch_directory(
        self, stub: artifacts_pb2_grpc.ArtifactsStub, digest: str, fmt: str, path: Path,
        metadata: Sequence[tuple[str, str]],
    ) -> Path:
        async with self._locks.setdefault(path, asyncio.Lock()):
            if path in self._verified and path.is_dir():
                return path
            manifest = await self._manifest(stub, digest, metadata)
            if manifest.format != fmt:
                raise DataLoss(f"manifest sha256:{digest} is of format {manifest.format!r}, expected {fmt!r}")
            if path.is_dir():
                problem = await asyncio.to_thread(_check_tree, path, manifest)
                if problem is None:
                    self._verified.add(path)
                    return path
                log.warning("cached directory %s: %s; building it again", path, problem)
                await asyncio.to_thread(_remove_tree, path)
            blobs: dict[str, Path] = {}
            for f in manifest.files:
                if f.sha256 in blobs:
                    continue
                try:
                    blobs[f.sha256] = await self._fetch_file(
                        stub, f.sha256, f.size, self.blob_path(f.sha256), metadata, read_only=True
                    )
                except DataLoss as exc:
                    raise DataLoss(f"file {f.path!r} of version sha256:{digest[:12]}: {exc.message}") from exc
            await asyncio.to_thread(_materialise, path, manifest, blobs)
            self._verified.add(path)
            return path

    async def _manifest(
        self, stub: artifacts_pb2_grpc.ArtifactsStub, digest: str, metadata: Sequence[tuple[str, str]]
    ) -> Manifest:
        """A directory version's manifest: the verified cached copy, or downloaded whole (it is small)."""
        path = self.blob_path(digest)
        if path.is_file():
            data = await asyncio.to_thread(path.read_bytes)
            if hashlib.sha256(data).hexdigest() == digest:
                return Manifest.parse(data)
            log.warning("cached manifest %s is corrupt; downloading it again", path)
        received = bytearray()
        request = artifacts_pb2.DownloadRequest(digest=digest, offset=0)
        async for chunk in stub.Download(request, metadata=tuple(metadata) or None):
            if chunk.offset != len(received):
                raise DataLoss(f"manifest sha256:{digest}: chunk at {chunk.offset}, expected {len(received)}")
            received += chunk.data
            if len(received) > MAX_MANIFEST_BYTES:
                raise DataLoss(f"manifest sha256:{digest} is larger than {MAX_MANIFEST_BYTES} bytes")
        actual = hashlib.sha256(received).hexdigest()
        if actual != digest:
            raise DataLoss(f"downloaded manifest has sha256:{actual}, expected sha256:{digest}")
        manifest = Manifest.parse(bytes(received))
        await asyncio.to_thread(_write_atomically, path, bytes(received))
        return manifest

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
        """Delete a cached artifact (and any partial download of it); a directory's blobs stay for other versions."""
        path = self.path(digest, fmt)
        self._verified.discard(path)
        if get_format(fmt).directory:
            _remove_tree(path)
            return
        inner = get_format(fmt).packed
        unpacked = (path.with_name(get_format(inner).file_name),) if inner else ()
        for p in (path, path.with_name(path.name + ".partial"), *unpacked):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _check_digest(digest: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise InvalidArgument(f"invalid artifact digest {digest!r}")
    return digest


def _check_tree(root: Path, manifest: Manifest) -> str | None:
    """What is wrong with a materialised directory (None: exactly the manifest's files, each verified)."""
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}
    expected = {f.path for f in manifest.files}
    if present != expected:
        odd = sorted(present ^ expected)[0]
        return f"{odd!r} is {'missing' if odd in expected else 'not in the manifest'}"
    for f in manifest.files:
        file = root / f.path
        if file.is_symlink() or file.stat().st_size != f.size or _sha256(file) != f.sha256:
            return f"file {f.path!r} does not match its sha256"
    return None


def _materialise(target: Path, manifest: Manifest, blobs: dict[str, Path]) -> None:
    """Build the directory of ``manifest`` from verified blobs and publish it at ``target`` in one rename."""
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=parent))
    inside = staging.resolve()
    for f in manifest.files:
        dest = staging / check_path(f.path)
        if not dest.resolve().is_relative_to(inside):  # check_path forbids this; never trust one check
            raise DataLoss(f"manifest path {f.path!r} escapes the version folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(blobs[f.sha256], dest)
        except OSError:  # a file system without hard links: copy
            shutil.copyfile(blobs[f.sha256], dest)
    try:
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():
            raise
        _remove_tree(staging)  # another process published the same version first
    _sync_dir(parent)


def _remove_stale_staging(parent: Path) -> None:
    """Staging folders left by processes that died mid-build."""
    for child in parent.iterdir():
        m = _STAGING.fullmatch(child.name)
        if m is None or int(m.group(2)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(2)), 0)
        except ProcessLookupError:
            shutil.rmtree(child, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def _remove_tree(path: Path) -> None:
    """Delete a directory: renamed aside first, so it disappears from its name at once."""
    if not path.exists():
        return
    doomed = path.with_name(f".{path.name}.deleting-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        _sync(f)
    os.chmod(name, 0o444)
    os.replace(name, path)


def _lock(path: Path) -> BinaryIO:
    """An exclusive flock on ``path`` (held until the returned file is closed); waits for another process."""
    f = path.open("ab")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    except BaseException:
        f.close()
        raise
    return f


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_append(path: Path) -> BinaryIO:
    return path.open("ab")


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())
