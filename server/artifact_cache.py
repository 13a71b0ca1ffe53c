"""The worker's cache of artifacts downloaded from the control plane.

Layout under ``root``::

    sha256/ab/<digest>/model.<ext>   a single-file version, named as lmaas.protos.formats says
                                     (model.onnx, model.pt, model.pt2) so the loader recognizes it
    blobs/ab/<digest>                one file of a directory version, or a manifest; shared by every
                                     version that holds the same bytes, read-only
    dirs/ab/<digest>/                a directory version (``llm``), named by its manifest's digest; its
                                     files are hard links to their blobs

    locks/ab/<digest>                the artifact's use lock (below); its mtime is the artifact's last use

A download goes to ``<file>.partial-<pid>``, a file private to the downloading
process, and resumes from a partial file left by an earlier (dead) download.
The whole file is verified against its sha256 before an atomic rename makes it
visible, so a reader never sees a partial file. A directory version is built
in a staging folder private to this process
(``dirs/ab/.<digest>.partial-<pid>-<random>``) once every file is verified, and
renamed into place in one step, so a crash never leaves a half directory under
its digest. Manifest paths are checked again here and must stay inside the
version folder. A cached file or directory is verified again the first time
this process uses it: a corrupt one is deleted and fetched again. Paths come
only from validated digests and manifest paths.

Any number of processes may share one cache (several workers on a node,
``--processes N``). Two ``flock`` s per artifact keep them apart:

- the *use lock* (``locks/ab/<digest>``), held shared by every process from the
  moment it asks for an artifact until it no longer serves it (:meth:`ArtifactCache.release`),
  so across downloading, loading and serving;
- the *download lock* (``<file>.lock``), held exclusively while one process
  checks, downloads and publishes: one download per digest at a time; the others
  wait and then find it verified.

Eviction (``max_bytes``, ``--cache-size``) removes the least recently used
artifacts until the cache fits; it takes an artifact's use lock exclusively
without waiting, so it never removes one that any process has open, is loading or
is downloading (if everything is in use the cache stays over its size, with a
warning). An evicted artifact is renamed aside before it is deleted; folders
and partial files of processes that died (mid-download, mid-build, mid-eviction)
are removed by the next eviction pass or adopted by the next download, so a
crash at any point leaves the cache usable.
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
from dataclasses import dataclass
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
_PARTIAL = re.compile(r"(.+)\.partial(?:-(\d+))?")  # a download in progress, or left by a dead process


class ArtifactCache:
    """Downloads, verifies and keeps artifacts; ``max_bytes_per_second`` throttles downloads (None = no limit)."""

    def __init__(
        self, root: Path, *, max_bytes_per_second: float | None = None, max_bytes: int | None = None
    ) -> None:
        self.root = root
        self.max_bytes_per_second = max_bytes_per_second
        self.max_bytes = max_bytes  # evict least recently used artifacts nobody uses above this (None: never)
        self._verified: set[Path] = set()
        self._locks: dict[Path, asyncio.Lock] = {}
        self._leases: dict[str, BinaryIO] = {}  # digest → its use lock, held shared while this process uses it
        self._leasing: dict[str, asyncio.Lock] = {}
        self._fetching: dict[str, int] = {}  # digest → fetches in progress (their leases stay)

    # ---- use leases ----

    def lock_path(self, digest: str) -> Path:
        """The use lock of an artifact (its mtime: the artifact's last use by any process)."""
        return self.root / "locks" / _check_digest(digest)[:2] / digest

    def leased(self) -> set[str]:
        """Digests this process holds a use lease on (never evicted, by any process, until released)."""
        return set(self._leases)

    async def acquire(self, digest: str) -> None:
        """Hold an artifact's use lock (shared) until :meth:`release`; marks it recently used. Idempotent."""
        async with self._leasing.setdefault(digest, asyncio.Lock()):
            held = self._leases.get(digest)
            if held is None:
                self._leases[digest] = await asyncio.to_thread(_lock_shared, self.lock_path(digest))
            else:
                await asyncio.to_thread(_touch, held)

    async def release(self, digest: str) -> None:
        """Stop using an artifact (after its model unloaded): it may be evicted; then keep the cache in size."""
        self._drop(digest)
        await self.enforce_limit()

    async def retain(self, digests: set[str]) -> None:
        """Release every lease but those of ``digests``."""
        for digest in self.leased() - digests - set(self._fetching):
            self._drop(digest)
        await self.enforce_limit()

    def _drop(self, digest: str) -> None:
        f = self._leases.pop(digest, None)
        if f is None:
            return
        self._verified = {p for p in self._verified if digest not in p.parts}  # may be evicted: check it again
        with contextlib.suppress(OSError):
            _touch(f)  # its last use ends now: the LRU order counts from here
        f.close()

    async def enforce_limit(self) -> int:
        """Evict least recently used artifacts nobody uses until the cache fits ``max_bytes``; bytes freed."""
        if self.max_bytes is None:
            return 0
        return await asyncio.to_thread(evict, self.root, self.max_bytes)

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
        fresh = digest not in self._leases
        self._fetching[digest] = self._fetching.get(digest, 0) + 1
        try:
            return await self._fetch_leased(stub, digest, fmt, size, path, fresh, metadata)
        finally:
            self._fetching[digest] -= 1
            if not self._fetching[digest]:
                del self._fetching[digest]

    async def _fetch_leased(
        self, stub: artifacts_pb2_grpc.ArtifactsStub, digest: str, fmt: str, size: int, path: Path, fresh: bool,
        metadata: Sequence[tuple[str, str]],
    ) -> Path:
        await self.acquire(digest)  # from here on no process evicts it, until release()
        try:
            if get_format(fmt).directory:
                path = await self._fetch_directory(stub, digest, fmt, path, metadata)
            else:
                path = await self._fetch_file(stub, digest, size, path, metadata)
                if inner := get_format(fmt).packed:  # compressed: the loader gets the original, verified
                    original: Path = await asyncio.to_thread(unpack, path, path.with_name(get_format(inner).file_name))
                    path = original
        except BaseException:
            if fresh:
                self._drop(digest)
            raise
        if fresh:
            await self.enforce_limit()
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
                        await asyncio.to_thread(_remove_partials, path)  # a crash left them after the publish
                        self._verified.add(path)
                        return path
                    log.warning("cached artifact %s is corrupt; downloading it again", path)
                    path.unlink()
                partial = await asyncio.to_thread(_adopt_partial, path)
                for attempt in range(2):
                    resumed = await self._download(stub, digest, size, partial, metadata)
                    actual = await asyncio.to_thread(_sha256, partial)
                    if actual == digest:
                        if read_only:
                            partial.chmod(0o444)  # shared by hard links: nobody may write through one
                        os.replace(partial, path)
                        _sync_dir(path.parent)
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
            building: list[str] = []
            try:
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
                    if f.sha256 not in self._leases:  # leased only while the folder is built: its hard links then
                        await self.acquire(f.sha256)  # keep the blob (eviction skips a blob with other links)
                        building.append(f.sha256)
                    try:
                        blobs[f.sha256] = await self._fetch_file(
                            stub, f.sha256, f.size, self.blob_path(f.sha256), metadata, read_only=True
                        )
                    except DataLoss as exc:
                        raise DataLoss(f"file {f.path!r} of version sha256:{digest[:12]}: {exc.message}") from exc
                await asyncio.to_thread(_materialise, path, manifest, blobs)
                self._verified.add(path)
                return path
            finally:
                for blob in building:
                    self._drop(blob)

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
        partials = [p for p in path.parent.glob(path.name + ".partial*")] if path.parent.is_dir() else []
        for p in (path, *partials, *unpacked):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


@dataclass(frozen=True, slots=True)
class _Entry:
    path: Path
    digest: str
    blob: bool  # a blob (a single file) rather than a folder
    used: float  # last use (its use lock's mtime), for LRU


def evict(root: Path, max_bytes: int) -> int:
    """Remove least recently used artifacts that no process uses until the cache under ``root`` holds at most
    ``max_bytes``; returns the bytes freed. One process evicts at a time: the others wait for it, then look
    again (skipping instead could leave an artifact released meanwhile in the cache until the next release)."""
    (root / "locks").mkdir(parents=True, exist_ok=True)
    with (root / "locks" / "evicting").open("ab") as guard:
        fcntl.flock(guard.fileno(), fcntl.LOCK_EX)  # a pass is short: scans and unlinks, never a download
        for parent in (*root.glob("sha256/??"), *root.glob("dirs/??")):
            _remove_stale_staging(parent)  # left by processes that died mid-build or mid-eviction
        for partial in root.glob("blobs/??/*.partial-*"):  # a blob's dead download nobody resumed (a file's
            m = _PARTIAL.fullmatch(partial.name)  # goes with its folder)
            if m is not None and m.group(2) and not _alive(int(m.group(2))):
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()
        entries, total = _scan(root)
        start, busy = total, set()
        while total > max_bytes:
            candidates = sorted((e for e in entries if e.path not in busy), key=lambda e: e.used)
            if not candidates:
                log.warning("artifact cache holds %d bytes, above its %d: the rest is in use", total, max_bytes)
                break
            for entry in candidates:
                if _evict_one(root, entry):
                    log.info("evicted sha256:%s from the artifact cache (least recently used)", entry.digest)
                    break
                busy.add(entry.path)
            entries, total = _scan(root)  # a removed folder frees its blobs' last links: they are candidates now
        return max(0, start - total)


def _scan(root: Path) -> tuple[list[_Entry], int]:
    """Evictable entries (cached files, directory versions, blobs no directory links) and the bytes held."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != "locks"]
        for name in filenames:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
    entries = []
    for kind in ("sha256", "dirs", "blobs"):
        for path in root.glob(f"{kind}/??/*"):
            if not _DIGEST.fullmatch(path.name):
                continue
            try:
                if kind == "blobs" and path.stat().st_nlink > 1:
                    continue  # a directory version links it: it goes with that version
                lock = root / "locks" / path.name[:2] / path.name
                used = lock.stat().st_mtime if lock.exists() else path.stat().st_mtime
            except FileNotFoundError:
                continue
            entries.append(_Entry(path, path.name, kind == "blobs", used))
    return entries, total


def _evict_one(root: Path, entry: _Entry) -> bool:
    """Remove one entry if no process holds its use lock (without waiting); False if it is in use."""
    lock = root / "locks" / entry.digest[:2] / entry.digest
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("ab") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            if os.stat(lock).st_ino != os.fstat(f.fileno()).st_ino:
                return False  # replaced meanwhile: someone else's now
        except FileNotFoundError:
            return False
        if entry.blob:
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()
        else:
            _remove_tree(entry.path)
        os.unlink(lock)  # a process waiting on it sees the unlink and takes a fresh one
        return True


def _remove_partials(path: Path) -> None:
    for p in path.parent.glob(path.name + ".partial*"):
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
        if m is not None and int(m.group(2)) != os.getpid() and not _alive(int(m.group(2))):
            shutil.rmtree(child, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    return True


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


def _adopt_partial(path: Path) -> Path:
    """This process's partial file for ``path``, resuming the longest one a dead download left (the caller
    holds the download lock, so no other process writes one now); the other leftovers are deleted."""
    ours = path.with_name(f"{path.name}.partial-{os.getpid()}")
    left = []
    for p in path.parent.iterdir():
        m = _PARTIAL.fullmatch(p.name)
        if m is not None and m.group(1) == path.name and p != ours:
            with contextlib.suppress(FileNotFoundError):
                left.append((p.stat().st_size, p))
    left.sort(reverse=True)
    for i, (_, p) in enumerate(left):
        with contextlib.suppress(FileNotFoundError):
            if i == 0 and not ours.exists():
                os.replace(p, ours)
            else:
                p.unlink()
    return ours


def _lock_shared(path: Path) -> BinaryIO:
    """A shared flock on ``path`` (created if missing) that an eviction did not just delete; marks a use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        f = path.open("ab")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)  # waits only while an eviction holds it (briefly)
            try:
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                _touch(f)
                return f
        except BaseException:
            f.close()
            raise
        f.close()  # evicted (and its lock file unlinked) while we waited: take the new one


def _touch(f: BinaryIO) -> None:
    os.utime(f.fileno())


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
