"""lmaas.client.InferenceClient / AsyncInferenceClient against real worker processes.

Results are compared with tritonclient's for the same requests; errors, retries and deadlines are
exercised on real servers (a worker that starts late, one that restarts, a model whose batcher waits).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as tc
from certs import TestCA
from lmaas.client import (
    AsyncInferenceClient,
    DeadlineExceeded,
    InferenceClient,
    InferResult,
    InvalidArgument,
    LMaaSError,
    ModelNotFound,
    NotFound,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
)
from models import ALL_DATATYPES, mlp_reference, write_identity_onnx
from processes import ServerProcess, start_worker
from tritonclient.utils import InferenceServerException

RAW_TYPES = [d for d in ALL_DATATYPES if d != "BF16"]  # the 'identity' model; BF16 is in 'identity_bf16'


def sample(dt: str) -> np.ndarray:
    """A [2, 3] array of ``dt`` that includes the extremes of integer types."""
    if dt == "BYTES":
        words = [["a", "bc", ""], ["héllo wörld", "x" * 100, "z"]]
        return np.array([[w.encode() for w in row] for row in words], dtype=object)
    if dt == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if dt == "BF16":
        return np.array([[1.5, 2, 3], [4, 5, -6]], dtype=ml_dtypes.bfloat16)
    dtype = np.dtype(tc.triton_to_np_dtype(dt))
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.array([[info.min, 1, 2], [3, 4, info.max]], dtype=dtype)
    return (np.arange(6).reshape(2, 3) / 3).astype(dtype)


def triton_infer(triton: tc.InferenceServerClient, model: str, inputs: dict[str, np.ndarray]) -> tc.InferResult:
    tensors = []
    for name, value in inputs.items():
        t = tc.InferInput(name, list(value.shape), name.removeprefix("in_") if name.startswith("in_") else "FP32")
        t.set_data_from_numpy(value)
        tensors.append(t)
    return triton.infer(model, tensors)


@pytest.fixture()
def client(worker: ServerProcess) -> Iterator[InferenceClient]:
    with InferenceClient(worker.grpc, timeout=30) as c:
        yield c


# ---- results -------------------------------------------------------------------------------------------------------


def _wire(message: object) -> bytes:
    """Messages from our stubs and tritonclient's live in different descriptor pools: compare their bytes."""
    data: bytes = message.SerializeToString(deterministic=True)  # type: ignore[attr-defined]
    return data


def test_health_and_metadata(client: InferenceClient, triton: tc.InferenceServerClient) -> None:
    assert client.live() and client.ready()
    assert client.model_ready("mlp") and client.model_ready("mlp", 1) and client.model_ready("mlp", "2")
    assert not client.model_ready("mlp", 3)
    assert not client.model_ready("nope")
    assert _wire(client.server_metadata()) == _wire(triton.get_server_metadata())
    assert _wire(client.metadata("identity")) == _wire(triton.get_model_metadata("identity"))
    assert _wire(client.metadata("mlp", 1)) == _wire(triton.get_model_metadata("mlp", "1"))
    assert _wire(client.config("mlp")) == _wire(triton.get_model_config("mlp").config)
    assert client.config("fixed").max_batch_size == 0


@pytest.mark.parametrize("model", ["mlp", "mlp_ts", "mlp_export"])
def test_mlp_equals_tritonclient_and_the_model(client: InferenceClient, triton: tc.InferenceServerClient,
                                               model: str) -> None:
    x = np.random.default_rng(7).standard_normal((5, 4), dtype=np.float32)
    ours = client.infer(model, {"x": x}, version=1, request_id="req-7")
    theirs = triton.infer(model, [_fp32("x", x)], model_version="1", request_id="req-7")
    assert isinstance(ours, InferResult)
    assert (ours.model_name, ours.model_version, ours.id) == (model, "1", "req-7")
    np.testing.assert_array_equal(ours["y"], theirs.as_numpy("y"))
    assert ours["y"].dtype == np.float32 and ours["y"].shape == (5, 3)
    np.testing.assert_allclose(ours.as_numpy("y"), mlp_reference(x, seed=0), rtol=1e-5, atol=1e-6)
    assert ours.response.SerializeToString() == theirs.get_response().SerializeToString()


