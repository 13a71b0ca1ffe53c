"""The three benchmark models, built with fixed seeds and exported to ONNX with a dynamic batch dimension.

* ``mlp``  — the classic Dense 100→128 (relu) →64 (relu) →1 (sigmoid); input ``input`` FP32 [-1, 100].
* ``cnn``  — a small conv net (≈1.0 M parameters); input ``input`` FP32 [-1, 3, 64, 64] → 10 logits.
* ``transformer`` — a 2-layer encoder (vocab 1000, d_model 128, 4 heads, ffn 512) over ``input_ids``
  INT64 [-1, 128] → mean-pooled 2-class logits.

The model repository the LMaaS worker reads is ``REPO/<model>/1/model.onnx``; no config is needed (ONNX
signatures come from the file and dynamic batching is on by default when the first dimension is dynamic).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MODELS", "ModelSpec", "build_repository", "example_batch", "write_matmul_onnx"]

SEED = 20240601
_BUILD_VERSION = 2  # bump when an architecture changes: rebuilds cached repositories


@dataclass(frozen=True)
class ModelSpec:
    """What the harness needs to know about one benchmark model."""

    name: str
    input_name: str
    datatype: str  # OIP datatype of the input
    shape: tuple[int, ...]  # without the batch dimension
    output_name: str
    output_shape: tuple[int, ...]


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec("mlp", "input", "FP32", (100,), "output", (1,)),
    "cnn": ModelSpec("cnn", "input", "FP32", (3, 64, 64), "output", (10,)),
    "transformer": ModelSpec("transformer", "input_ids", "INT64", (128,), "output", (2,)),
}

VOCAB = 1000


def example_batch(spec: ModelSpec, batch: int, seed: int = 0) -> np.ndarray:
    """A deterministic input batch for ``spec``."""
    rng = np.random.default_rng(seed)
    if spec.datatype == "INT64":
        return rng.integers(0, VOCAB, size=(batch, *spec.shape), dtype=np.int64)
    return rng.standard_normal((batch, *spec.shape), dtype=np.float32)


def _torch_module(name: str) -> Any:
    import torch
    from torch import nn

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(100, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1), nn.Sigmoid()
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)  # type: ignore[no-any-return]

    class Cnn(nn.Module):
        # 3x64x64 → 32 → 64 (pool) → 128 (pool) → 256 (pool) → 256 → global average → 10; ≈0.27 GMAC/sample
        def __init__(self) -> None:
            super().__init__()

            def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
                layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
                return [*layers, nn.MaxPool2d(2)] if pool else layers

            self.features = nn.Sequential(
                nn.Conv2d(3, 32, 3, padding=1),
                nn.ReLU(),
                *block(32, 64, True),  # 32x32
                *block(64, 128, True),  # 16x16
                *block(128, 256, True),  # 8x8
                *block(256, 256, False),
            )
            self.head = nn.Linear(256, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x).mean(dim=(2, 3)))  # type: ignore[no-any-return]

    class Block(nn.Module):
        # pre-norm encoder block written out (torch's fused fast path has no ONNX export)
        def __init__(self, d_model: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.norm1 = nn.LayerNorm(d_model)
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.proj = nn.Linear(d_model, d_model)
            self.norm2 = nn.LayerNorm(d_model)
            self.ffn = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, d = x.shape
            q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
            x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
            return x + self.ffn(self.norm2(x))  # type: ignore[no-any-return]

    class Encoder(nn.Module):
        def __init__(self, vocab: int = VOCAB, d_model: int = 128, heads: int = 4, layers: int = 2) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d_model)
            self.pos = nn.Parameter(torch.randn(1, 128, d_model) * 0.02)
            self.blocks = nn.Sequential(*(Block(d_model, heads) for _ in range(layers)))
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.norm(self.blocks(self.embed(ids) + self.pos))
            return self.head(h.mean(dim=1))  # type: ignore[no-any-return]

    torch.manual_seed(SEED)
    module = {"mlp": Mlp, "cnn": Cnn, "transformer": Encoder}[name]()
    if name == "cnn":  # non-trivial batch-norm statistics so the folded graph is not an identity
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return module.eval()


def _export(name: str, path: Path) -> None:
    import torch

    spec = MODELS[name]
    module = _torch_module(name)
    example = torch.from_numpy(example_batch(spec, 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=[spec.input_name],
            output_names=[spec.output_name],
            dynamic_axes={spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}},
            opset_version=17,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and gives a plain, stable graph
        )
    tmp.replace(path)


def _stamp(name: str) -> str:
    import torch

    return json.dumps({"model": name, "build": _BUILD_VERSION, "seed": SEED, "torch": torch.__version__})


def build_repository(repo: Path, names: list[str], *, force: bool = False) -> dict[str, dict[str, Any]]:
    """Write ``repo/<name>/1/model.onnx`` for each name (cached by a stamp); returns facts per model."""
    import onnx

    facts: dict[str, dict[str, Any]] = {}
    for name in names:
        path = repo / name / "1" / "model.onnx"
        stamp_path = repo / name / ".build.json"
        if force or not path.is_file() or not stamp_path.is_file() or stamp_path.read_text() != _stamp(name):
            _export(name, path)
            stamp_path.write_text(_stamp(name))
        proto = onnx.load(str(path))
        params = int(sum(np.prod(t.dims) for t in proto.graph.initializer))
        facts[name] = {
            "path": str(path),
            "parameters": params,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "input": {
                "name": MODELS[name].input_name,
                "datatype": MODELS[name].datatype,
                "shape": [-1, *MODELS[name].shape],
            },
        }
    return facts


def write_matmul_onnx(path: Path, *, n: int, layers: int = 1, seed: int = 0) -> Path:
    """ONNX ``y = x @ W1 @ ... @ Wk``, x FP32 [-1, n]: ``layers * n * n * 4`` bytes of weights.

    Sizes for loads and downloads that take a measurable time (n=2048, 4 layers: 64 MiB, ~0.4 s to load here),
    or for executions that do (n=1024, a few layers: some ms per request on one thread).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    scale = np.float32(1.0 / math.sqrt(n))
    weights, nodes, previous = [], [], "x"
    for i in range(layers):
        weights.append(numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32) * scale, f"W{i}"))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [previous, f"W{i}"], [out]))
        previous = out
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])
    model = helper.make_model(
        helper.make_graph(nodes, "matmul", [x], [y], weights), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_perf_analyzer_data(spec: ModelSpec, path: Path, samples: int = 8) -> Path:
    """perf_analyzer ``--input-data`` JSON with ``samples`` real batch-1 inputs for ``spec``.

    perf_analyzer's default (random bytes) makes NaN/Inf floats and out-of-vocabulary token ids: the
    transformer rejects those, MLServer fails to encode a NaN output, and denormals distort timings.
    """
    batch = example_batch(spec, samples, seed=1234)
    rows = [
        {spec.input_name: {"content": batch[i].reshape(-1).tolist(), "shape": list(spec.shape)}} for i in range(samples)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": rows}))
    return path
