"""Test models, built by the tests themselves with fixed seeds (nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from lmaas.protos.tensors import DTYPES
from onnx import TensorProto, helper

ALL_DATATYPES = tuple(DTYPES)  # every OIP datatype
_ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BF16": TensorProto.BFLOAT16,
    "BYTES": TensorProto.STRING,
}


def _torch_mlp(seed: int = 0, scale: float = 1.0):  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[2].weight.mul_(scale)
    return model


def write_mlp_onnx(path: Path, seed: int = 0, scale: float = 1.0) -> None:
    """FP32 input 'x' [-1, 4] → output 'y' [-1, 3]."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    model = _torch_mlp(seed, scale)
    torch.onnx.export(
        model,
        (torch.zeros(1, 4),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        dynamo=False,
    )


def mlp_reference(x: np.ndarray, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    import torch

    with torch.no_grad():
        return _torch_mlp(seed, scale)(torch.from_numpy(x)).numpy()


MLP_CONFIG = {
    "max_batch_size": 16,
    "inputs": [{"name": "x", "datatype": "FP32", "dims": [4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "dims": [3]}],
}


def write_mlp_torchscript(model_dir: Path, version: int = 1, seed: int = 0) -> None:
    import torch

    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    torch.jit.trace(_torch_mlp(seed), torch.zeros(1, 4)).save(str(model_dir / str(version) / "model.pt"))
    (model_dir / "config.json").write_text(json.dumps(MLP_CONFIG))


def write_mlp_export(model_dir: Path, version: int = 1, seed: int = 0) -> None:
    import torch

    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(_torch_mlp(seed), (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(model_dir / str(version) / "model.pt2"))
    (model_dir / "config.json").write_text(json.dumps(MLP_CONFIG))


def write_identity_onnx(path: Path, datatypes: tuple[str, ...] = ALL_DATATYPES) -> None:
    """One input 'in_<DT>' [-1, 3] per datatype, echoed to 'out_<DT>' (BYTES echoes strings)."""
    nodes, inputs, outputs = [], [], []
    for dt in datatypes:
        t = _ONNX_TYPES[dt]
        inputs.append(helper.make_tensor_value_info(f"in_{dt}", t, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{dt}", t, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"in_{dt}"], [f"out_{dt}"]))
    graph = helper.make_graph(nodes, "identity", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write_fixed_onnx(path: Path) -> None:
    """Non-batching model: FP32 'a' [2, 2] + 'b' [2, 2] → 'sum' [2, 2]."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 2])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 2])
    s = helper.make_tensor_value_info("sum", TensorProto.FLOAT, [2, 2])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["sum"])], "fixed", [a, b], [s])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def build_repository(root: Path) -> Path:
    """The standard test repository used by the data-plane tests."""
    write_mlp_onnx(root / "mlp" / "1" / "model.onnx", seed=0)
    write_mlp_onnx(root / "mlp" / "2" / "model.onnx", seed=1)
    write_mlp_torchscript(root / "mlp_ts", seed=0)
    write_mlp_export(root / "mlp_export", seed=0)
    write_identity_onnx(root / "identity" / "1" / "model.onnx", tuple(d for d in ALL_DATATYPES if d != "BF16"))
    write_identity_onnx(root / "identity_bf16" / "1" / "model.onnx", ("BF16",))
    # Every datatype that has a typed contents field (FP16 and BF16 travel raw only).
    write_identity_onnx(
        root / "identity_typed" / "1" / "model.onnx", tuple(d for d in ALL_DATATYPES if d not in ("FP16", "BF16"))
    )
    write_fixed_onnx(root / "fixed" / "1" / "model.onnx")
    write_torch_identity(root / "identity_ts", "torchscript")
    write_torch_identity(root / "identity_export", "export")
    return root


TORCH_DATATYPES = ("BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BF16")


def write_torch_identity(model_dir: Path, kind: str = "torchscript") -> None:
    """TorchScript (model.pt) or torch.export (model.pt2) echo of one input per datatype torch has."""
    import torch

    class Echo(torch.nn.Module):
        def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(x.clone() for x in xs)

    dtypes = {"BOOL": torch.bool, "UINT8": torch.uint8, "INT8": torch.int8, "INT16": torch.int16,
              "INT32": torch.int32, "INT64": torch.int64, "FP16": torch.float16, "FP32": torch.float32,
              "FP64": torch.float64, "BF16": torch.bfloat16}
    examples = tuple(torch.zeros(2, 3, dtype=dtypes[d]) for d in TORCH_DATATYPES)
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    if kind == "torchscript":
        torch.jit.trace(Echo(), examples).save(str(model_dir / "1" / "model.pt"))
    else:
        batch = torch.export.Dim("batch", min=1, max=64)
        program = torch.export.export(Echo(), examples, dynamic_shapes=(tuple({0: batch} for _ in examples),))
        torch.export.save(program, str(model_dir / "1" / "model.pt2"))
    config = {
        "max_batch_size": 8,
        "inputs": [{"name": f"in_{d}", "datatype": d, "dims": [3]} for d in TORCH_DATATYPES],
        "outputs": [{"name": f"out_{d}", "datatype": d, "dims": [3]} for d in TORCH_DATATYPES],
    }
    (model_dir / "config.json").write_text(json.dumps(config))
