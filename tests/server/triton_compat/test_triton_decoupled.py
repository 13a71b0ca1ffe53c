"""A decoupled (non-LLM) PyTorch model streams 0..N responses per request over ModelStreamInfer (tritonclient)."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from processes import ServerProcess, start_worker
from tritonclient.utils import InferenceServerException


def _write_repeat(model_dir: Path) -> None:
    """'IN' INT32 [1], 'N' INT32 [1] → N responses: 'OUT' = IN + i and 'IDX' = i (shape [1] each)."""
    import torch

    class Repeat(torch.nn.Module):
        def forward(self, x: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.arange(int(n[0].item()), dtype=torch.int32)
            return (x[0] + idx).reshape(-1, 1), idx.reshape(-1, 1)

    (model_dir / "1").mkdir(parents=True)
    torch.jit.script(Repeat()).save(str(model_dir / "1" / "model.pt"))
    config = {
        "backend": "pytorch",
        "max_batch_size": 0,
        "inputs": [{"name": "IN", "datatype": "INT32", "dims": [1]}, {"name": "N", "datatype": "INT32", "dims": [1]}],
        "outputs": [
            {"name": "OUT", "datatype": "INT32", "dims": [1]},
            {"name": "IDX", "datatype": "INT32", "dims": [1]},
        ],
        "model_transaction_policy": {"decoupled": True},
    }
    (model_dir / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("decoupled-repo")
    _write_repeat(root / "repeat")
    proc = start_worker(root)
    yield proc
    proc.stop()


def _inputs(value: int, n: int) -> list[tc.InferInput]:
    ins = []
    for name, v in (("IN", value), ("N", n)):
        t = tc.InferInput(name, [1], "INT32")
        t.set_data_from_numpy(np.array([v], np.int32))
        ins.append(t)
    return ins


def _stream(worker: ServerProcess, requests: list[tuple[str, int, int]], empty_final: bool) -> list:  # type: ignore[type-arg]
    results: queue.Queue = queue.Queue()  # type: ignore[type-arg]
    client = tc.InferenceServerClient(worker.grpc)
    try:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        for request_id, value, n in requests:
            client.async_stream_infer(
                "repeat", _inputs(value, n), request_id=request_id, enable_empty_final_response=empty_final
            )
        client.stop_stream()  # waits for the server to end the call
    finally:
        client.close()
    return [results.get_nowait() for _ in range(results.qsize())]


def test_repeat_streams_n_responses_then_the_final_flag(worker: ServerProcess) -> None:
    got = _stream(worker, [("a", 10, 3), ("b", 20, 2)], empty_final=False)
    assert all(error is None for _, error in got)
    by_id: dict[str, list] = {}  # type: ignore[type-arg]
    for result, _ in got:
        by_id.setdefault(result.get_response().id, []).append(result)
    assert [int(r.as_numpy("OUT")[0]) for r in by_id["a"]] == [10, 11, 12]
    assert [int(r.as_numpy("IDX")[0]) for r in by_id["b"]] == [0, 1]
    finals = {k: [r.get_response().parameters["triton_final_response"].bool_param for r in v] for k, v in by_id.items()}
    assert finals == {"a": [False, False, True], "b": [False, True]}


def test_empty_final_response_when_asked_and_for_zero_responses(worker: ServerProcess) -> None:
    got = _stream(worker, [("two", 5, 2), ("none", 5, 0)], empty_final=True)
    by_id: dict[str, list] = {}  # type: ignore[type-arg]
    for result, error in got:
        assert error is None
        by_id.setdefault(result.get_response().id, []).append(result.get_response())
    assert [len(r.outputs) for r in by_id["two"]] == [2, 2, 0]
    assert [r.parameters["triton_final_response"].bool_param for r in by_id["two"]] == [False, False, True]
    assert [(len(r.outputs), r.parameters["triton_final_response"].bool_param) for r in by_id["none"]] == [(0, True)]


def test_unary_infer_on_a_decoupled_model_is_refused(worker: ServerProcess) -> None:
    client = tc.InferenceServerClient(worker.grpc)
    try:
        assert client.get_model_config("repeat").config.model_transaction_policy.decoupled
        with pytest.raises(InferenceServerException) as err:
            client.infer("repeat", _inputs(1, 2))
    finally:
        client.close()
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "doesn't support models with decoupled transaction policy" in err.value.message()
