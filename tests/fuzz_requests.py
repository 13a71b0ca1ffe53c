"""Hypothesis strategies for ModelInfer requests, used by the CI fuzz test and ``benchmarks/fuzz.py``.

They aim at the edges: unknown names and datatypes, negative/huge/mismatched
shapes, raw sizes off by a few bytes, typed and raw mixed, BYTES length
prefixes that lie, random parameters and requested outputs.
"""

from __future__ import annotations

from hypothesis import strategies as st
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.tensors import DTYPES

DATATYPES = list(DTYPES)
SIZES = {name: dtype.itemsize for name, dtype in DTYPES.items()}  # BYTES: variable, never used as a size
# The test repository's signatures: model -> [(input, datatype, dims after the batch dim)]; all batch but "fixed".
MODELS = {
    "mlp": [("x", "FP32", (4,))],
    "fixed": [("a", "FP32", (2, 2)), ("b", "FP32", (2, 2))],
    "identity": [(f"in_{d}", d, (3,)) for d in DATATYPES if d != "BF16"],
    "identity_bf16": [("in_BF16", "BF16", (3,))],
}
TYPED_FIELDS = [
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
]

names = st.one_of(st.sampled_from([n for sig in MODELS.values() for n, _, _ in sig]), st.text(max_size=8))
shapes = st.lists(st.one_of(st.integers(-2, 6), st.sampled_from([0, 64, 65, 1 << 20, 1 << 40, -(1 << 62)])), max_size=4)
datatypes = st.one_of(st.sampled_from(DATATYPES), st.text(max_size=6))


def _bytes_elements(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        body = draw(st.binary(max_size=12))
        claimed = draw(st.one_of(st.just(len(body)), st.integers(0, 1 << 32 - 1)))
        out += claimed.to_bytes(4, "little") + body
    return out


@st.composite
def parameters(draw: st.DrawFn) -> dict[str, pb.InferParameter]:
    out = {}
    for key in draw(st.lists(st.text(max_size=10), max_size=3)):
        choice = draw(st.sampled_from(["bool_param", "int64_param", "string_param", "double_param", "uint64_param"]))
        value = {
            "bool_param": st.booleans(),
            "int64_param": st.integers(-(1 << 63), (1 << 63) - 1),
            "string_param": st.text(max_size=20),
            "double_param": st.floats(allow_nan=True),
            "uint64_param": st.integers(0, (1 << 64) - 1),
        }[choice]
        out[key] = pb.InferParameter(**{choice: draw(value)})
    return out


def _valid_tensor(
    draw: st.DrawFn,
    request: pb.ModelInferRequest,
    model: str,
    name: str,
    datatype: str,
    dims: tuple[int, ...],
    batch: int,
) -> None:
    shape = list(dims) if model == "fixed" else [batch, *dims]
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    count = 1
    for d in shape:
        count *= d
    if datatype == "BYTES":
        words = draw(st.lists(st.text(max_size=6), min_size=count, max_size=count))
        raw = b"".join(len(w.encode()).to_bytes(4, "little") + w.encode() for w in words)
    else:
        raw = draw(st.binary(min_size=count * SIZES[datatype], max_size=count * SIZES[datatype]))
    request.raw_input_contents.append(raw)


@st.composite
def infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    known = draw(st.integers(0, 9)) > 0
    model = draw(st.sampled_from(list(MODELS))) if known else draw(st.text(max_size=8))
    version = draw(st.sampled_from(["", "", "", "", "1", "1", "2", "x", "-1"]))
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=draw(st.text(max_size=8)))
    for key, value in draw(parameters()).items():
        request.parameters[key].CopyFrom(value)
    if known and draw(st.integers(0, 3)) > 0:  # mostly valid requests, perhaps with one thing broken below
        batch = draw(st.integers(1, 4))
        for name, datatype, dims in MODELS[model]:
            _valid_tensor(draw, request, model, name, datatype, dims, batch)
        _break_one_thing(draw, request)
    else:
        _random_inputs(draw, request, MODELS.get(model, [("x", "FP32", (4,))]))
    if draw(st.integers(0, 3)) == 0:  # sometimes ask for outputs, real or not
        outputs = st.one_of(st.sampled_from(["y", "sum", "out_FP32", "out_BYTES"]), st.text(max_size=4))
        for name in draw(st.lists(outputs, max_size=2)):
            request.outputs.add(name=name)
    return request


def _break_one_thing(draw: st.DrawFn, request: pb.ModelInferRequest) -> None:
    what = draw(st.sampled_from(["nothing", "nothing", "shape", "datatype", "raw", "name", "drop", "typed"]))
    i = draw(st.integers(0, len(request.inputs) - 1))
    tensor = request.inputs[i]
    if what == "shape":
        tensor.shape[draw(st.integers(0, len(tensor.shape) - 1))] = draw(st.integers(-3, 70))
    elif what == "datatype":
        tensor.datatype = draw(datatypes)
    elif what == "raw":
        raw = request.raw_input_contents[i]
        request.raw_input_contents[i] = raw[: draw(st.integers(0, len(raw)))] + draw(st.binary(max_size=5))
    elif what == "name":
        tensor.name = draw(names)
    elif what == "drop":
        del request.inputs[i]
        del request.raw_input_contents[i]
    elif what == "typed":
        tensor.contents.fp32_contents.extend([1.0])


def _random_inputs(
    draw: st.DrawFn, request: pb.ModelInferRequest, expected: list[tuple[str, str, tuple[int, ...]]]
) -> None:
    use_raw = draw(st.booleans())
    input_names = draw(st.one_of(st.just([n for n, _, _ in expected]), st.lists(names, max_size=4)))
    for name in input_names:
        tensor = request.inputs.add(name=name, datatype=draw(datatypes), shape=draw(shapes))
        if draw(st.booleans()):
            for key, value in draw(parameters()).items():
                tensor.parameters[key].CopyFrom(value)
        if use_raw:
            raw = (
                _bytes_elements(draw)
                if tensor.datatype == "BYTES" and draw(st.booleans())
                else draw(st.binary(max_size=96))
            )
            request.raw_input_contents.append(raw)
        elif draw(st.integers(0, 4)):
            field = draw(st.sampled_from(TYPED_FIELDS))
            values = {
                "bool_contents": st.booleans(),
                "bytes_contents": st.binary(max_size=8),
                "fp32_contents": st.floats(width=32),
                "fp64_contents": st.floats(),
                "int_contents": st.integers(-(1 << 31), (1 << 31) - 1),
                "int64_contents": st.integers(-(1 << 63), (1 << 63) - 1),
                "uint_contents": st.integers(0, (1 << 32) - 1),
                "uint64_contents": st.integers(0, (1 << 64) - 1),
            }[field]
            getattr(tensor.contents, field).extend(draw(st.lists(values, max_size=16)))
    if use_raw and draw(st.integers(0, 9)) == 0:  # raw and input counts disagree
        request.raw_input_contents.append(b"\x00" * draw(st.integers(0, 8)))
