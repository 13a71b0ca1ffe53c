"""Hypothesis strategies for control-plane calls, used by the CI fuzz test and ``benchmarks/fuzz_control.py``.

A :class:`Call` is one RPC of any control-plane service with a fuzzed request (or request stream) and a
fuzzed credential. They aim at the edges: path-like, empty, over-long and non-ASCII names; versions and
generations that are zero, negative or huge; weights off the 0-100 range; configs that are not JSON, not
objects, or too large; upload streams without a header, with two headers, with lying sizes, offsets and
digests; unknown roles and token ids; worker hellos with bad ids and oversized reports; and headers that
are missing, garbage, or a token of too small a role. Names come mostly from a small pool, so pushes,
deploys and rollbacks also meet real state and succeed often enough to exercise the success paths.

:func:`perform` makes a call with a blocking channel and returns the status name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import grpc
from hypothesis import strategies as st
from lmaas.protos.lmaas.control.v1 import (
    deployments_pb2,
    deployments_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    resources_pb2,
    tokens_pb2,
    tokens_pb2_grpc,
    workers_pb2,
    workers_pb2_grpc,
)
from lmaas.protos.lmaas.worker.v1 import artifacts_pb2, artifacts_pb2_grpc, sync_pb2, sync_pb2_grpc

#: Answers a fuzzed call may get. INTERNAL or UNKNOWN would mean a crash path; UNAVAILABLE a broken store.
ACCEPTABLE = frozenset({
    "OK", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION", "ABORTED",
    "RESOURCE_EXHAUSTED", "DATA_LOSS", "UNAUTHENTICATED", "PERMISSION_DENIED",
})
#: A stream that legitimately runs until its deadline (a rollout that never finishes, a worker stream).
STREAMING_TIMEOUT_OK = frozenset({"Deployments.WatchRollout", "WorkerSync.Sync"})

POOL_NAMES = ["m", "m", "m", "n", "n", "fuzz.model-1"]
names = st.one_of(
    st.sampled_from(POOL_NAMES),
    st.sampled_from(["", ".", "..", "../etc", "a/b", "/abs", "-dash", ".hidden", "x" * 129, "a\x00b", "ünï",
                     "m/versions/1", "%2e%2e", "a b", "a\\b"]),
    st.text(max_size=20),
)
numbers = st.one_of(st.integers(-2, 4), st.sampled_from([0, 1, 2, 3, 1 << 31, 1 << 62, -(1 << 63), (1 << 63) - 1]))
weights = st.one_of(st.integers(-5, 105), st.sampled_from([0, 30, 100, -(1 << 31), (1 << 31) - 1]))
formats = st.one_of(st.sampled_from(["onnx", "onnx", "torchscript", "torch_export"]), st.text(max_size=12))
texts = st.one_of(st.text(max_size=40), st.sampled_from(["", "x" * 5000, "é" * 300]))
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
digests = st.one_of(hex64, st.sampled_from(["", "0" * 64, "F" * 64, "../" * 21 + "a", "z" * 64]), st.text(max_size=70))
token_ids = st.one_of(st.text("0123456789abcdef", min_size=12, max_size=12), st.text(max_size=16),
                      st.sampled_from(["00000000ad01", "../tokens/x", ""]))
roles = st.one_of(st.sampled_from([1, 2, 3, 4]), st.integers(-3, 9))


@st.composite
def configs(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["none", "none", "valid", "valid", "json", "text", "array", "big"]))
    if kind == "valid":
        return json.dumps(draw(st.sampled_from([{}, {"max_batch_size": 4}, {"max_batch_size": 0},
                                                {"instance_count": 2}, {"dynamic_batching": {}}])))
    if kind == "json":
        return json.dumps(draw(st.dictionaries(st.text(max_size=12), st.one_of(
            st.integers(), st.text(max_size=8), st.booleans(), st.none(), st.lists(st.integers(), max_size=3)),
            max_size=4)))
    if kind == "text":
        return str(draw(st.text(max_size=60)))
    if kind == "array":
        return "[1, 2, 3]"
    if kind == "big":
        return json.dumps({"description": "x" * draw(st.sampled_from([1 << 20, (1 << 20) + 10, 3 << 20]))})
    return ""


@dataclass
class Call:
    """One fuzzed RPC: ``service.method``, its request (a list for client streams), and who sends it."""

    method: str
    request: Any
    credential: str = "admin"  # admin | deployer | reader | worker | none | garbage
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        shown = self.request if not isinstance(self.request, list) else [str(r)[:200] for r in self.request]
        return f"Call({self.method}, {str(shown)[:600]!r}, credential={self.credential})"


credentials = st.sampled_from(["admin"] * 12 + ["deployer", "reader", "worker", "none", "garbage"])


@st.composite
def uploads(draw: st.DrawFn) -> list[registry_pb2.CreateVersionRequest]:
    """Half the time a valid upload (with at most one thing broken), else everything random."""
    data = draw(st.one_of(st.binary(max_size=64), st.sampled_from([b"weights v1", b"weights v2", b"corrupt"])))
    plausible = draw(st.booleans())
    header = registry_pb2.CreateVersionHeader(
        model=draw(st.sampled_from(POOL_NAMES)), format="onnx", config_json="", size_bytes=len(data),
        digest=hashlib.sha256(data).hexdigest(),
    )
    broken = draw(st.sampled_from(["nothing"] * 9 + ["model", "format", "config", "digest", "size", "offset",
                                                     "parent", "description", "shape"]))
    if not plausible or broken == "model":
        header.model = draw(names)
    if not plausible or broken == "format":
        header.format = draw(formats)
    if not plausible or broken == "config":
        header.config_json = draw(configs())
    if not plausible or broken == "digest":
        header.digest = draw(digests)
    if not plausible or broken == "size":
        header.size_bytes = draw(numbers)
    if not plausible or broken == "offset":
        header.offset = draw(numbers)
    if not plausible or broken == "parent":
        header.parent_version = draw(numbers)
    if not plausible or broken == "description":
        header.description = draw(texts)
    cut = draw(st.integers(1, 16))
    start = header.offset if 0 <= header.offset <= len(data) else 0
    messages = [registry_pb2.CreateVersionRequest(header=header)]
    messages += [registry_pb2.CreateVersionRequest(chunk=data[i : i + cut]) for i in range(start, len(data), cut)]
    shape = "ok"
    if not plausible or broken == "shape":
        shape = draw(st.sampled_from(["ok", "no-header", "two-headers", "empty", "extra-bytes", "truncated"]))
    if shape == "no-header":
        messages = messages[1:] or [registry_pb2.CreateVersionRequest(chunk=b"x")]
    elif shape == "two-headers":
        messages.insert(1, registry_pb2.CreateVersionRequest(header=header))
    elif shape == "empty":
        messages = []
    elif shape == "extra-bytes":
        messages.append(registry_pb2.CreateVersionRequest(chunk=draw(st.binary(min_size=1, max_size=32))))
    elif shape == "truncated" and len(messages) > 1:
        messages = messages[:-1]
    return messages


@st.composite
def hellos(draw: st.DrawFn) -> list[sync_pb2.WorkerMessage]:
    worker_id = draw(st.one_of(st.sampled_from(["fuzz-w1", "fuzz-w2"]), names, st.just("w" * 300)))
    held = [sync_pb2.Held(model=draw(names), version=draw(numbers), digest=draw(digests))
            for _ in range(draw(st.integers(0, 3)))]
    if draw(st.integers(0, 15)) == 0:
        held *= 2000  # more than a worker may report
    hello = sync_pb2.Hello(worker_id=worker_id, pool=draw(st.one_of(st.just(""), names)),
                           inference_address=draw(st.one_of(st.just("127.0.0.1:1"), texts)), held=held)
    messages = [sync_pb2.WorkerMessage(hello=hello)]
    tail = draw(st.sampled_from(["none", "none", "ack", "hello-again", "no-hello"]))
    if tail == "ack":
        ack = sync_pb2.Ack(snapshot_revision=draw(numbers))
        ack.models.add(model=draw(names), loaded_versions=[1], ok=draw(st.booleans()), error=draw(texts))
        messages.append(sync_pb2.WorkerMessage(ack=ack))
    elif tail == "hello-again":
        messages.append(sync_pb2.WorkerMessage(hello=hello))
    elif tail == "no-hello":
        messages = [sync_pb2.WorkerMessage(ack=sync_pb2.Ack(snapshot_revision=1))]
    return messages


def _spec(draw: st.DrawFn) -> resources_pb2.DeploymentSpec:
    if draw(st.booleans()):  # plausible: versions that may exist, a sane canary
        canary = draw(st.sampled_from([0, 0, 2]))
        return resources_pb2.DeploymentSpec(stable_version=draw(st.integers(1, 3)), canary_version=canary,
                                            canary_weight=draw(st.integers(0, 100)) if canary else 0)
    canary = draw(st.one_of(st.just(0), numbers))
    return resources_pb2.DeploymentSpec(
        stable_version=draw(numbers), canary_version=canary, canary_weight=draw(weights) if canary else 0,
        pools=draw(st.one_of(st.just([]), st.lists(names, max_size=3), st.just(["p"] * 70))),
    )


@st.composite
def calls(draw: st.DrawFn) -> Call:
    method = draw(st.sampled_from([
        "ModelRegistry.CreateVersion", "ModelRegistry.CreateVersion", "ModelRegistry.CreateVersion",
        "ModelRegistry.CreateModel", "ModelRegistry.GetModel", "ModelRegistry.ListModels",
        "ModelRegistry.GetVersion", "ModelRegistry.ListVersions", "ModelRegistry.GetUploadStatus",
        "Deployments.Deploy", "Deployments.Deploy", "Deployments.Deploy", "Deployments.Rollback",
        "Deployments.Rollback", "Deployments.GetDeployment", "Deployments.ListDeployments",
        "Deployments.WatchRollout", "Workers.ListWorkers", "Tokens.CreateToken", "Tokens.ListTokens",
        "Tokens.RevokeToken", "Artifacts.Download", "WorkerSync.Sync",
    ]))
    request: Any
    if method == "ModelRegistry.CreateVersion":
        request = draw(uploads())
    elif method == "ModelRegistry.CreateModel":
        metadata = draw(st.one_of(
            st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4),
            st.just({f"k{i}": "v" for i in range(70)}), st.just({"k": "v" * 2000}), st.just({"": "empty key"}),
        ))
        request = registry_pb2.CreateModelRequest(name=draw(names), description=draw(texts), metadata=metadata)
    elif method in ("ModelRegistry.GetModel",):
        request = registry_pb2.GetModelRequest(name=draw(names))
    elif method == "ModelRegistry.ListModels":
        request = registry_pb2.ListModelsRequest()
    elif method == "ModelRegistry.GetVersion":
        request = registry_pb2.GetVersionRequest(model=draw(names), version=draw(numbers))
    elif method == "ModelRegistry.ListVersions":
        request = registry_pb2.ListVersionsRequest(model=draw(names))
    elif method == "ModelRegistry.GetUploadStatus":
        request = registry_pb2.GetUploadStatusRequest(digest=draw(digests))
    elif method == "Deployments.Deploy":
        request = deployments_pb2.DeployRequest(
            model=draw(st.one_of(st.sampled_from(POOL_NAMES), names)), spec=_spec(draw),
            expected_generation=draw(st.sampled_from([0, 0, 0, 1, -1, 5, -(1 << 63)])))
    elif method == "Deployments.Rollback":
        request = deployments_pb2.RollbackRequest(
            model=draw(st.one_of(st.sampled_from(POOL_NAMES), names)),
            to_version=draw(st.one_of(st.just(0), st.just(0), numbers)),
            expected_generation=draw(st.sampled_from([0, 0, 0, 1, -1, 5])))
    elif method == "Deployments.GetDeployment":
        request = deployments_pb2.GetDeploymentRequest(model=draw(names))
    elif method == "Deployments.ListDeployments":
        request = deployments_pb2.ListDeploymentsRequest()
    elif method == "Deployments.WatchRollout":
        request = deployments_pb2.WatchRolloutRequest(model=draw(names), generation=draw(numbers))
    elif method == "Workers.ListWorkers":
        request = workers_pb2.ListWorkersRequest(pool=draw(st.one_of(st.just(""), names)))
    elif method == "Tokens.CreateToken":
        request = tokens_pb2.CreateTokenRequest(role=draw(roles), description=draw(texts))
    elif method == "Tokens.ListTokens":
        request = tokens_pb2.ListTokensRequest(include_revoked=draw(st.booleans()))
    elif method == "Tokens.RevokeToken":
        request = tokens_pb2.RevokeTokenRequest(id=draw(token_ids))
    elif method == "Artifacts.Download":
        request = artifacts_pb2.DownloadRequest(digest=draw(digests), offset=draw(numbers))
    else:
        request = draw(hellos())
    return Call(method, request, draw(credentials))


def seed(client: Any) -> None:
    """Versions 1-3 of every model in :data:`POOL_NAMES` (``client``: a ControlPlaneClient), pushed as bytes."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(set(POOL_NAMES)):
            for v in (1, 2, 3):
                path = Path(tmp) / f"{name}-{v}.onnx"
                path.write_bytes(f"seed {name} {v}".encode())
                client.push(name, path)


