"""Directory versions (format ``llm``): a directory pushed as one version through the real control plane
(manifest, blobs stored once, path confinement, resume) and materialised, verified, by the real worker-side
Syncer and ArtifactCache; the model manager is :class:`DirHost` (a FakeHost that reads directories)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cp_harness import (
    ADMIN_TOKEN,
    FakeHost,
    Stubs,
    address,
    channel,
    deploy,
    eventually,
    expect_status,
    final_rollout,
    lmaas,
    worker,
)
from lmaas.client.control import ControlPlaneClient
from lmaas.control_plane import keys
from lmaas.control_plane.app import ControlPlane
from lmaas.control_plane.store.base import Put
from lmaas.protos.errors import InvalidArgument
from lmaas.protos.lmaas.control.v1 import registry_pb2
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from lmaas.protos.lmaas.worker.v1 import artifacts_pb2_grpc
from lmaas.protos.manifests import Manifest, ManifestFile, scan_directory
from lmaas.server.artifact_cache import ArtifactCache
from lmaas.server.sync import Route

pytest_plugins = ["cp_fixtures"]  # cp, stubs

WEIGHTS = os.urandom(300_000)
TOKENIZER = json.dumps({"model": {"vocab": {str(i): i for i in range(500)}}}).encode()


def write_version(root: Path, config: dict[str, object], *, weights: bytes = WEIGHTS) -> Path:
    """An LLM-shaped version directory: config, tokenizer files, generation config, weights in a subfolder."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    (root / "tokenizer.json").write_bytes(TOKENIZER)
    (root / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    (root / "generation_config.json").write_text('{"eos_token_id": 2}')
    (root / "weights").mkdir()
    (root / "weights" / "model.safetensors").write_bytes(weights)
    return root


def blobs(cp: ControlPlane) -> set[str]:
    """Digests of every blob the control plane stores."""
    return {p.parent.name + p.name for p in (cp.settings.artifact_dir / "sha256").glob("*/*")}


def client(cp: ControlPlane) -> ControlPlaneClient:
    return ControlPlaneClient(address(cp), token=ADMIN_TOKEN)


async def sdk_push(cp: ControlPlane, name: str, path: Path, **kw: object) -> registry_pb2.CreateVersionResponse:
    """The blocking SDK in a thread (the control plane runs on this event loop)."""
    def run() -> registry_pb2.CreateVersionResponse:
        with client(cp) as c:
            return c.upload(name, path, **kw)  # type: ignore[arg-type]

    return await asyncio.to_thread(run)


def manifest_requests(model: str, manifest: Manifest) -> list[registry_pb2.CreateVersionRequest]:
    data = manifest.to_bytes()
    header = registry_pb2.CreateVersionHeader(
        model=model, format=manifest.format, digest=hashlib.sha256(data).hexdigest(), size_bytes=len(data)
    )
    return [registry_pb2.CreateVersionRequest(header=header), registry_pb2.CreateVersionRequest(chunk=data)]


# -- manifests ---------------------------------------------------------------------------------------------------


def test_manifest_digest_ignores_file_order_and_times(tmp_path: Path) -> None:
    a = write_version(tmp_path / "a", {"n": 1})
    b = tmp_path / "b"
    b.mkdir()
    for rel in ("weights/model.safetensors", "generation_config.json", "tokenizer_config.json", "tokenizer.json",
                "config.json"):  # another order of creation, other times
        (b / rel).parent.mkdir(exist_ok=True)
        (b / rel).write_bytes((a / rel).read_bytes())
        os.utime(b / rel, (1_000_000, 1_000_000))
    (ma, _), (mb, _) = scan_directory(a), scan_directory(b)
    assert ma.digest == mb.digest and ma.to_bytes() == mb.to_bytes()
    assert [f.path for f in ma.files] == sorted(f.path for f in ma.files)
    assert Manifest.parse(ma.to_bytes()) == ma
    assert ma.total_size == sum(p.stat().st_size for p in a.rglob("*") if p.is_file())
    pretty = json.dumps(json.loads(ma.to_bytes()), indent=1).encode()
    with pytest.raises(InvalidArgument, match="canonical"):
        Manifest.parse(pretty)
    (b / "config.json").write_text('{"n": 2}')
    assert scan_directory(b)[0].digest != ma.digest


BAD_PATHS = {
    "/etc/passwd": "absolute",
    "../outside": "'..'",
    "a/../../outside": "'..'",
    "a\\..\\b": "backslash",
    "a//b": "empty",
    "./a": "'.'",
    "a/": "empty",
    "x" * 600: "limit is 512",
    "nul\x00byte": "control",
}


@pytest.mark.parametrize("path", list(BAD_PATHS))
def test_manifest_refuses_paths_that_escape(path: str) -> None:
    with pytest.raises(InvalidArgument, match=BAD_PATHS[path]):
        Manifest.of("llm", [ManifestFile(path, "0" * 64, 1)])


def test_manifest_refuses_duplicates_clashes_and_too_many_files() -> None:
    with pytest.raises(InvalidArgument, match="twice"):
        Manifest.of("llm", [ManifestFile("a", "0" * 64, 1), ManifestFile("a", "1" * 64, 1)])
    with pytest.raises(InvalidArgument, match="folder"):
        Manifest.of("llm", [ManifestFile("a", "0" * 64, 1), ManifestFile("a/b", "1" * 64, 1)])
    with pytest.raises(InvalidArgument, match="limit is 4096"):
        Manifest.of("llm", [ManifestFile(f"f{i}", "0" * 64, 1) for i in range(4097)])
    with pytest.raises(InvalidArgument, match="no files"):
        Manifest.of("llm", [])


def test_scan_refuses_symlinks(tmp_path: Path) -> None:
    root = write_version(tmp_path / "v", {})
    (root / "link.json").symlink_to(root / "config.json")
    with pytest.raises(InvalidArgument, match="symbolic link"):
        scan_directory(root)
    (root / "link.json").unlink()
    (root / "weights-link").symlink_to(root / "weights", target_is_directory=True)
    with pytest.raises(InvalidArgument, match="symbolic link"):
        scan_directory(root)


# -- pushing through the control plane ---------------------------------------------------------------------------


async def test_push_directory_stores_each_file_once(cp: ControlPlane, tmp_path: Path) -> None:
    v1 = write_version(tmp_path / "v1", {"layers": 1})
    v2 = write_version(tmp_path / "v2", {"layers": 2})  # same tokenizer and weights, another config
    (v2 / "tokenizer_copy.json").write_bytes(TOKENIZER)  # the same bytes twice in one version
    first = await sdk_push(cp, "llm", v1)
    manifest1, _ = scan_directory(v1)
    assert (first.version.version, first.version.format, first.version.digest) == (1, "llm", manifest1.digest)
    assert first.version.size_bytes == manifest1.total_size and not first.existing
    after_v1 = blobs(cp)
    assert after_v1 == {f.sha256 for f in manifest1.files} | {manifest1.digest}  # 5 files + the manifest

    sent: list[tuple[int, int]] = []
    second = await sdk_push(cp, "llm", v2, progress=lambda done, total: sent.append((done, total)))
    manifest2, _ = scan_directory(v2)
    assert second.version.version == 2 and second.version.digest == manifest2.digest
    new = blobs(cp) - after_v1
    assert new == {hashlib.sha256(b'{"layers": 2}').hexdigest(), manifest2.digest}  # only the new config + manifest
    assert sent[-1][0] == sent[-1][1]  # progress reaches the total of the distinct files

    again = await sdk_push(cp, "llm", v1)  # a repeated push of the latest-but-one is a new version...
    assert again.version.version == 3 and again.deduplicated and blobs(cp) - after_v1 == new
    repeat = await sdk_push(cp, "llm", v1)  # ...and of the latest one, that very version
    assert repeat.existing and repeat.version.version == 3

    listed = await stubs_versions(cp, "llm")
    assert [(v.format, v.size_bytes) for v in listed] == [("llm", manifest1.total_size),
                                                           ("llm", manifest2.total_size),
                                                           ("llm", manifest1.total_size)]


async def stubs_versions(cp: ControlPlane, name: str) -> list[pb.ModelVersion]:
    def run() -> list[pb.ModelVersion]:
        with client(cp) as c:
            return c.list_versions(name)

    return await asyncio.to_thread(run)


async def test_manifest_naming_a_missing_blob_is_refused(stubs: Stubs, cp: ControlPlane, tmp_path: Path) -> None:
    root = write_version(tmp_path / "v", {})
    manifest, local = scan_directory(root)
    for f in manifest.files:  # upload all files but the weights
        if f.path != "weights/model.safetensors":
            data = local[f.path].read_bytes()
            header = registry_pb2.UploadArtifactHeader(digest=f.sha256, size_bytes=len(data))
            await stubs.registry.UploadArtifact(iter([
                registry_pb2.UploadArtifactRequest(header=header), registry_pb2.UploadArtifactRequest(chunk=data),
            ]))
    before = blobs(cp)
    details = await expect_status(
        grpc.StatusCode.FAILED_PRECONDITION, stubs.registry.CreateVersion(iter(manifest_requests("m", manifest)))
    )
    assert "'weights/model.safetensors'" in details and "not uploaded" in details
    assert blobs(cp) == before and manifest.digest not in before  # the manifest is not stored
    await expect_status(grpc.StatusCode.NOT_FOUND, stubs.registry.GetModel(registry_pb2.GetModelRequest(name="m")))


@pytest.mark.parametrize("path", ["../escape.json", "/abs.json", "a\\b.json"])
async def test_escaping_manifest_is_refused_and_nothing_stored(stubs: Stubs, cp: ControlPlane, path: str) -> None:
    bad = Manifest("llm", (ManifestFile(path, hashlib.sha256(b"{}").hexdigest(), 2),))  # unchecked on purpose
    details = await expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, stubs.registry.CreateVersion(iter(manifest_requests("m", bad)))
    )
    assert "escape" in details or "backslash" in details
    assert blobs(cp) == set()
    await expect_status(grpc.StatusCode.NOT_FOUND, stubs.registry.GetModel(registry_pb2.GetModelRequest(name="m")))


