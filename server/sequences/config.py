"""``sequence_batching`` in a model config, with Triton's field names (``model_config.proto``).

Example (YAML)::

    max_batch_size: 4             # slots per instance (direct) / rows per execution (oldest)
    sequence_batching:
      max_sequence_idle_microseconds: 5000000   # an idle sequence loses its slot (Triton's default: 1 s)
      direct: {}                  # or oldest: {max_candidate_sequences: 8}
      control_input:
        - name: START
          control: [{kind: CONTROL_SEQUENCE_START, int32_false_true: [0, 1]}]
        - name: CORRID
          control: [{kind: CONTROL_SEQUENCE_CORRID, data_type: TYPE_UINT64}]
      state:                      # implicit state: fed back from output to input, zeros at START
        - {input_name: acc_in, output_name: acc_out, data_type: TYPE_FP32, dims: [1]}

Control inputs and state tensors are inputs of the model file that clients do not send: the worker fills them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ControlInput",
    "ControlKind",
    "ControlSpec",
    "DirectStrategy",
    "OldestStrategy",
    "SequenceBatching",
    "StateSpec",
]

ControlKind = Literal[
    "CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_READY", "CONTROL_SEQUENCE_END", "CONTROL_SEQUENCE_CORRID"
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ControlSpec(_Strict):
    """One control signal (Triton's ``Control``): the false/true values of START/READY/END, the type of CORRID."""

    kind: ControlKind
    int32_false_true: tuple[int, int] | None = None
    fp32_false_true: tuple[float, float] | None = None
    bool_false_true: tuple[bool, bool] | None = None
    data_type: str | None = Field(None, description="CORRID only: TYPE_UINT64, TYPE_INT64, TYPE_INT32 or TYPE_STRING")

    @model_validator(mode="after")
    def _values(self) -> ControlSpec:
        given = [v for v in (self.int32_false_true, self.fp32_false_true, self.bool_false_true) if v is not None]
        if self.kind == "CONTROL_SEQUENCE_CORRID":
            if given or self.data_type is None:
                raise ValueError("a CONTROL_SEQUENCE_CORRID control takes data_type and no false/true values")
        elif len(given) != 1 or self.data_type is not None:
            raise ValueError(f"a {self.kind} control takes exactly one of int32/fp32/bool_false_true")
        return self


class ControlInput(_Strict):
    """A model input the worker fills with a control signal."""

    name: str
    control: tuple[ControlSpec, ...] = Field(min_length=1, max_length=1)


class StateSpec(_Strict):
    """Implicit state: ``output_name`` of one execution is fed as ``input_name`` of the sequence's next one."""

    input_name: str
    output_name: str
    data_type: str | None = Field(None, description="TYPE_FP32 etc.; default: the model file's")
    dims: tuple[int, ...] | None = Field(None, description="without the batch dim; default: the model file's")


class DirectStrategy(_Strict):
    """Each sequence owns one slot (a batch row of one instance) from START to END or idle timeout."""

    max_queue_delay_microseconds: int = Field(0, ge=0)
    minimum_slot_utilization: float = Field(0.0, ge=0.0, le=1.0)


class OldestStrategy(_Strict):
    """Up to ``max_candidate_sequences`` sequences are live; each execution batches the oldest requests."""

    max_candidate_sequences: int = Field(1, ge=1, le=4096)
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = Field(0, ge=0)


class SequenceBatching(_Strict):
    """Triton's ``ModelSequenceBatching``; ``direct`` when neither strategy is given."""

    max_sequence_idle_microseconds: int = Field(1_000_000, ge=1)
    control_input: tuple[ControlInput, ...] = ()
    state: tuple[StateSpec, ...] = ()
    direct: DirectStrategy | None = None
    oldest: OldestStrategy | None = None

    @model_validator(mode="after")
    def _one_strategy(self) -> SequenceBatching:
        if self.direct is not None and self.oldest is not None:
            raise ValueError("give one strategy: direct or oldest")
        return self
