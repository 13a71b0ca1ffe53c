"""A Triton model directory as it is: ``config.pbtxt`` with ``sequence_batching`` (Triton's own syntax) served to
stock tritonclient; the text-format reader maps the other fields too and refuses what it would drop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from lmaas.protos.errors import InvalidArgument
from lmaas.server.config import load_config
from lmaas.server.triton_config import parse_pbtxt
from processes import ServerProcess, start_worker
from test_sequence_batching import accumulator_graph
from triton_compat_models import write_model

ACCUMULATOR_PBTXT = """
# As in Triton's sequence examples: the accumulator with implicit state.
name: "acc_pbtxt"
backend: "onnxruntime"
max_batch_size: 2
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "SUM", data_type: TYPE_FP32, dims: [ 1 ] } ]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest { max_candidate_sequences: 4 }
  control_input [
    {
      name: "START"
      control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ]
    },
    {
      name: "CORRID"
      control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ]
    }
  ]
  state [ { input_name: "ACC_IN" output_name: "ACC_OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
}
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("pbtxt-repo")
    write_model(root, "acc_pbtxt", accumulator_graph())
    (root / "acc_pbtxt" / "config.pbtxt").write_text(ACCUMULATOR_PBTXT)
    proc = start_worker(root)
    yield proc
    proc.stop()


def test_triton_config_pbtxt_sequence_model(worker: ServerProcess) -> None:
    client = tc.InferenceServerClient(worker.grpc)
    try:
        sums: dict[int, list[float]] = {1: [], 2: []}
        for i, (a, b) in enumerate([(1, 5), (2, 6), (3, 7)]):
            for seq, value in ((1, a), (2, b)):
                x = tc.InferInput("INPUT", [1, 1], "FP32")
                x.set_data_from_numpy(np.array([[value]], np.float32))
                r = client.infer("acc_pbtxt", [x], sequence_id=seq, sequence_start=i == 0, sequence_end=i == 2)
                sums[seq].append(float(r.as_numpy("SUM")[0, 0]))
        assert sums == {1: [1, 3, 6], 2: [5, 11, 18]}
    finally:
        client.close()


def test_other_triton_fields_map(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text(
        """
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        input [ { name: "x" data_type: TYPE_STRING dims: [ -1 ] } ]
        output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
        dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100
                           default_queue_policy { max_queue_size: 16 } }
        instance_group [ { count: 2 kind: KIND_CPU }, { count: 1 } ]
        parameters { key: "intra_op_threads" value: { string_value: "1" } }
        model_warmup [ { name: "w" batch_size: 2 inputs { key: "x" value: { data_type: TYPE_STRING dims: [ 3 ]
                         zero_data: true } } } ]
        optimization { graph { level: 1 } }
        """
    )
    config = load_config(tmp_path)
    assert config.backend == "onnxruntime" and config.max_batch_size == 8
    assert [(t.name, t.datatype, t.dims) for t in config.inputs] == [("x", "BYTES", (-1,))]
    assert config.dynamic_batching is not None
    assert config.dynamic_batching.preferred_batch_sizes == (4, 8)
    assert config.dynamic_batching.max_queue_size == 16
    assert config.instance_count == 3 and config.parameters == {"intra_op_threads": "1"}
    assert config.model_warmup[0].batch_size == 2 and config.model_warmup[0].inputs["x"].dims == (3,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('ensemble_scheduling { step [ { model_name: "a" } ] }', "ensemble_scheduling"),
        ('backend: "tensorrt"', "is not served"),
        ("instance_group [ { kind: KIND_GPU } ]", "CPU only"),
        ("max_batch_size 4", "needs ':'"),
        ("sequence_batching { direct { } oldest { } }", "one strategy"),
        ('sequence_batching { state [ { input_name: "a" output_name: "b" initial_state { } } ] }', "initial_state"),
    ],
)
def test_what_would_be_dropped_is_refused(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.pbtxt").write_text(text)
    with pytest.raises(InvalidArgument, match=message):
        load_config(tmp_path)


def test_text_format_syntax() -> None:
    msg = parse_pbtxt('a: 1 b { c: "x\\"y" d: [1, 2.5, E] } b < c: true > # comment\n e: -3')
    assert msg == {"a": [1], "b": [{"c": ['x"y'], "d": [1, 2.5, "E"]}, {"c": [True]}], "e": [-3]}