async def test_malformed_manifests_are_refused(stubs: Stubs, cp: ControlPlane) -> None:
    good = Manifest.of("llm", [ManifestFile("a.json", hashlib.sha256(b"{}").hexdigest(), 2)])
    cases = {
        b"not json": "not UTF-8 JSON",
        json.dumps(json.loads(good.to_bytes()), indent=2).encode(): "canonical",
        good.to_bytes().replace(b'"llm"', b'"onnx"'): "differs",
    }
    for data, expected in cases.items():
        header = registry_pb2.CreateVersionHeader(
            model="m", format="llm", digest=hashlib.sha256(data).hexdigest(), size_bytes=len(data)
        )
        requests = [registry_pb2.CreateVersionRequest(header=header), registry_pb2.CreateVersionRequest(chunk=data)]
        details = await expect_status(grpc.StatusCode.INVALID_ARGUMENT, stubs.registry.CreateVersion(iter(requests)))
        assert expected in details, details
    requests = manifest_requests("m", good)
    requests[0].header.digest = "0" * 64
    await expect_status(grpc.StatusCode.DATA_LOSS, stubs.registry.CreateVersion(iter(requests)))
    assert blobs(cp) == set()


async def test_client_refuses_symlinks_before_uploading(cp: ControlPlane, tmp_path: Path) -> None:
    root = write_version(tmp_path / "v", {})
    (root / "escape").symlink_to("/etc")
    with pytest.raises(InvalidArgument, match="symbolic link"):
        await sdk_push(cp, "m", root)
    assert blobs(cp) == set()


