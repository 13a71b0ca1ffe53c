"""Sequence batching (Triton's ``sequence_batching``) with stock tritonclient: an accumulator ONNX model whose
running sum is implicit state kept by the worker, over unary gRPC, the gRPC stream and HTTP."""

from __future__ import annotations

import queue
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from onnx import TensorProto, helper
from processes import ServerProcess, start_worker
from triton_compat_models import write_model
from tritonclient.utils import InferenceServerException


def accumulator_graph(corrid: bool = True) -> onnx.GraphProto:
    """SUM = ACC_IN * (1 - START) + INPUT, ACC_OUT = SUM, CORR = CORRID: stateless, the worker carries ACC."""
    x = helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", 1])
    start = helper.make_tensor_value_info("START", TensorProto.INT32, ["batch", 1])
    corrid_in = helper.make_tensor_value_info("CORRID", TensorProto.UINT64, ["batch", 1])
    acc_in = helper.make_tensor_value_info("ACC_IN", TensorProto.FLOAT, ["batch", 1])
    total = helper.make_tensor_value_info("SUM", TensorProto.FLOAT, ["batch", 1])
    acc_out = helper.make_tensor_value_info("ACC_OUT", TensorProto.FLOAT, ["batch", 1])
    corr = helper.make_tensor_value_info("CORR", TensorProto.UINT64, ["batch", 1])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("Cast", ["START"], ["start_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "start_f"], ["keep"]),
        helper.make_node("Mul", ["ACC_IN", "keep"], ["kept"]),
        helper.make_node("Add", ["kept", "INPUT"], ["SUM"]),
        helper.make_node("Identity", ["SUM"], ["ACC_OUT"]),
    ]
    if not corrid:
        return helper.make_graph(nodes, "accumulator", [x, start, acc_in], [total, acc_out], [one])
    nodes.append(helper.make_node("Identity", ["CORRID"], ["CORR"]))
    return helper.make_graph(nodes, "accumulator", [x, start, corrid_in, acc_in], [total, acc_out, corr], [one])


def _config(strategy: dict[str, Any], *, slots: int, idle_us: int = 60_000_000, corrid: bool = True) -> dict[str, Any]:
    corrid_control = {"name": "CORRID", "control": [{"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_UINT64"}]}
    return {
        "max_batch_size": slots,
        "sequence_batching": {
            "max_sequence_idle_microseconds": idle_us,
            **strategy,
            "control_input": [
                {"name": "START", "control": [{"kind": "CONTROL_SEQUENCE_START", "int32_false_true": [0, 1]}]},
                *([corrid_control] if corrid else []),
            ],
            "state": [{"input_name": "ACC_IN", "output_name": "ACC_OUT", "data_type": "TYPE_FP32", "dims": [1]}],
        },
    }


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sequence-repo")
    graph = accumulator_graph()
    write_model(root, "acc_direct", graph, _config({"direct": {}}, slots=2))
    oldest = _config({"oldest": {"max_candidate_sequences": 3}}, slots=2, corrid=False)
    write_model(root, "acc_oldest", accumulator_graph(corrid=False), oldest)
    # One slot that an idle sequence holds for 0.3 s: a second sequence waits in the backlog until it frees.
    write_model(root, "acc_one_slot", graph, _config({"direct": {}}, slots=1, idle_us=300_000))
    write_model(root, "acc_unload", graph, _config({}, slots=2))
    # A partial batch waits up to a minute for its second row: two sequences started together run as one batch.
    delayed = _config({"oldest": {"max_candidate_sequences": 2, "max_queue_delay_microseconds": 60_000_000}}, slots=2)
    write_model(root, "acc_delay", graph, delayed)
    return root


@pytest.fixture(scope="module")
def worker(repository: Path) -> Iterator[ServerProcess]:
    proc = start_worker(repository)
    yield proc
    proc.stop()


@pytest.fixture
def grpc_client(worker: ServerProcess) -> Iterator[tc.InferenceServerClient]:
    client = tc.InferenceServerClient(worker.grpc)
    yield client
    client.close()


def _input(value: float, module: Any = tc) -> Any:
    t = module.InferInput("INPUT", [1, 1], "FP32")
    t.set_data_from_numpy(np.array([[value]], np.float32))
    return t


def _sum(result: Any) -> float:
    return float(result.as_numpy("SUM")[0, 0])


def _run(client: Any, model: str, seq: int | str, value: float, *, start: bool = False, end: bool = False) -> Any:
    module = tc if isinstance(client, tc.InferenceServerClient) else th
    return client.infer(model, [_input(value, module)], sequence_id=seq, sequence_start=start, sequence_end=end)


def _interleaved(client: Any, model: str, a: int | str, b: int | str) -> tuple[list[float], list[float]]:
    """Two sequences, requests alternating: each must see only its own running sum."""
    sums_a, sums_b = [], []
    for i, (va, vb) in enumerate([(1, 10), (2, 20), (3, 30), (4, 40)]):
        first, last = i == 0, i == 3
        sums_a.append(_sum(_run(client, model, a, va, start=first, end=last)))
        sums_b.append(_sum(_run(client, model, b, vb, start=first, end=last)))
    return sums_a, sums_b


@pytest.mark.parametrize("model", ["acc_direct", "acc_oldest"])
def test_interleaved_sequences_keep_their_own_sums_grpc(grpc_client: tc.InferenceServerClient, model: str) -> None:
    assert _interleaved(grpc_client, model, 11, 12) == ([1, 3, 6, 10], [10, 30, 60, 100])
    assert _interleaved(grpc_client, model, 11, 12) == ([1, 3, 6, 10], [10, 30, 60, 100])  # START resets the state


def test_string_sequence_ids(grpc_client: tc.InferenceServerClient) -> None:
    assert _interleaved(grpc_client, "acc_oldest", "alpha", "beta") == ([1, 3, 6, 10], [10, 30, 60, 100])
    # A UINT64 CORRID control cannot carry a string ID: refused before the sequence starts.
    _invalid(lambda: _run(grpc_client, "acc_direct", "alpha", 1.0, start=True), "takes an unsigned integer")


def test_corrid_control_carries_the_sequence_id(grpc_client: tc.InferenceServerClient) -> None:
    result = _run(grpc_client, "acc_direct", 987654321, 1.0, start=True, end=True)
    assert int(result.as_numpy("CORR")[0, 0]) == 987654321


def test_interleaved_sequences_http(worker: ServerProcess) -> None:
    client = th.InferenceServerClient(worker.http)
    try:
        assert _interleaved(client, "acc_oldest", 21, "http-b") == ([1, 3, 6, 10], [10, 30, 60, 100])
        with pytest.raises(InferenceServerException, match="must specify the START flag") as info:
            _run(client, "acc_oldest", 21, 1.0)
        assert info.value.status() == "400"
    finally:
        client.close()


def test_interleaved_sequences_on_one_stream(worker: ServerProcess) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = tc.InferenceServerClient(worker.grpc)
    try:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        for i, (va, vb) in enumerate([(1, 10), (2, 20), (3, 30)]):
            for seq, value in ((31, va), (32, vb)):
                client.async_stream_infer(
                    "acc_direct",
                    [_input(value)],
                    request_id=f"{seq}-{i}",
                    sequence_id=seq,
                    sequence_start=i == 0,
                    sequence_end=i == 2,
                )
        client.stop_stream()
    finally:
        client.close()
    got = [results.get_nowait() for _ in range(results.qsize())]
    assert all(error is None for _, error in got)
    sums = {r.get_response().id: _sum(r) for r, _ in got}
    assert sums == {"31-0": 1, "32-0": 10, "31-1": 3, "32-1": 30, "31-2": 6, "32-2": 60}


def test_model_config_and_metadata(grpc_client: tc.InferenceServerClient) -> None:
    meta = grpc_client.get_model_metadata("acc_oldest", as_json=True)
    assert [t["name"] for t in meta["inputs"]] == ["INPUT"]  # control and state inputs are the worker's
    assert [t["name"] for t in meta["outputs"]] == ["SUM"]
    config = grpc_client.get_model_config("acc_oldest", as_json=True)["config"]
    # Triton's own ModelConfig.sequence_batching (what perf_analyzer reads to send sequences), not a side channel.
    sequence = config["sequence_batching"]
    assert sequence["oldest"]["max_candidate_sequences"] == 3
    assert sequence["max_sequence_idle_microseconds"] == "60000000"  # uint64: a string in proto JSON
    # (CONTROL_SEQUENCE_START is the enum's zero value, so proto JSON leaves "kind" out, as Triton's does.)
    assert sequence["control_input"] == [{"name": "START", "control": [{"int32_false_true": [0, 1]}]}]
    assert sequence["state"] == [{"input_name": "ACC_IN", "output_name": "ACC_OUT", "data_type": "TYPE_FP32",
                                  "dims": ["1"]}]
    assert "dynamic_batching" not in config and "sequence_batching" not in config.get("parameters", {})


def _invalid(call: Any, match: str) -> None:
    with pytest.raises(InferenceServerException, match=match) as info:
        call()
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_requests_that_are_refused(grpc_client: tc.InferenceServerClient) -> None:
    _invalid(
        lambda: _run(grpc_client, "acc_direct", 4242, 1.0),
        "inference request for sequence 4242 to model 'acc_direct' must specify the START flag on the first "
        "request of the sequence",
    )
    _invalid(lambda: grpc_client.infer("acc_direct", [_input(1.0)]), "must specify a non-zero or non-empty correlation")
    _run(grpc_client, "acc_direct", 43, 1.0, start=True, end=True)  # ended: the ID needs a new START
    _invalid(lambda: _run(grpc_client, "acc_direct", 43, 1.0), "must specify the START flag")
    two = tc.InferInput("INPUT", [2, 1], "FP32")
    two.set_data_from_numpy(np.ones((2, 1), np.float32))
    _invalid(
        lambda: grpc_client.infer("acc_direct", [two], sequence_id=44, sequence_start=True),
        "must specify batch-size 1 due to requirements of sequence batcher",
    )


def test_an_idle_sequence_frees_the_only_slot(grpc_client: tc.InferenceServerClient, worker: ServerProcess) -> None:
    """With one slot held by idle sequence A, sequence B waits (Triton's backlog), then runs once A's idle timeout
    frees the slot; A, now unknown, must START again."""
    assert _sum(_run(grpc_client, "acc_one_slot", 51, 5.0, start=True)) == 5
    done: queue.Queue[Any] = queue.Queue()

    def second() -> None:
        other = tc.InferenceServerClient(worker.grpc)
        try:
            done.put(_sum(_run(other, "acc_one_slot", 52, 7.0, start=True)))
        except Exception as exc:  # reported to the test thread
            done.put(exc)
        finally:
            other.close()

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(30)
    assert done.get_nowait() == 7  # its own sum: the slot's state was not A's
    _invalid(lambda: _run(grpc_client, "acc_one_slot", 51, 1.0), "sequence 51 .* must specify the START flag")
    assert _sum(_run(grpc_client, "acc_one_slot", 52, 1.0, end=True)) == 8


def _pending(worker: ServerProcess, model: str) -> float:
    return _metric(worker, "lmaas_inference_pending_requests", model)


def test_direct_more_sequences_than_slots_wait_oldest_candidates_do_not(
    grpc_client: tc.InferenceServerClient, worker: ServerProcess
) -> None:
    """acc_direct has 2 slots (1 instance x max_batch_size 2): a third sequence waits in the backlog until one
    ends. acc_oldest has 3 candidate sequences: three start at once."""
    for seq in (71, 72, 73):  # would time out if the third had to wait
        assert (
            _sum(
                grpc_client.infer("acc_oldest", [_input(seq)], sequence_id=seq, sequence_start=True, client_timeout=20)
            )
            == seq
        )
    for seq in (71, 72, 73):
        _run(grpc_client, "acc_oldest", seq, 0.0, end=True)

    _run(grpc_client, "acc_direct", 81, 1.0, start=True)
    _run(grpc_client, "acc_direct", 82, 2.0, start=True)
    done: queue.Queue[Any] = queue.Queue()

    def third() -> None:
        other = tc.InferenceServerClient(worker.grpc)
        try:
            done.put(_sum(_run(other, "acc_direct", 83, 3.0, start=True)))
        except Exception as exc:  # reported to the test thread
            done.put(exc)
        finally:
            other.close()

    thread = threading.Thread(target=third)
    thread.start()
    while _pending(worker, "acc_direct") < 1:  # the third sequence's START waits for a slot
        assert thread.is_alive(), done.get_nowait()
        time.sleep(0.02)
    assert done.empty()
    assert _sum(_run(grpc_client, "acc_direct", 81, 10.0, end=True)) == 11  # ends: its slot goes to 83
    thread.join(30)
    assert done.get_nowait() == 3
    _run(grpc_client, "acc_direct", 82, 0.0, end=True)
    _run(grpc_client, "acc_direct", 83, 0.0, end=True)


def _metric(worker: ServerProcess, name: str, model: str) -> float:
    with urllib.request.urlopen(worker.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    found = re.search(rf'{name}{{model="{model}",version="1"}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_max_queue_delay_batches_two_sequences(worker: ServerProcess) -> None:
    results: queue.Queue[Any] = queue.Queue()

    def start(seq: int) -> None:
        c = tc.InferenceServerClient(worker.grpc)
        try:
            results.put((seq, _sum(_run(c, "acc_delay", seq, float(seq), start=True, end=True))))
        except Exception as exc:  # reported to the test thread
            results.put((seq, exc))
        finally:
            c.close()

    threads = [threading.Thread(target=start, args=(seq,)) for seq in (91, 92)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)  # each alone would wait 60 s for a second row
    assert sorted(results.get_nowait() for _ in range(2)) == [(91, 91.0), (92, 92.0)]
    assert _metric(worker, "lmaas_inference_executions_total", "acc_delay") == 1
    assert _metric(worker, "lmaas_inferences_total", "acc_delay") == 2


def test_unload_ends_sequences_with_a_clear_status(grpc_client: tc.InferenceServerClient) -> None:
    assert _sum(_run(grpc_client, "acc_unload", 61, 2.0, start=True)) == 2
    grpc_client.unload_model("acc_unload")
    with pytest.raises(InferenceServerException, match="unknown model") as info:
        _run(grpc_client, "acc_unload", 61, 1.0)
    assert info.value.status() == "StatusCode.NOT_FOUND"
    grpc_client.load_model("acc_unload")
    # The reloaded model never saw sequence 61: refused, not silently restarted from zero.
    _invalid(lambda: _run(grpc_client, "acc_unload", 61, 1.0), "sequence 61 .* must specify the START flag")
    assert _sum(_run(grpc_client, "acc_unload", 61, 1.0, start=True, end=True)) == 1


def test_perf_analyzer_drives_sequences(worker: ServerProcess, binary: str) -> None:
    """perf_analyzer sees sequence_batching in the ModelConfig and sends sequences (START … END, one correlation
    ID each) at concurrency 2; every request it sends is served and none fails (a missing START would fail it)."""
    from benchmarks.perf_analyzer import run_perf_analyzer

    def counts() -> tuple[int, int]:  # the model's cumulative (success, fail); other tests' failures came before
        client = tc.InferenceServerClient(worker.grpc)
        try:
            stats = client.get_inference_statistics("acc_direct", as_json=True)["model_stats"][0]["inference_stats"]
            return int(stats.get("success", {}).get("count", 0)), int(stats.get("fail", {}).get("count", 0))
        finally:
            client.close()

    success, fail = counts()
    extra = ["--sequence-length", "4", "--concurrency-range", "2"]
    result = run_perf_analyzer(worker.grpc, "acc_direct", concurrency=2, measurement_ms=300, extra=extra,
                               binary=binary, timeout=120, stability_percent=1000, max_trials=20)  # busy box
    assert result["throughput"] > 0
    success_after, fail_after = counts()
    assert success_after > success
    assert fail_after == fail, (result["stdout"], result["stderr"])
