"""Models for the Triton-compatibility tests: valid models that reject the zeros a naive warm-up feeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def onnx_bytes(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def parse_graph() -> onnx.GraphProto:
    """BYTES 'text' [-1, 1] parsed as numbers → FP32 'value' = 2 * number (Cast of "" fails)."""
    text = helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 1])
    value = helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch", 1])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [
        helper.make_node("Cast", ["text"], ["number"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["number", "two"], ["value"]),
    ]
    return helper.make_graph(nodes, "parse", [text], [value], initializer=[two])


def div_graph() -> onnx.GraphProto:
    """INT64 'a' / INT64 'd' → 'q' (integer division by zero fails)."""
    a = helper.make_tensor_value_info("a", TensorProto.INT64, ["batch", 1])
    d = helper.make_tensor_value_info("d", TensorProto.INT64, ["batch", 1])
    q = helper.make_tensor_value_info("q", TensorProto.INT64, ["batch", 1])
    return helper.make_graph([helper.make_node("Div", ["a", "d"], ["q"])], "div", [a, d], [q])


def add_graph(dims: int = 4) -> onnx.GraphProto:
    """FP32 'x' [-1, dims] + 1 → 'y'."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dims])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dims])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    return helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "add", [x], [y], initializer=[one])


def write_model(root: Path, name: str, graph: onnx.GraphProto, config: dict[str, Any] | None = None) -> None:
    _save(graph, root / name / "1" / "model.onnx")
    if config is not None:
        (root / name / "config.json").write_text(json.dumps(config))