class Target:
    """Stubs on one blocking channel plus the bearer tokens of each credential kind."""

    def __init__(self, channel: grpc.Channel, tokens: dict[str, str]) -> None:
        self.tokens = tokens
        self.stubs: dict[str, Any] = {
            "ModelRegistry": registry_pb2_grpc.ModelRegistryStub(channel),
            "Deployments": deployments_pb2_grpc.DeploymentsStub(channel),
            "Workers": workers_pb2_grpc.WorkersStub(channel),
            "Tokens": tokens_pb2_grpc.TokensStub(channel),
            "Artifacts": artifacts_pb2_grpc.ArtifactsStub(channel),
            "WorkerSync": sync_pb2_grpc.WorkerSyncStub(channel),
        }

    def metadata(self, credential: str) -> tuple[tuple[str, str], ...] | None:
        if credential == "none":
            return None
        if credential == "garbage":
            return (("authorization", "Bearer lmaas_0123456789ab_not-a-real-secret-at-all-000000000000000"),)
        return (("authorization", f"Bearer {self.tokens[credential]}"),)


def perform(target: Target, call: Call, timeout: float = 10.0) -> str:
    """Make the call; the status name it ended with (a stream that runs until its deadline counts as OK)."""
    service, name = call.method.split(".")
    method = getattr(target.stubs[service], name)
    md = target.metadata(call.credential)
    try:
        if call.method == "ModelRegistry.CreateVersion":
            method(iter(call.request), timeout=timeout, metadata=md)
        elif call.method == "WorkerSync.Sync":
            responses = method(iter(call.request), timeout=2.0, metadata=md)
            for _ in responses:
                break  # one snapshot is enough: the worker "leaves"
            responses.cancel()
        elif call.method in ("Deployments.WatchRollout", "Artifacts.Download"):
            for _ in method(call.request, timeout=2.0 if call.method.endswith("WatchRollout") else timeout,
                            metadata=md):
                pass
        else:
            method(call.request, timeout=timeout, metadata=md)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.CANCELLED and call.method == "WorkerSync.Sync":
            return "OK"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and call.method in STREAMING_TIMEOUT_OK:
            return "OK"
        return str(code.name)
    return "OK"