async def test_interrupted_file_upload_resumes(stubs: Stubs, cp: ControlPlane, tmp_path: Path) -> None:
    root = write_version(tmp_path / "v", {})
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    header = registry_pb2.UploadArtifactHeader(digest=digest, size_bytes=len(WEIGHTS))
    cut = [registry_pb2.UploadArtifactRequest(header=header)]
    cut += [registry_pb2.UploadArtifactRequest(chunk=WEIGHTS[i : i + 50_000]) for i in range(0, 100_000, 50_000)]
    details = await expect_status(grpc.StatusCode.INVALID_ARGUMENT, stubs.registry.UploadArtifact(iter(cut)))
    assert "truncated" in details
    status = await stubs.registry.GetUploadStatus(registry_pb2.GetUploadStatusRequest(digest=digest))
    assert not status.exists and status.offset == 100_000

    sent: list[tuple[int, int]] = []
    reply = await sdk_push(cp, "m", root, progress=lambda done, total: sent.append((done, total)))
    manifest, _ = scan_directory(root)
    assert reply.version.digest == manifest.digest
    stored = cp.artifacts.path(digest).read_bytes()
    assert stored == WEIGHTS
    # the weights' first report starts where the cut upload stopped: those bytes were not sent again
    weights_base = sum(f.size for f in manifest.files if f.path < "weights/model.safetensors")
    assert (weights_base + 100_000, manifest.total_size) in sent
    assert not any(weights_base < done < weights_base + 100_000 for done, _ in sent)


