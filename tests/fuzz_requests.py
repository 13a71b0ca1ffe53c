"""Hypothesis strategies for ModelInfer requests, used by the CI fuzz test and ``benchmarks/fuzz.py``.

They aim at the edges: unknown names and datatypes, negative/huge/mismatched
shapes, raw sizes off by a few bytes, typed and raw mixed, BYTES length
prefixes that lie, random parameters and requested outputs.
"""

from __future__ import annotations

from hypothesis import strategies as st

from lmaas.protos.inference import grpc_service_pb2 as pb

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BF16", "BYTES"]
MODELS = {"mlp": ["x"], "fixed": ["a", "b"], "identity": [f"in_{d}" for d in DATATYPES if d != "BF16"],
          "identity_bf16": ["in_BF16"]}
TYPED_FIELDS = ["bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                "fp32_contents", "fp64_contents", "bytes_contents"]

names = st.one_of(st.sampled_from([n for ns in MODELS.values() for n in ns]), st.text(max_size=8))
shapes = st.lists(st.one_of(st.integers(-2, 6), st.sampled_from([0, 64, 65, 1 << 20, 1 << 40, -(1 << 62)])),
                  max_size=4)
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
        value = {"bool_param": st.booleans(), "int64_param": st.integers(-(1 << 63), (1 << 63) - 1),
                 "string_param": st.text(max_size=20), "double_param": st.floats(allow_nan=True),
                 "uint64_param": st.integers(0, (1 << 64) - 1)}[choice]
        out[key] = pb.InferParameter(**{choice: draw(value)})
    return out


@st.composite
def infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    model = draw(st.one_of(st.sampled_from(list(MODELS)), st.text(max_size=8)))
    request = pb.ModelInferRequest(model_name=model, model_version=draw(st.sampled_from(["", "", "1", "2", "x", "-1"])),
                                   id=draw(st.text(max_size=8)))
    for key, value in draw(parameters()).items():
        request.parameters[key].CopyFrom(value)
    use_raw = draw(st.booleans())
    expected = MODELS.get(model, ["x"])
    input_names = draw(st.one_of(st.just(expected), st.lists(names, max_size=4)))
    for name in input_names:
        tensor = request.inputs.add(name=name, datatype=draw(datatypes), shape=draw(shapes))
        if draw(st.booleans()):
            for key, value in draw(parameters()).items():
                tensor.parameters[key].CopyFrom(value)
        if use_raw:
            raw = _bytes_elements(draw) if tensor.datatype == "BYTES" and draw(st.booleans()) else draw(
                st.binary(max_size=96))
            request.raw_input_contents.append(raw)
        elif draw(st.integers(0, 4)):
            field = draw(st.sampled_from(TYPED_FIELDS))
            values = {"bool_contents": st.booleans(), "bytes_contents": st.binary(max_size=8),
                      "fp32_contents": st.floats(width=32), "fp64_contents": st.floats(),
                      "int_contents": st.integers(-(1 << 31), (1 << 31) - 1),
                      "int64_contents": st.integers(-(1 << 63), (1 << 63) - 1),
                      "uint_contents": st.integers(0, (1 << 32) - 1),
                      "uint64_contents": st.integers(0, (1 << 64) - 1)}[field]
            getattr(tensor.contents, field).extend(draw(st.lists(values, max_size=16)))
    if use_raw and draw(st.integers(0, 9)) == 0:  # raw and input counts disagree
        request.raw_input_contents.append(b"\x00" * draw(st.integers(0, 8)))
    for name in draw(st.lists(st.one_of(st.sampled_from(["y", "sum", "out_FP32", "out_BYTES"]), st.text(max_size=4)),
                              max_size=2)):
        request.outputs.add(name=name)
    return request
