"""The typed model configuration: ``REPO/<model>/config.{json,yaml}``.

Everything is optional for ONNX models: signatures come from the file and the
batching defaults from whether the first dimension is dynamic. A TorchScript or
torch.export model needs ``inputs`` and ``outputs``.

Example (YAML)::

    backend: onnxruntime          # or pytorch; default from the file name
    max_batch_size: 32            # 0 = the model does not batch: dims are full shapes
    inputs:  [{name: x, datatype: FP32, dims: [100]}]      # dims without the batch dim
    outputs: [{name: y, datatype: FP32, dims: [1]}]
    dynamic_batching:
      max_queue_delay_microseconds: 0
      preferred_batch_sizes: [8, 16]
      max_queue_size: 1024        # beyond it: RESOURCE_EXHAUSTED at once (0 = unbounded)
    instance_count: 1             # concurrent executions
    parameters: {intra_op_threads: 1, inter_op_threads: 1}
    model_warmup:                 # Triton's: run at load; a failure fails the load
      - {name: w, batch_size: 4, count: 2, inputs: {x: {random_data: true}}}   # or zero_data, or data: [...]

Without ``model_warmup`` the worker runs one synthetic request on zeros (empty
strings) to pay lazy initialisation; if the model rejects it the load goes on
with a warning, because zeros are not valid input for every valid model.

Stateful models take ``sequence_batching`` instead of ``dynamic_batching``
(Triton's field names: :mod:`lmaas.server.sequences.config`). A Triton model
directory with ``config.pbtxt`` (and no config.json/yaml) is read as it is
(:mod:`lmaas.server.triton_config`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from lmaas.protos.errors import InvalidArgument
from lmaas.server.sequences.config import SequenceBatching
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "BatchingConfig",
    "ModelConfig",
    "TensorSpec",
    "TransactionPolicy",
    "WarmupInput",
    "WarmupSpec",
    "dump_config",
    "load_config",
    "parse_config",
]

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One input or output tensor."""

    name: str
    datatype: Datatype
    dims: tuple[int, ...] = Field(description="shape without the batch dimension when max_batch_size > 0; -1 = any")


class BatchingConfig(_Strict):
    """Dynamic batching; on by default for models whose first dimension is dynamic."""

    max_queue_delay_microseconds: int = Field(0, ge=0)
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = Field(0, ge=0, description="0 = unbounded")


class WarmupInput(_Strict):
    """Data of one input of a warm-up request: zeros (the default), random values or the given values."""

    dims: tuple[int, ...] | None = Field(None, description="without the batch dim; default: the model's, -1 → 1")
    zero_data: bool = False
    random_data: bool = False
    data: tuple[Any, ...] | None = Field(None, description="values, flattened in row-major order")

    @model_validator(mode="after")
    def _one_source(self) -> WarmupInput:
        if sum((self.zero_data, self.random_data, self.data is not None)) > 1:
            raise ValueError("give at most one of zero_data, random_data and data")
        return self


class WarmupSpec(_Strict):
    """One configured warm-up request (Triton's ``model_warmup`` entry)."""

    name: str = ""
    batch_size: int = Field(1, ge=0, le=1024, description="ignored for a model that does not batch")
    count: int = Field(1, ge=1, le=1000)
    inputs: dict[str, WarmupInput] = Field(default_factory=dict, description="inputs left out get zeros")


class TransactionPolicy(_Strict):
    """Triton's ``model_transaction_policy``: a decoupled model answers 0..N responses per request."""

    decoupled: bool = Field(
        False,
        description="outputs carry a leading response dimension N: response i gets row i of every output; "
        "served over ModelStreamInfer only; implies max_batch_size 0",
    )


class ModelConfig(_Strict):
    """What the worker needs to know about a model besides its file."""

    backend: Literal["onnxruntime", "pytorch", "llm"] | None = None  # llm: a generative version directory
    max_batch_size: int | None = Field(None, ge=0, description="None = derive from the model (ONNX)")
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    dynamic_batching: BatchingConfig | None = None
    instance_count: int = Field(1, ge=1, le=64)
    parameters: dict[str, Any] = Field(default_factory=dict)
    model_warmup: tuple[WarmupSpec, ...] = ()
    model_transaction_policy: TransactionPolicy | None = None
    sequence_batching: SequenceBatching | None = None  # stateful models: see lmaas.server.sequences.config

    @model_validator(mode="after")
    def _one_scheduler(self) -> ModelConfig:
        if self.sequence_batching is not None and self.dynamic_batching is not None:
            raise ValueError("give dynamic_batching or sequence_batching, not both (Triton's scheduling_choice)")
        return self


def parse_config(data: str | bytes, *, source: str = "config") -> ModelConfig:
    """Parse JSON or YAML text (JSON is YAML) into a config; bad input → InvalidArgument."""
    try:
        raw = yaml.safe_load(data) if data else {}
        return ModelConfig.model_validate(raw or {})
    except (yaml.YAMLError, ValidationError) as exc:
        raise InvalidArgument(f"invalid model config {source}: {exc}") from exc


def load_config(model_dir: Path) -> ModelConfig:
    """``config.json`` / ``config.yaml`` / ``config.yml`` of a model directory, else Triton's ``config.pbtxt``,
    else defaults."""
    for name in ("config.json", "config.yaml", "config.yml"):
        path = model_dir / name
        if path.is_file():
            return parse_config(path.read_bytes(), source=str(path))
    pbtxt = model_dir / "config.pbtxt"  # a Triton model directory as it is
    if pbtxt.is_file():
        from lmaas.server.triton_config import parse_pbtxt, triton_to_config

        try:
            fields = triton_to_config(parse_pbtxt(pbtxt.read_text()))
            return ModelConfig.model_validate(fields)
        except (UnicodeDecodeError, ValidationError) as exc:
            raise InvalidArgument(f"invalid model config {pbtxt}: {exc}") from exc
    return ModelConfig()


def dump_config(config: ModelConfig) -> str:
    return json.dumps(config.model_dump(mode="json", exclude_defaults=True))