async def test_upload_artifact_protocol_errors(stubs: Stubs) -> None:
    header = registry_pb2.UploadArtifactHeader(digest=hashlib.sha256(b"x").hexdigest(), size_bytes=1)
    twice = [registry_pb2.UploadArtifactRequest(header=header)] * 2
    await expect_status(grpc.StatusCode.INVALID_ARGUMENT, stubs.registry.UploadArtifact(iter(twice)))
    chunk_first = [registry_pb2.UploadArtifactRequest(chunk=b"x")]
    await expect_status(grpc.StatusCode.INVALID_ARGUMENT, stubs.registry.UploadArtifact(iter(chunk_first)))
    wrong = [registry_pb2.UploadArtifactRequest(header=header), registry_pb2.UploadArtifactRequest(chunk=b"y")]
    await expect_status(grpc.StatusCode.DATA_LOSS, stubs.registry.UploadArtifact(iter(wrong)))


async def test_cli_push_directory_and_versions(cp: ControlPlane, tmp_path: Path) -> None:
    root = write_version(tmp_path / "smol", {})
    pushed = await asyncio.to_thread(lmaas, "model", "push", "smol", str(root), "-q", address=address(cp))
    assert pushed.stdout.strip() == "1"
    listed = await asyncio.to_thread(lmaas, "model", "versions", "smol", address=address(cp))
    manifest, _ = scan_directory(root)
    row = next(line for line in listed.stdout.splitlines() if manifest.digest[:12] in line)
    assert "llm" in row and f"{manifest.total_size / 1024:.1f} KiB" in row, row  # the sum of the files
    wrong = await asyncio.to_thread(
        lmaas, "model", "push", "smol", str(root), "--format", "onnx", address=address(cp), check=False
    )
    assert wrong.returncode == 1 and "INVALID_ARGUMENT" in wrong.stderr


# -- the worker's side -------------------------------------------------------------------------------------------


@dataclass
class DirHost(FakeHost):
    """FakeHost for directory versions: 'loads' a directory by reading every file; no config.json fails."""

    paths: dict[tuple[str, int], Path] | None = None

    async def ensure_loaded(self, name: str, version: int, path: Path, config_json: str, digest: str) -> None:
        if (name, version) in self.models:
            return
        if not (path / "config.json").is_file():
            raise RuntimeError(f"{path} has no config.json")
        data = b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())
        self.loads.append((name, version))
        self.models[name, version] = (digest, data)
        self.paths = {**(self.paths or {}), (name, version): path}


