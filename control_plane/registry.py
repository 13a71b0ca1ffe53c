"""Models and their immutable versions in the metadata store.

Version numbers are assigned here by compare-and-swap on the model key: the
model's ``latest_version`` and the new version key are written in one
transaction that holds only if the model key is unchanged since it was read,
so numbers are strictly increasing per model and never reused, whichever
replica assigns them. A conflict is retried with a fresh read. Registering a
version never touches a deployment.

A directory version (format ``llm``) has a manifest as its artifact
(:mod:`lmaas.protos.manifests`): its files are uploaded first as blobs of their
own, then :meth:`Registry.receive_manifest` checks the manifest (canonical,
paths confined to the version root, every file's blob held with its size)
before storing it, and the version's size is the sum of its files.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from lmaas.control_plane import keys
from lmaas.control_plane.artifacts import ArtifactStore, check_digest
from lmaas.control_plane.limits import MAX_CONFIG_BYTES, MAX_DESCRIPTION, check_metadata, check_text
from lmaas.control_plane.store.base import Compare, Put, Store
from lmaas.protos.errors import (
    Aborted,
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    ModelNotFound,
)
from lmaas.protos.formats import FORMATS as _FORMAT_TABLE
from lmaas.protos.formats import get_format
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from lmaas.protos.manifests import MAX_MANIFEST_BYTES, Manifest

__all__ = ["FORMATS", "NewVersion", "Registry", "now_ms"]

FORMATS = tuple(_FORMAT_TABLE)
_CAS_ATTEMPTS = 32


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class NewVersion:
    """What a caller says about a version to register (the artifact must be stored already)."""

    model: str
    digest: str
    format: str
    config_json: str = ""
    parent_version: int = 0
    description: str = ""
    #: How the version was derived from ``parent_version`` (``lmaas model optimize``); None for a plain push.
    derivation: pb.Derivation | None = None


class Registry:
    def __init__(self, store: Store, artifacts: ArtifactStore, *, clock: Callable[[], int] = now_ms) -> None:
        self._store = store
        self._artifacts = artifacts
        self._clock = clock

    async def create_model(
        self, name: str, *, description: str = "", metadata: Mapping[str, str] | None = None, created_by: str
    ) -> tuple[pb.Model, int]:
        keys.check_name(name)
        check_text(description, "model description", MAX_DESCRIPTION)
        check_metadata(metadata or {})
        model = pb.Model(
            name=name, description=description, metadata=dict(metadata or {}), created_at_ms=self._clock(),
            created_by=created_by,
        )
        key = keys.model(name)
        result = await self._store.txn([Compare.absent(key)], [Put(key, model.SerializeToString())])
        if not result.succeeded:
            raise AlreadyExists(f"model '{name}' already exists")
        return model, result.revision

    async def get_model(self, name: str) -> tuple[pb.Model, int]:
        keys.check_name(name)
        kv = await self._store.get(keys.model(name))
        if kv is None:
            raise ModelNotFound(name)
        return pb.Model.FromString(kv.value), kv.mod_revision

    async def list_models(self) -> tuple[list[pb.Model], int]:
        result = await self._store.range(keys.MODELS)
        models = [pb.Model.FromString(kv.value) for kv in result.kvs if "/" not in kv.key[len(keys.MODELS) :]]
        return models, result.revision

    async def get_version(self, name: str, version: int) -> tuple[pb.ModelVersion, int]:
        keys.check_name(name)
        if version <= 0:
            raise InvalidArgument(f"invalid version {version} of model '{name}': versions are integers from 1")
        kv = await self._store.get(keys.version(name, version))
        if kv is None:
            await self.get_model(name)  # NOT_FOUND for the model first
            raise ModelNotFound(name, version)
        return pb.ModelVersion.FromString(kv.value), kv.mod_revision

    async def list_versions(self, name: str) -> tuple[list[pb.ModelVersion], int]:
        await self.get_model(name)
        result = await self._store.range(keys.versions(name))
        return [pb.ModelVersion.FromString(kv.value) for kv in result.kvs], result.revision

    def validate(self, new: NewVersion) -> None:
        """Check a version's description before any byte is uploaded."""
        keys.check_name(new.model)
        check_digest(new.digest)
        get_format(new.format)
        check_text(new.description, "version description", MAX_DESCRIPTION)
        if len(new.config_json.encode()) > MAX_CONFIG_BYTES:
            raise InvalidArgument(f"model config of {len(new.config_json.encode())} bytes exceeds {MAX_CONFIG_BYTES}")
        if new.config_json:
            _check_config(new.config_json)
        if new.parent_version < 0:
            raise InvalidArgument(f"invalid parent_version {new.parent_version}")
        if new.derivation is not None and new.derivation.recipe and not new.parent_version:
            raise InvalidArgument(f"a derived version (recipe {new.derivation.recipe!r}) needs its parent_version")

    async def register_version(self, new: NewVersion, *, created_by: str) -> tuple[pb.ModelVersion, int, bool]:
        """Assign the next version number to a stored artifact; returns (version, revision, existing).

        If the latest version already has the same artifact, format, config and
        parent, it is returned (``existing`` True) and no version is created.
        """
        self.validate(new)
        size = self._artifacts.size(new.digest)  # ArtifactNotFound unless uploaded and verified
        if get_format(new.format).directory:
            data = await asyncio.to_thread(self._artifacts.path(new.digest).read_bytes)
            size = self.check_manifest(data, new).total_size
        key = keys.model(new.model)
        for _ in range(_CAS_ATTEMPTS):
            kv = await self._store.get(key)
            if kv is None:
                model = pb.Model(name=new.model, created_at_ms=self._clock(), created_by=created_by)
                guard = Compare.absent(key)
            else:
                model = pb.Model.FromString(kv.value)
                guard = Compare.unchanged(key, kv.mod_revision)
                latest = await self._store.get(keys.version(new.model, model.latest_version))
                if latest is not None:
                    same: pb.ModelVersion = pb.ModelVersion.FromString(latest.value)
                    if (same.digest, same.format, same.config_json, same.parent_version) == (
                        new.digest, new.format, new.config_json, new.parent_version
                    ) and same.derivation.recipe == (new.derivation.recipe if new.derivation else ""):
                        return same, latest.mod_revision, True
            if new.parent_version and not 0 < new.parent_version <= model.latest_version:
                raise FailedPrecondition(f"parent version {new.parent_version} of model '{new.model}' does not exist")
            model.latest_version += 1
            version = pb.ModelVersion(
                model=new.model, version=model.latest_version, digest=new.digest, format=new.format,
                config_json=new.config_json, size_bytes=size, created_at_ms=self._clock(), created_by=created_by,
                parent_version=new.parent_version, description=new.description,
            )
            if new.derivation is not None and new.derivation.recipe:
                version.derivation.CopyFrom(new.derivation)
            vkey = keys.version(new.model, version.version)
            result = await self._store.txn(
                [guard, Compare.absent(vkey)],
                [Put(key, model.SerializeToString()), Put(vkey, version.SerializeToString())],
            )
            if result.succeeded:
                return version, result.revision, False
        raise Aborted(f"too many concurrent version registrations for model '{new.model}'; retry")

    def check_manifest(self, data: bytes, new: NewVersion) -> Manifest:
        """The manifest of directory version ``new``, if ``data`` is one whose every file is stored.

        DataLoss when ``data`` is not what ``new.digest`` names, InvalidArgument
        for a malformed manifest (or a path escaping the version root), and
        FailedPrecondition naming the first file whose blob is not held.
        """
        actual = hashlib.sha256(data).hexdigest()
        if actual != new.digest:
            raise DataLoss(f"manifest digest mismatch: declared sha256:{new.digest}, received sha256:{actual}")
        manifest = Manifest.parse(data)
        if manifest.format != new.format:
            raise InvalidArgument(f"manifest format {manifest.format!r} differs from the version's {new.format!r}")
        for f in manifest.files:
            if not self._artifacts.exists(f.sha256):
                raise FailedPrecondition(
                    f"file {f.path!r} of the manifest (sha256:{f.sha256}) is not uploaded; upload it first"
                )
            stored = self._artifacts.size(f.sha256)
            if stored != f.size:
                raise FailedPrecondition(f"file {f.path!r}: the manifest says {f.size} bytes, the blob has {stored}")
        return manifest

    async def receive_artifact(self, new: NewVersion, size: int, offset: int, chunks: AsyncIterator[bytes]) -> bool:
        """Store the artifact of version ``new`` (verified, resumable); True if it was stored already.

        The one place both transports go through: a directory format's body is its manifest (its files went up
        before, one by one), any other format's body is the artifact itself.
        """
        if get_format(new.format).directory:
            return await self.receive_manifest(new, size, offset, chunks)
        return await self._artifacts.receive(new.digest, size, offset, chunks)

    async def receive_manifest(self, new: NewVersion, size: int, offset: int, chunks: AsyncIterator[bytes]) -> bool:
        """Check and store the manifest of directory version ``new``; True if it was stored already.

        Nothing is stored unless the whole manifest arrived and passed
        :meth:`check_manifest`. A manifest is small: it is sent whole, never resumed.
        """
        self.validate(new)
        if self._artifacts.exists(new.digest):
            return True
        if not 0 <= size <= MAX_MANIFEST_BYTES:
            raise InvalidArgument(f"manifest of {size} bytes: the limit is {MAX_MANIFEST_BYTES}")
        if offset != 0:
            raise FailedPrecondition(f"a manifest upload cannot resume at {offset}: send it whole from offset 0")
        data = bytearray()
        async for chunk in chunks:
            data += chunk
            if len(data) > size:
                raise InvalidArgument(f"upload of manifest sha256:{new.digest} sent more than {size} bytes")
        if len(data) < size:
            raise InvalidArgument(f"upload of manifest sha256:{new.digest} truncated: {len(data)} of {size} bytes")
        self.check_manifest(bytes(data), new)

        async def whole() -> AsyncIterator[bytes]:
            yield bytes(data)

        return await self._artifacts.receive(new.digest, size, 0, whole())


def _check_config(config_json: str) -> None:
    try:
        value = json.loads(config_json)
    except ValueError as exc:
        raise InvalidArgument(f"invalid model config: not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise InvalidArgument("invalid model config: expected a JSON object")
    from lmaas.server.config import parse_config  # the worker's own schema: reject what it would reject

    parse_config(config_json)