def _fp32(name: str, x: np.ndarray) -> tc.InferInput:
    t = tc.InferInput(name, list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    return t


def test_every_datatype_round_trips_like_tritonclient(client: InferenceClient,
                                                      triton: tc.InferenceServerClient) -> None:
    for model, dts in (("identity", RAW_TYPES), ("identity_bf16", ["BF16"])):
        inputs = {f"in_{dt}": sample(dt) for dt in dts}
        ours = client.infer(model, inputs)
        theirs = triton_infer(triton, model, inputs)
        assert sorted(ours.outputs) == sorted(f"out_{dt}" for dt in dts)
        for dt in dts:
            got = ours[f"out_{dt}"]
            assert got.dtype == sample(dt).dtype, dt
            assert got.shape == (2, 3), dt
            np.testing.assert_array_equal(got, sample(dt), err_msg=dt)
            np.testing.assert_array_equal(got, theirs.as_numpy(f"out_{dt}"), err_msg=dt)
        # The raw bytes on the wire are the same as tritonclient's.
        assert list(ours.response.raw_output_contents) == list(theirs.get_response().raw_output_contents)


def test_bytes_from_str_and_bytes_and_selected_outputs(client: InferenceClient) -> None:
    inputs = {f"in_{dt}": sample(dt)[:1] for dt in RAW_TYPES}
    inputs["in_BYTES"] = np.array([["ä", "", "plain"]])  # str elements travel as UTF-8
    result = client.infer("identity", inputs, outputs=["out_BYTES", "out_INT64"])
    assert sorted(result.outputs) == ["out_BYTES", "out_INT64"]
    assert result["out_BYTES"].tolist() == [["ä".encode(), b"", b"plain"]]
    with pytest.raises(KeyError, match="out_FP32"):
        result.as_numpy("out_FP32")


def test_non_native_layouts_are_sent_correctly(client: InferenceClient) -> None:
    """Big-endian and non-contiguous arrays become row-major little-endian bytes."""
    base = {f"in_{dt}": sample(dt) for dt in RAW_TYPES}
    base["in_INT32"] = sample("INT32").astype(">i4")
    base["in_FP64"] = np.asfortranarray(sample("FP64"))
    base["in_FP32"] = np.arange(12, dtype=np.float32).reshape(2, 6)[:, ::2]
    result = client.infer("identity", base)
    np.testing.assert_array_equal(result["out_INT32"], sample("INT32"))
    assert result["out_INT32"].dtype == np.dtype("<i4")
    np.testing.assert_array_equal(result["out_FP64"], sample("FP64"))
    np.testing.assert_array_equal(result["out_FP32"], [[0, 2, 4], [6, 8, 10]])


def test_statistics_index_load_unload(client: InferenceClient) -> None:
    client.infer("fixed", {"a": np.ones((2, 2), np.float32), "b": np.ones((2, 2), np.float32)})
    stats = client.statistics("fixed")
    assert [s.name for s in stats.model_stats] == ["fixed"]
    assert stats.model_stats[0].inference_count >= 1
    index = {(m.name, m.version): m.state for m in client.repository_index()}
    assert index[("mlp", "1")] == "READY" and index[("identity", "1")] == "READY"
    client.unload("fixed")
    try:
        assert not client.model_ready("fixed")
        assert "fixed" not in {m.name for m in client.repository_index(ready=True)}
        with pytest.raises(NotFound):
            client.infer("fixed", {"a": np.ones((2, 2), np.float32), "b": np.ones((2, 2), np.float32)})
    finally:
        client.load("fixed")
    assert client.model_ready("fixed")


# ---- errors --------------------------------------------------------------------------------------------------------


def test_unknown_model_is_not_found(client: InferenceClient, triton: tc.InferenceServerClient) -> None:
    """The server's rich status (google.rpc.ErrorInfo) gives the client the exact class with its fields."""
    with pytest.raises(ModelNotFound, match="nope") as info:
        client.infer("nope", {"x": np.ones((1, 4), np.float32)})
    assert info.value.code.name == "NOT_FOUND" and info.value.name == "nope" and info.value.version == ""
    assert info.value.__cause__ is not None  # chained to the grpc.RpcError
    with pytest.raises(ModelNotFound) as info:
        client.metadata("nope")
    assert info.value.name == "nope"
    with pytest.raises(ModelNotFound) as info:
        client.infer("mlp", {"x": np.ones((1, 4), np.float32)}, version=99)
    assert (info.value.name, info.value.version) == ("mlp", "99")
    # Triton's client still sees Triton's status and wording (the trailer is extra).
    with pytest.raises(InferenceServerException) as triton_info:
        triton.get_model_metadata("nope")
    assert triton_info.value.status() == "StatusCode.NOT_FOUND"
    assert triton_info.value.message() == "Request for unknown model: 'nope' is not found"


def test_bad_input_is_invalid_argument(client: InferenceClient) -> None:
    with pytest.raises(InvalidArgument, match="'x'"):
        client.infer("mlp", {"x": np.ones((1, 5), np.float32)})
    with pytest.raises(InvalidArgument):
        client.infer("mlp", {"x": np.ones((1, 4), np.float64)})
    with pytest.raises(InvalidArgument, match="config"):  # checked before anything is unloaded
        client.load("fixed", config={"max_batch_size": -1})
    with pytest.raises(NotFound):
        client.load("nope")
    with pytest.raises(InvalidArgument, match="datatype"):  # refused before sending
        client.infer("mlp", {"x": np.ones((1, 4), np.complex64)})


# ---- retries and deadlines -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """'echo' (FP32 identity) and 'slow': the same model, whose batcher waits 3 s for a batch to fill."""
    root = tmp_path_factory.mktemp("small-repo")
    write_identity_onnx(root / "echo" / "1" / "model.onnx", ("FP32",))
    write_identity_onnx(root / "slow" / "1" / "model.onnx", ("FP32",))
    (root / "slow" / "config.json").write_text(json.dumps({
        "max_batch_size": 64,
        "dynamic_batching": {"max_queue_delay_microseconds": 3_000_000, "preferred_batch_sizes": [64]},
    }))
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_later(repository: Path, port: int, delay: float, started: list[ServerProcess]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        started.append(start_worker(repository, "--grpc-port", str(port)))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


PATIENT = RetryPolicy(max_attempts=60, initial_backoff=0.05, max_backoff=0.5)
ECHO = {"in_FP32": np.arange(3, dtype=np.float32).reshape(1, 3)}


def test_unavailable_without_retries(small_repository: Path) -> None:
    port = _free_port()
    with InferenceClient(f"127.0.0.1:{port}", retry=RetryPolicy.none()) as c, pytest.raises(Unavailable):
        c.live(timeout=5)


def test_retries_until_a_late_worker_starts(small_repository: Path) -> None:
    port = _free_port()
    started: list[ServerProcess] = []
    thread = _start_later(small_repository, port, 1.0, started)
    try:
        with InferenceClient(f"127.0.0.1:{port}", retry=PATIENT) as c:
            t0 = time.monotonic()
            result = c.infer("echo", ECHO, timeout=60)
            assert time.monotonic() - t0 >= 1.0
            np.testing.assert_array_equal(result["out_FP32"], ECHO["in_FP32"])
    finally:
        thread.join(60)
        for proc in started:
            proc.stop()


def test_retries_across_a_worker_restart(small_repository: Path) -> None:
    port = _free_port()
    first = start_worker(small_repository, "--grpc-port", str(port))
    started: list[ServerProcess] = []
    try:
        with InferenceClient(f"127.0.0.1:{port}", retry=PATIENT) as c:
            assert c.infer("echo", ECHO).model_name == "echo"
            first.stop()
            thread = _start_later(small_repository, port, 0.5, started)
            result = c.infer("echo", ECHO, timeout=60)
            np.testing.assert_array_equal(result["out_FP32"], ECHO["in_FP32"])
            thread.join(60)
    finally:
        first.stop()
        for proc in started:
            proc.stop()


def test_timeout_bounds_the_retries(small_repository: Path) -> None:
    port = _free_port()
    with InferenceClient(f"127.0.0.1:{port}", retry=PATIENT) as c:
        t0 = time.monotonic()
        with pytest.raises((Unavailable, DeadlineExceeded)):
            c.live(timeout=1.0)
        assert time.monotonic() - t0 < 2.0


@pytest.fixture(scope="module")
def small_worker(small_repository: Path) -> Iterator[ServerProcess]:
    proc = start_worker(small_repository)
    yield proc
    proc.stop()


def test_deadline_exceeded(small_worker: ServerProcess) -> None:
    with InferenceClient(small_worker.grpc) as c:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            c.infer("slow", ECHO, timeout=0.3)
        assert time.monotonic() - t0 < 2.0
        # A client-wide default deadline applies to every call.
    with InferenceClient(small_worker.grpc, timeout=0.3) as c, pytest.raises(DeadlineExceeded):
        c.infer("slow", ECHO)


# ---- security: API keys, TLS, mutual TLS (the worker's own flags) ---------------------------------------------------

X1 = {"x": np.ones((1, 4), np.float32)}


def test_api_key(mlp_repository: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("alpha-key\n")
    proc = start_worker(mlp_repository, "--require-api-key", "--api-key-file", str(keys))
    try:
        with InferenceClient(proc.grpc) as c, pytest.raises(Unauthenticated, match="API key"):
            c.infer("mlp", X1)
        with InferenceClient(proc.grpc, api_key="wrong") as c, pytest.raises(Unauthenticated):
            c.infer("mlp", X1)
        with InferenceClient(proc.grpc, api_key="alpha-key") as c:
            assert c.infer("mlp", X1)["y"].shape == (1, 3)
        with InferenceClient(proc.grpc, metadata=[("x-api-key", "alpha-key")]) as c:
            assert c.infer("mlp", X1)["y"].shape == (1, 3)
    finally:
        proc.stop()


async def test_tls_and_mutual_tls(mlp_repository: Path, tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    server, client_cert = ca.issue("worker"), ca.issue("client")
    proc = start_worker(mlp_repository, "--tls-cert", str(server.cert), "--tls-key", str(server.key),
                        "--tls-client-ca", str(ca.cert))
    root = ca.cert.read_bytes()
    mtls = {"root_certificates": root, "private_key": client_cert.key.read_bytes(),
            "certificate_chain": client_cert.cert.read_bytes()}
    try:
        with InferenceClient(proc.grpc, **mtls) as c:
            assert c.channel_config.secure
            assert c.infer("mlp", X1)["y"].shape == (1, 3)
        async with AsyncInferenceClient(proc.grpc, **mtls) as ac:
            assert (await ac.infer("mlp", X1))["y"].shape == (1, 3)
        # The certificate names localhost and 127.0.0.1; server_name overrides the name checked.
        port = proc.grpc.rsplit(":", 1)[1]
        with InferenceClient(f"localhost:{port}", **mtls) as c:
            assert c.live()
        once = RetryPolicy.none()
        with InferenceClient(proc.grpc, server_name="other.example", retry=once, **mtls) as c, \
                pytest.raises(Unavailable):
            c.live(timeout=10)
        with InferenceClient(proc.grpc, root_certificates=root, retry=once) as c, pytest.raises(Unavailable):
            c.live(timeout=10)  # no client certificate: the handshake fails
        with InferenceClient(proc.grpc, retry=once) as c, pytest.raises(Unavailable):
            c.live(timeout=10)  # plaintext to a TLS port
    finally:
        proc.stop()


# ---- asyncio -------------------------------------------------------------------------------------------------------


async def test_async_client(worker: ServerProcess, triton: tc.InferenceServerClient) -> None:
    async with AsyncInferenceClient(worker.grpc, timeout=30) as c:
        assert await c.live() and await c.ready()
        assert await c.model_ready("mlp", 2) and not await c.model_ready("nope")
        assert (await c.metadata("mlp")).name == "mlp"
        assert (await c.config("mlp")).name == "mlp"
        assert (await c.server_metadata()).name == "lmaas"
        inputs = {f"in_{dt}": sample(dt) for dt in RAW_TYPES}
        ours = await c.infer("identity", inputs, request_id="a1")
        theirs = triton_infer(triton, "identity", inputs)
        assert ours.id == "a1"
        for dt in RAW_TYPES:
            np.testing.assert_array_equal(ours[f"out_{dt}"], theirs.as_numpy(f"out_{dt}"), err_msg=dt)
        bf16 = await c.infer("identity_bf16", {"in_BF16": sample("BF16")})
        assert bf16["out_BF16"].dtype == ml_dtypes.bfloat16
        assert {m.name for m in await c.repository_index()} >= {"mlp", "identity"}
        assert (await c.statistics("identity")).model_stats[0].name == "identity"
        with pytest.raises(NotFound):
            await c.infer("nope", {"x": np.ones((1, 4), np.float32)})
        with pytest.raises(InvalidArgument):
            await c.infer("mlp", {"x": np.ones((1, 5), np.float32)})


async def test_async_retry_and_deadline(small_repository: Path, small_worker: ServerProcess) -> None:
    import asyncio

    async with AsyncInferenceClient(small_worker.grpc) as c:
        with pytest.raises(DeadlineExceeded):
            await c.infer("slow", ECHO, timeout=0.3)
        # Many concurrent requests share one channel.
        results = await asyncio.gather(*(c.infer("echo", ECHO, request_id=str(i)) for i in range(20)))
        assert [r.id for r in results] == [str(i) for i in range(20)]
    port = _free_port()
    started: list[ServerProcess] = []
    thread = _start_later(small_repository, port, 1.0, started)
    try:
        async with AsyncInferenceClient(f"127.0.0.1:{port}", retry=PATIENT) as c:
            result = await c.infer("echo", ECHO, timeout=60)
            np.testing.assert_array_equal(result["out_FP32"], ECHO["in_FP32"])
    finally:
        thread.join(60)
        for proc in started:
            proc.stop()


def test_errors_share_the_server_classes() -> None:
    import lmaas.protos.errors as errors

    assert NotFound is errors.NotFound and issubclass(NotFound, LMaaSError)