async def test_worker_materialises_verified_directory(stubs: Stubs, cp: ControlPlane, tmp_path: Path) -> None:
    v1 = write_version(tmp_path / "v1", {"v": 1})
    v2 = write_version(tmp_path / "v2", {"v": 2})
    await sdk_push(cp, "llm", v1)
    await sdk_push(cp, "llm", v2)
    host = DirHost()
    async with worker(address(cp), tmp_path, host=host) as w:
        await deploy(stubs, "llm", 1)
        assert (await final_rollout(stubs, "llm")).phase == pb.ROLLOUT_PHASE_SUCCEEDED
        await deploy(stubs, "llm", 2)
        assert (await final_rollout(stubs, "llm")).phase == pb.ROLLOUT_PHASE_SUCCEEDED
        assert w.host.routes == {"llm": Route(2)}
    assert host.paths is not None
    for number, src in ((1, v1), (2, v2)):
        path = host.paths["llm", number]
        manifest, _ = scan_directory(src)
        assert path.is_dir() and path.name == manifest.digest and path.parent.parent.name == "dirs"
        assert scan_directory(path)[0] == manifest  # exactly the files, each one verified equal
    one, two = host.paths["llm", 1], host.paths["llm", 2]
    # the weights are one blob on the worker too, hard-linked into both versions
    assert (one / "weights/model.safetensors").stat().st_ino == (two / "weights/model.safetensors").stat().st_ino
    assert not [p for p in one.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


async def test_cached_directory_is_checked_and_crash_leftovers_are_invisible(
    stubs: Stubs, cp: ControlPlane, tmp_path: Path
) -> None:
    root = write_version(tmp_path / "v1", {})
    version = (await sdk_push(cp, "llm", root)).version
    cache = ArtifactCache(tmp_path / "cache")
    target = cache.path(version.digest, "llm")
    # a process that died while building the directory left its staging folder (pid 2**22 + 1 is never alive)
    stale = target.with_name(f".{version.digest}.partial-{2**22 + 1}-x1y2z3")
    (stale / "weights").mkdir(parents=True)
    (stale / "config.json").write_text("half")
    async with channel(cp) as ch:
        stub = artifacts_pb2_grpc.ArtifactsStub(ch)
        path = await cache.fetch(stub, version.digest, "llm", version.size_bytes)
        assert path == target and not stale.exists()
        assert scan_directory(path)[0].digest == version.digest
        # a file corrupted in the cache is noticed by the next process and the directory rebuilt
        weights = path / "weights" / "model.safetensors"
        weights.chmod(0o644)
        weights.write_bytes(b"x" * len(WEIGHTS))
        again = await ArtifactCache(tmp_path / "cache").fetch(stub, version.digest, "llm", version.size_bytes)
        assert (again / "weights" / "model.safetensors").read_bytes() == WEIGHTS
        # a download cut half-way resumes from the kept part
        fresh = ArtifactCache(tmp_path / "cache2")
        blob = fresh.blob_path(hashlib.sha256(WEIGHTS).hexdigest())
        blob.parent.mkdir(parents=True)
        blob.with_name(blob.name + ".partial").write_bytes(WEIGHTS[:123_456])
        path = await fresh.fetch(stub, version.digest, "llm", version.size_bytes)
        assert (path / "weights" / "model.safetensors").read_bytes() == WEIGHTS


async def test_corrupt_blob_on_the_control_plane_is_nacked(stubs: Stubs, cp: ControlPlane, tmp_path: Path) -> None:
    v1 = write_version(tmp_path / "v1", {"v": 1})
    v2 = write_version(tmp_path / "v2", {"v": 2}, weights=os.urandom(len(WEIGHTS)))
    await sdk_push(cp, "llm", v1)
    await sdk_push(cp, "llm", v2)
    # the control plane's copy of v2's weights rots after the upload (same size, other bytes)
    bad = cp.artifacts.path(hashlib.sha256((v2 / "weights" / "model.safetensors").read_bytes()).hexdigest())
    bad.write_bytes(os.urandom(len(WEIGHTS)))
    host = DirHost()
    async with worker(address(cp), tmp_path, host=host) as w:
        await deploy(stubs, "llm", 1)
        assert (await final_rollout(stubs, "llm")).phase == pb.ROLLOUT_PHASE_SUCCEEDED
        reply = await deploy(stubs, "llm", 2)
        rollout = await final_rollout(stubs, "llm", reply.deployment.generation)
        assert rollout.phase == pb.ROLLOUT_PHASE_FAILED, rollout
        assert "weights/model.safetensors" in rollout.message and "sha256" in rollout.message, rollout.message
        await eventually(lambda: w.host.routes == {"llm": Route(1)})
        assert w.host.versions("llm") == [1]
    dirs = tmp_path / "cache-w1" / "dirs"
    assert [p.name for p in dirs.glob("*/*")] == [scan_directory(v1)[0].digest]  # no half directory of v2


async def test_worker_refuses_an_escaping_manifest_the_control_plane_should_never_serve(
    stubs: Stubs, cp: ControlPlane, tmp_path: Path
) -> None:
    """Defence in depth: a manifest planted past the registry's checks (a tampered store) never writes outside
    the worker's cache."""
    payload = b"owned"
    await cp.artifacts.receive(hashlib.sha256(payload).hexdigest(), len(payload), 0, _once(payload))
    bad = Manifest("llm", (ManifestFile("../../../escaped.txt", hashlib.sha256(payload).hexdigest(), 5),))
    data = bad.to_bytes()
    digest = hashlib.sha256(data).hexdigest()
    await cp.artifacts.receive(digest, len(data), 0, _once(data))
    model = pb.Model(name="evil", latest_version=1)
    version = pb.ModelVersion(model="evil", version=1, digest=digest, format="llm", size_bytes=5)
    await cp.store.txn([], [Put(keys.model("evil"), model.SerializeToString()),
                            Put(keys.version("evil", 1), version.SerializeToString())])
    async with worker(address(cp), tmp_path, host=DirHost()) as w:
        rollout = await final_rollout(stubs, "evil", (await deploy(stubs, "evil", 1)).deployment.generation)
        assert rollout.phase == pb.ROLLOUT_PHASE_FAILED and "'..'" in rollout.message, rollout.message
        assert w.host.versions("evil") == []
    assert not list(tmp_path.rglob("escaped.txt"))


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_directory_format_needs_a_directory(cp: ControlPlane, tmp_path: Path) -> None:
    single = tmp_path / "model.onnx"
    single.write_bytes(b"onnx bytes")
    with pytest.raises(InvalidArgument, match="give a directory"):
        await sdk_push(cp, "m", single, format="llm")
    with pytest.raises(InvalidArgument, match="is a single file"):
        await sdk_push(cp, "m", write_version(tmp_path / "v", {}), format="onnx")
    assert blobs(cp) == set()


async def test_two_caches_on_one_folder_build_one_directory(cp: ControlPlane, tmp_path: Path) -> None:
    """Worker processes sharing a cache: downloads are locked per file, the directory is published once."""
    root = write_version(tmp_path / "v", {})
    version = (await sdk_push(cp, "llm", root)).version
    async with channel(cp) as ch:
        stub = artifacts_pb2_grpc.ArtifactsStub(ch)
        caches = [ArtifactCache(tmp_path / "shared") for _ in range(3)]
        paths = await asyncio.gather(*(c.fetch(stub, version.digest, "llm", version.size_bytes) for c in caches))
    assert len(set(paths)) == 1 and scan_directory(paths[0])[0].digest == version.digest
    assert [p.name for p in paths[0].parent.iterdir()] == [version.digest]  # no staging folder left behind
    assert not list((tmp_path / "shared" / "blobs").glob("*/*.partial"))
