"""Triton's ``config.pbtxt`` (protobuf text format of ``ModelConfig``) read into our :class:`ModelConfig`.

A Triton user's model directory works as it is: ``REPO/<model>/config.pbtxt`` beside the version directories.
The text format is parsed here without the message schema (our vendored ``model_config.proto`` carries only
what the ModelConfig RPC reports), then the fields we serve are mapped: ``platform``/``backend``,
``max_batch_size``, ``input``/``output``, ``dynamic_batching``, ``sequence_batching``, ``instance_group``
(counts add up), ``parameters``, ``model_warmup``, ``model_transaction_policy``. Fields that only tune Triton
itself (``optimization``, ``version_policy``, ...) are ignored with a warning; anything else is refused with
INVALID_ARGUMENT naming the field, so a config never loads with a part of it silently dropped.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from lmaas.protos.errors import InvalidArgument

__all__ = ["parse_pbtxt", "triton_to_config"]

log = logging.getLogger("lmaas.worker")

Message = dict[str, list[Any]]  # every field as the list of its occurrences: the parser knows no schema

_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<punct>[{}\[\]:,;<>])|(?P<word>[^\s{}\[\]:,;<>"'#]+)"""
)
_IGNORED = frozenset(
    {
        "name",
        "version_policy",
        "optimization",
        "default_model_filename",
        "cc_model_filenames",
        "metric_tags",
        "model_operations",
        "response_cache",
        "runtime",
        "model_repository_agents",
    }
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise InvalidArgument(f"config.pbtxt: unexpected character {text[pos]!r} at offset {pos}")
        pos = m.end()
        for kind in ("str", "punct", "word"):
            if m.group(kind) is not None:
                out.append((kind, m.group(kind)))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks, self.i = _tokens(text), 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise InvalidArgument("config.pbtxt: unexpected end of text")
        self.i += 1
        return tok

    def message(self, close: str | None) -> Message:
        fields: Message = {}
        while True:
            tok = self.peek()
            if tok is None:
                if close is not None:
                    raise InvalidArgument(f"config.pbtxt: missing '{close}'")
                return fields
            if tok == ("punct", close or ""):
                self.i += 1
                return fields
            if tok[1] in (",", ";"):
                self.i += 1
                continue
            kind, name = self.take()
            if kind != "word":
                raise InvalidArgument(f"config.pbtxt: expected a field name, got {name!r}")
            colon = self.peek() == ("punct", ":")
            if colon:
                self.i += 1
            fields.setdefault(name, []).extend(self.values(name, colon))

    def values(self, name: str, colon: bool) -> list[Any]:
        tok = self.peek()
        if tok == ("punct", "["):
            self.i += 1
            items: list[Any] = []
            while self.peek() != ("punct", "]"):
                if self.peek() == ("punct", ","):
                    self.i += 1
                    continue
                items.append(self.value(name))
            self.i += 1
            return items
        if not colon and tok not in (("punct", "{"), ("punct", "<")):
            raise InvalidArgument(f"config.pbtxt: field '{name}' needs ':' before its value")
        return [self.value(name)]

    def value(self, name: str) -> Any:
        kind, text = self.take()
        if (kind, text) == ("punct", "{"):
            return self.message("}")
        if (kind, text) == ("punct", "<"):
            return self.message(">")
        if kind == "str":
            return bytes(text[1:-1], "utf-8").decode("unicode_escape")
        if kind != "word":
            raise InvalidArgument(f"config.pbtxt: field '{name}' has no value")
        if text in ("true", "True"):
            return True
        if text in ("false", "False"):
            return False
        for convert in (int, float):
            try:
                return convert(text)
            except ValueError:
                pass
        return text  # an enum name


def parse_pbtxt(text: str) -> Message:
    """Protobuf text format → nested dicts of field → list of values (schema-free)."""
    return _Parser(text).message(None)


def _one(msg: Message, key: str, default: Any = None) -> Any:
    values = msg.get(key)
    if not values:
        return default
    if len(values) > 1:
        raise InvalidArgument(f"config.pbtxt: field '{key}' is given {len(values)} times")
    return values[0]


def _datatype(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("TYPE_"):
        raise InvalidArgument(f"config.pbtxt: {where}: data_type {value!r} is not a TYPE_* name")
    plain = value.removeprefix("TYPE_")
    return "BYTES" if plain == "STRING" else plain


def _tensor(msg: Message, where: str) -> dict[str, Any]:
    unknown = set(msg) - {"name", "data_type", "dims", "optional", "is_shape_tensor", "allow_ragged_batch"}
    if unknown or "reshape" in msg:
        raise InvalidArgument(f"config.pbtxt: {where}: {sorted(unknown)} not supported")
    name = _one(msg, "name")
    return {
        "name": name,
        "datatype": _datatype(_one(msg, "data_type"), f"{where} '{name}'"),
        "dims": msg.get("dims", []),
    }


def _plain(msg: Message) -> dict[str, Any]:
    """A nested message whose field names are ours too: scalars unwrapped, repeated fields kept as lists."""
    repeated = {
        "control_input",
        "control",
        "state",
        "dims",
        "int32_false_true",
        "fp32_false_true",
        "bool_false_true",
        "preferred_batch_size",
    }
    out: dict[str, Any] = {}
    for key, values in msg.items():
        items = [_plain(v) if isinstance(v, dict) else v for v in values]
        out[key] = items if key in repeated else _one({key: items}, key)
    return out


def _map(entries: list[Message]) -> dict[str, Any]:
    """A proto map in text format: repeated ``{key: .. value: ..}`` entries."""
    return {_one(e, "key"): _one(e, "value") for e in entries}


def triton_to_config(msg: Message) -> dict[str, Any]:
    """The ``ModelConfig`` fields (our names) for a parsed Triton config; validated by the caller."""
    out: dict[str, Any] = {}
    ignored = sorted(set(msg) & _IGNORED - {"name"})
    if ignored:
        log.warning("config.pbtxt: ignored (Triton-only tuning): %s", ignored)
    platform = str(_one(msg, "backend") or _one(msg, "platform") or "")
    if platform:
        if platform.startswith("onnxruntime"):
            out["backend"] = "onnxruntime"
        elif platform.startswith("pytorch"):
            out["backend"] = "pytorch"
        else:
            raise InvalidArgument(f"config.pbtxt: backend/platform '{platform}' is not served (onnxruntime, pytorch)")
    handled = {"backend", "platform"} | _IGNORED
    if "max_batch_size" in msg:
        out["max_batch_size"] = _one(msg, "max_batch_size")
    out["inputs"] = [_tensor(t, "input") for t in msg.get("input", [])]
    out["outputs"] = [_tensor(t, "output") for t in msg.get("output", [])]
    if (db := _one(msg, "dynamic_batching")) is not None:
        policy = _one(db, "default_queue_policy", {})
        out["dynamic_batching"] = {
            "max_queue_delay_microseconds": _one(db, "max_queue_delay_microseconds", 0),
            "preferred_batch_sizes": db.get("preferred_batch_size", []),
            "max_queue_size": _one(policy, "max_queue_size", 0),
        }
    if (sb := _one(msg, "sequence_batching")) is not None:
        out["sequence_batching"] = _plain(sb)
    if groups := msg.get("instance_group"):
        for g in groups:
            if _one(g, "kind", "KIND_CPU") not in ("KIND_CPU", "KIND_AUTO"):
                raise InvalidArgument(f"config.pbtxt: instance_group kind {_one(g, 'kind')} is not served (CPU only)")
        out["instance_count"] = sum(int(_one(g, "count", 1)) for g in groups)
    if entries := msg.get("parameters"):
        out["parameters"] = {k: _one(v, "string_value", "") for k, v in _map(entries).items()}
    warmups = []
    for w in msg.get("model_warmup", []):
        inputs = {}
        for key, spec in _map(w.get("inputs", [])).items():
            if "input_data_file" in spec:
                raise InvalidArgument(f"config.pbtxt: warm-up input '{key}': input_data_file is not supported")
            inputs[key] = {
                "dims": spec.get("dims", []),
                "zero_data": bool(_one(spec, "zero_data", False)),
                "random_data": bool(_one(spec, "random_data", False)),
            }
        warmups.append(
            {
                "name": _one(w, "name", ""),
                "batch_size": _one(w, "batch_size", 1),
                "count": _one(w, "count", 1) or 1,
                "inputs": inputs,
            }
        )
    if warmups:
        out["model_warmup"] = warmups
    if (policy := _one(msg, "model_transaction_policy")) is not None:
        out["model_transaction_policy"] = {"decoupled": bool(_one(policy, "decoupled", False))}
    handled |= {
        "max_batch_size",
        "input",
        "output",
        "dynamic_batching",
        "sequence_batching",
        "instance_group",
        "parameters",
        "model_warmup",
        "model_transaction_policy",
    }
    unknown = sorted(set(msg) - handled)
    if unknown:
        raise InvalidArgument(f"config.pbtxt: field(s) {unknown} are not supported by this server")
    return out
