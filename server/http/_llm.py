"""What the HTTP LLM routes share (OpenAI ``/v1`` and OIP ``generate``): typed field reads, sampling parameters
from a JSON object, the model lookup and the version identity a client sees.

Here JSON types are checked (a wrong type is a :class:`FieldError`: an ``InvalidArgument`` that also names the
field, OpenAI's ``param``). Ranges and the model's limits (``max_tokens`` against its cap, the prompt against its
context) are checked once, by the engine, before its first chunk, with messages that name the limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, TypeVar

from lmaas.protos.errors import Cancelled, FailedPrecondition, InvalidArgument, LMaaSError, ModelNotFound, Unavailable
from lmaas.server.dataplane import DataPlane
from lmaas.server.http.asgi import Request
from lmaas.server.llm.types import LLMModel, SamplingParams

__all__ = [
    "SAMPLING_FIELDS",
    "FieldError",
    "close_stream",
    "fingerprint",
    "list_llms",
    "lookup",
    "opt_bool",
    "opt_int",
    "opt_number",
    "opt_str",
    "param_of",
    "sampling_params",
    "unless_disconnected",
]

T = TypeVar("T")

_HEX = re.compile(r"[0-9a-f]{12,}")
_LEADING_FIELD = re.compile(r"'?([a-z_]+)'?[ :]")
_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}

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


def opt_number(body: Mapping[str, Any], key: str, *, where: str = "") -> float | None:
    value = body.get(key)
    if value is None:
        return None
    name = f"{where}{key}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(name, f"'{name}' must be a number, got {_kind(value)}")
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
    if any(not s for s in items):
        raise FieldError(name, f"'{name}' strings must not be empty")
    return tuple(items)


def sampling_params(body: Mapping[str, Any], max_tokens: int | None, *, default_max_tokens: int,
                    where: str = "") -> SamplingParams:
    """Sampling parameters from OpenAI / vLLM field names, type-checked; ``max_tokens`` is read by the caller
    (its names differ by route). Ranges and the model's limits are checked once, by the engine."""
    temperature = opt_number(body, "temperature", where=where)
    top_p = opt_number(body, "top_p", where=where)
    top_k = opt_int(body, "top_k", where=where)
    repetition_penalty = opt_number(body, "repetition_penalty", where=where)
    return SamplingParams(
        max_tokens=default_max_tokens if max_tokens is None else max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        top_k=0 if top_k == -1 else (top_k or 0),  # vLLM spells "no cut" -1, we spell it 0
        seed=opt_int(body, "seed", where=where),
        stop=_stop(body, where),
        repetition_penalty=1.0 if repetition_penalty is None else repetition_penalty,
        frequency_penalty=opt_number(body, "frequency_penalty", where=where) or 0.0,
        presence_penalty=opt_number(body, "presence_penalty", where=where) or 0.0,
        ignore_eos=bool(opt_bool(body, "ignore_eos", where=where)),
    )


def param_of(exc: LMaaSError) -> str | None:
    """The request field an error is about: a :class:`FieldError`'s, or the field an engine message starts with."""
    if isinstance(exc, FieldError):
        return exc.param
    m = _LEADING_FIELD.match(exc.message)
    return m.group(1) if m and m.group(1) in (*SAMPLING_FIELDS, "max_tokens") else None


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


async def close_stream(chunks: AsyncIterator[Any]) -> None:
    """Close the engine's iterator: that cancels the sequence if it is still running (the contract's abort)."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` (waiting for or collecting a generation) while watching the connection. A client that leaves
    cancels ``work`` (whose iterator's close aborts the sequence at the next engine step) and raises Cancelled."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(request.disconnected())
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler itself was cancelled
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task.done():  # finished, even if the client left in the same tick: the answer stands
        return task.result()
    task.cancel()
    await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()  # retrieved: the client is gone, whatever the work failed with
    raise Cancelled("the client closed the connection")
