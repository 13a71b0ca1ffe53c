"""What the HTTP LLM routes share (OpenAI ``/v1`` and OIP ``generate``): typed field reads, sampling parameters
from a JSON object, the model lookup and the version identity a client sees.

Field errors are :class:`FieldError` (an ``InvalidArgument`` that also names the field, OpenAI's ``param``).
Range checks that depend on the model (``max_tokens`` against its limit, the prompt against its context) are
done here or by the engine, always with a message that names the limit.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from lmaas.protos.errors import FailedPrecondition, InvalidArgument, LMaaSError, ModelNotFound, Unavailable
from lmaas.server.dataplane import DataPlane
from lmaas.server.llm.types import LLMModel, SamplingParams

__all__ = [
    "SAMPLING_FIELDS",
    "FieldError",
    "fingerprint",
    "list_llms",
    "lookup",
    "opt_bool",
    "opt_int",
    "opt_number",
    "opt_str",
    "sampling_params",
]

_HEX = re.compile(r"[0-9a-f]{12,}")
_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
MAX_STOP_STRINGS = 16

#: JSON names read by :func:`sampling_params` (besides ``max_tokens``, whose default is per route).
SAMPLING_FIELDS = frozenset(
    {"temperature", "top_p", "top_k", "seed", "stop", "repetition_penalty", "frequency_penalty",
     "presence_penalty", "ignore_eos"}
)


class FieldError(InvalidArgument):
    """A request field with a wrong type or value; ``param`` names it (OpenAI's error ``param``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _kind(value: Any) -> str:
    return "null" if value is None else _TYPE_NAMES.get(type(value), type(value).__name__)


def opt_int(body: Mapping[str, Any], key: str, *, minimum: int | None = None, where: str = "") -> int | None:
    value = body.get(key)
    if value is None:
        return None
    name = f"{where}{key}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(name, f"'{name}' must be an integer, got {_kind(value)}")
    if minimum is not None and value < minimum:
        raise FieldError(name, f"'{name}' must be at least {minimum}, got {value}")
    return value


def opt_number(body: Mapping[str, Any], key: str, low: float, high: float, *, low_open: bool = False,
               where: str = "") -> float | None:
    value = body.get(key)
    if value is None:
        return None
    name = f"{where}{key}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(name, f"'{name}' must be a number, got {_kind(value)}")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise FieldError(name, f"'{name}' must be in {bracket}{low:g}, {high:g}], got {value:g}")
    return float(value)


def opt_bool(body: Mapping[str, Any], key: str, *, where: str = "") -> bool | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise FieldError(f"{where}{key}", f"'{where}{key}' must be a boolean, got {_kind(value)}")
    return value


def opt_str(body: Mapping[str, Any], key: str, *, where: str = "") -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FieldError(f"{where}{key}", f"'{where}{key}' must be a string, got {_kind(value)}")
    return value


def _stop(body: Mapping[str, Any], where: str) -> tuple[str, ...]:
    value = body.get("stop")
    name = f"{where}stop"
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise FieldError(name, f"'{name}' must be a string or an array of strings, got {_kind(value)}")
    if len(items) > MAX_STOP_STRINGS:
        raise FieldError(name, f"'{name}' has {len(items)} strings; at most {MAX_STOP_STRINGS} are allowed")
    if any(not s for s in items):
        raise FieldError(name, f"'{name}' strings must not be empty")
    return tuple(items)


def sampling_params(body: Mapping[str, Any], model: LLMModel, max_tokens: int | None, *,
                    default_max_tokens: int, where: str = "") -> SamplingParams:
    """Sampling parameters from OpenAI / vLLM field names; ``max_tokens`` is read by the caller (names differ)."""
    limit = model.max_new_tokens
    if max_tokens is None:
        max_tokens = min(default_max_tokens, limit)
    elif max_tokens > limit:
        raise FieldError(f"{where}max_tokens", f"'{where}max_tokens' is {max_tokens}; this model generates at most "
                                               f"{limit} tokens per request")
    temperature = opt_number(body, "temperature", 0.0, 2.0, where=where)
    top_p = opt_number(body, "top_p", 0.0, 1.0, low_open=True, where=where)
    top_k = opt_int(body, "top_k", minimum=-1, where=where)
    seed = opt_int(body, "seed", where=where)
    repetition_penalty = opt_number(body, "repetition_penalty", 0.0, 10.0, low_open=True, where=where)
    frequency_penalty = opt_number(body, "frequency_penalty", -2.0, 2.0, where=where)
    presence_penalty = opt_number(body, "presence_penalty", -2.0, 2.0, where=where)
    ignore_eos = opt_bool(body, "ignore_eos", where=where)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        top_k=max(0, top_k or 0),  # vLLM spells "no cut" -1, we spell it 0
        seed=seed,
        stop=_stop(body, where),
        repetition_penalty=1.0 if repetition_penalty is None else repetition_penalty,
        frequency_penalty=frequency_penalty or 0.0,
        presence_penalty=presence_penalty or 0.0,
        ignore_eos=bool(ignore_eos),
    )


def lookup(dp: DataPlane, name: str, version: str = "", key: str = "") -> LLMModel:
    """The LLM version that answers: named, or routed (sticky by conversation ``key`` during a canary)."""
    if dp.draining:
        raise Unavailable("worker is shutting down")
    return dp.llm(name, version, key=key)


def list_llms(dp: DataPlane) -> list[LLMModel]:
    """The routed version of every generative model this worker holds, by name."""
    found: dict[str, LLMModel] = {}
    for name in sorted({mv.name for mv in dp.manager.loaded()}):
        try:
            found[name] = dp.llm(name, "")
        except (FailedPrecondition, ModelNotFound, InvalidArgument):
            continue  # a tensor model, or gone meanwhile
        except LMaaSError:
            continue
    return list(found.values())


def fingerprint(model: LLMModel) -> str:
    """OpenAI's ``system_fingerprint``: which model, version and artifact digest answered."""
    digest = model.digest if _HEX.fullmatch(model.digest or "") else hashlib.sha256(model.digest.encode()).hexdigest()
    return f"lmaas-{model.name}-v{model.version}-{digest[:12]}"
