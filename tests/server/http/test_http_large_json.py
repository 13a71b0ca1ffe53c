"""Large JSON tensors (decoded and encoded off the event loop) equal the gRPC path; bad data keeps its precise 400.

The worker serves ``wide``: an identity over every datatype but BF16 with no batching, so a tensor can be
[4096, 3] — 12,288 elements, the size of the cnn benchmark's input — and the JSON body is far above
``OFF_LOOP_BYTES``. The same checks run on a small body (decoded inline) where the answer must not differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from lmaas.server.http.oip import OFF_LOOP_BYTES
from models import ALL_DATATYPES, write_identity_onnx
from processes import ServerProcess, start_worker

DATATYPES = tuple(d for d in ALL_DATATYPES if d != "BF16")  # tritonclient.http sends BF16 only as binary
ROWS = 4096


def _array(datatype: str, rows: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (rows, 3)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    if datatype == "BYTES":
        return np.array([f"s{i}-ü".encode() for i in range(rows * 3)], dtype=np.object_).reshape(shape)
    dtype = np.dtype(th.triton_to_np_dtype(datatype))
    if dtype.kind == "f":
        a = rng.standard_normal(shape).astype(dtype)
        a.flat[0], a.flat[1] = np.finfo(dtype).max, np.finfo(dtype).tiny  # extremes survive the JSON round trip
        return a
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    a.flat[0], a.flat[1] = info.min, info.max
    return a


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("wide-repo")
    write_identity_onnx(root / "wide" / "1" / "model.onnx", DATATYPES)
    (root / "wide" / "config.json").write_text(json.dumps({"max_batch_size": 0}))
    proc = start_worker(root)
    yield proc
    assert proc.stop() == 0


@pytest.fixture()
def http(wide: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=wide.http_url, timeout=60) as c:
        yield c


def _grpc_answer(wide: ServerProcess, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    client = tg.InferenceServerClient(wide.grpc)
    try:
        inputs = []
        for dt, a in arrays.items():
            inp = tg.InferInput(f"in_{dt}", list(a.shape), dt)
            inp.set_data_from_numpy(a)
            inputs.append(inp)
        result = client.infer("wide", inputs)
        return {dt: result.as_numpy(f"out_{dt}") for dt in arrays}
    finally:
        client.close()


def _same(got: np.ndarray, expected: np.ndarray, datatype: str) -> None:
    if datatype == "BYTES":  # JSON answers strings, gRPC bytes: the same bytes either way
        as_bytes = [v if isinstance(v, bytes) else str(v).encode() for v in got.reshape(-1)]
        assert as_bytes == list(expected.reshape(-1)), datatype
    else:
        assert (got.dtype, got.shape) == (expected.dtype, expected.shape), datatype
        assert got.tobytes() == expected.tobytes(), datatype


@pytest.mark.parametrize("rows", [2, ROWS])
def test_json_tensors_equal_the_grpc_answer(wide: ServerProcess, rows: int) -> None:
    arrays = {dt: _array(dt, rows) for dt in DATATYPES}
    client = th.InferenceServerClient(wide.http, network_timeout=60)
    try:
        inputs = []
        for dt, a in arrays.items():
            inp = th.InferInput(f"in_{dt}", list(a.shape), dt)
            inp.set_data_from_numpy(a, binary_data=False)
            inputs.append(inp)
        outputs = [th.InferRequestedOutput(f"out_{dt}", binary_data=False) for dt in DATATYPES]
        body, _ = th.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
        assert (len(body) >= OFF_LOOP_BYTES) == (rows == ROWS)  # the large case really takes the thread
        result = client.infer("wide", inputs, outputs=outputs)
        got = {dt: result.as_numpy(f"out_{dt}") for dt in DATATYPES}
    finally:
        client.close()
    expected = _grpc_answer(wide, arrays)
    for dt in DATATYPES:
        assert got[dt] is not None
        _same(expected[dt], arrays[dt], dt)  # the model echoes
        _same(got[dt], expected[dt], dt)


def _request(data: dict[str, Any]) -> dict[str, Any]:
    """Every input of ``wide`` as JSON with the given ``data`` per datatype (shape from the first dimension)."""
    inputs = []
    for dt, values in data.items():
        rows = len(values) if isinstance(values[0], list) else len(values) // 3
        inputs.append({"name": f"in_{dt}", "shape": [rows, 3], "datatype": dt, "data": values})
    return {"inputs": inputs}


def test_nested_data_and_json_outputs_equal_flat_and_grpc(http: httpx.Client, wide: ServerProcess) -> None:
    arrays = {dt: _array(dt, ROWS, seed=11) for dt in ("FP32", "INT64", "BOOL", "UINT64", "FP16")}
    flat = {dt: a.reshape(-1).tolist() for dt, a in arrays.items()}
    nested = {dt: a.tolist() for dt, a in arrays.items()}
    # the rest of the model's inputs, so it runs
    rest = {dt: _plain(dt) for dt in DATATYPES if dt not in arrays}
    answers = []
    for data in (flat, nested):
        r = http.post("/v2/models/wide/infer", json=_request({**data, **rest}))
        assert r.status_code == 200, r.text
        assert len(r.content) >= OFF_LOOP_BYTES  # the answer is encoded in a thread too
        answers.append({o["name"]: o for o in r.json()["outputs"]})
    assert answers[0] == answers[1]
    expected = _grpc_answer(wide, arrays | {dt: _array(dt, 1) for dt in rest})
    for dt, a in arrays.items():
        out = answers[0][f"out_{dt}"]
        assert out["shape"] == [ROWS, 3] and out["datatype"] == dt
        _same(np.array(out["data"], dtype=a.dtype).reshape(ROWS, 3), expected[dt], dt)


def _tensor(datatype: str, data: list[Any], rows: int) -> dict[str, Any]:
    return {"inputs": [{"name": f"in_{datatype}", "shape": [rows, 3], "datatype": datatype, "data": data}]}


# (datatype, the good element, the bad element put last, the error's words)
BAD = [
    ("FP32", 1.5, True, "FP32 data must be numbers"),
    ("FP32", 1.5, None, "FP32 data must be numbers"),
    ("FP64", 2, "3", "FP64 data must be numbers"),
    ("INT32", 1, 1.5, "INT32 data must be integers"),
    ("INT32", 1, False, "INT32 data must be numbers"),
    ("INT32", 1, 2**31, "a value does not fit INT32: outside [-2147483648, 2147483647]"),
    ("UINT8", 1, -1, "a value does not fit UINT8: outside [0, 255]"),
    ("UINT64", 1, 2**64, "a value does not fit UINT64: outside [0, 18446744073709551615]"),
    ("INT64", 1, -(2**63) - 1, "a value does not fit INT64: outside [-9223372036854775808, 9223372036854775807]"),
    ("BOOL", True, 1, "BOOL data must be true or false"),
    ("BYTES", "a", 1, "BYTES data must be strings"),
    ("BYTES", "a", {"b": 1}, "BYTES data must be strings"),
]


BIG = 2 * ROWS  # even 1-digit elements make a body over OFF_LOOP_BYTES


@pytest.mark.parametrize("rows", [1, BIG])
@pytest.mark.parametrize(("datatype", "good", "bad", "message"), BAD)
def test_bad_data_is_a_precise_400_at_any_size(
    http: httpx.Client, rows: int, datatype: str, good: Any, bad: Any, message: str
) -> None:
    data = [good] * (rows * 3 - 1) + [bad]
    body = _tensor(datatype, data, rows)
    assert (len(json.dumps(body)) >= OFF_LOOP_BYTES) == (rows == BIG)
    r = http.post("/v2/models/wide/infer", json=body)
    assert r.status_code == 400, r.text
    assert r.json() == {"error": f"input 'in_{datatype}': {message}"}
    nested = [data[i : i + 3] for i in range(0, len(data), 3)]
    r2 = http.post("/v2/models/wide/infer", json=_tensor(datatype, nested, rows))
    assert (r2.status_code, r2.json()) == (400, r.json())  # nesting changes nothing


@pytest.mark.parametrize("rows", [1, BIG])
def test_wrong_counts_and_mixed_nesting(http: httpx.Client, rows: int) -> None:
    n = rows * 3
    r = http.post("/v2/models/wide/infer", json=_tensor("FP32", [0.5] * (n - 1), rows))
    assert (r.status_code, r.json()["error"]) == (
        400, f"input 'in_FP32': 'data' holds {n - 1} elements but shape [{rows}, 3] needs {n}"
    )
    # a right count passes the data check and meets the model's (its other inputs are missing) ...
    flat = http.post("/v2/models/wide/infer", json=_tensor("FP32", [0.5] * n, rows))
    assert flat.status_code == 400 and "in_FP32" not in flat.json()["error"], flat.text
    # ... and so does nested data with an empty row, which adds no element
    r = http.post("/v2/models/wide/infer", json=_tensor("FP32", [[0.5] * 3] * rows + [[]], rows))
    assert (r.status_code, r.json()) == (flat.status_code, flat.json())
    mixed = [0.5, [0.5, [0.5]]] + [0.5] * (n - 3)  # mixed depths: row-major elements, as before
    r = http.post("/v2/models/wide/infer", json=_tensor("FP32", mixed, rows))
    assert (r.status_code, r.json()) == (flat.status_code, flat.json())
    r = http.post("/v2/models/wide/infer", json=_tensor("FP32", [0.5, [True, [0.5]]] + [0.5] * (n - 3), rows))
    assert (r.status_code, r.json()["error"]) == (400, "input 'in_FP32': FP32 data must be numbers")


def test_large_malformed_json_is_400_and_the_worker_keeps_serving(http: httpx.Client) -> None:
    body = json.dumps(_tensor("FP32", [0.5] * BIG * 3, BIG)).encode()
    assert len(body) >= OFF_LOOP_BYTES
    r = http.post("/v2/models/wide/infer", content=body[:-2], headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"], r.text
    ok = http.post("/v2/models/wide/infer", json=_request({dt: _plain(dt) for dt in DATATYPES}))
    assert ok.status_code == 200, ok.text


def _plain(datatype: str) -> list[Any]:
    return [v.decode() if isinstance(v, bytes) else v for v in _array(datatype, 1).reshape(-1).tolist()]
