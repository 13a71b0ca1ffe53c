"""Text in and out: the tokenizer, the chat template, incremental detokenisation and stop strings.

Incremental detokenisation decodes a short window of recent tokens twice (with and without the new one) and
emits the difference, holding back while the window ends in U+FFFD: a byte-level BPE token may carry half of a
multi-byte character, and the replacement character only means "not complete yet". Stop strings are matched on
the text *before* it is emitted; the longest stop string minus one character is held back, so a stop string
split across tokens is never partly sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
from lmaas.server.llm.types import ChatMessage
from tokenizers import Tokenizer

__all__ = ["Detokenizer", "StopMatcher", "TextCodec"]

_REPLACEMENT = "\ufffd"


class TextCodec:
    """A version's tokenizer (``tokenizer.json``) and chat template (``tokenizer_config.json``)."""

    def __init__(self, directory: Path, eos_ids: Sequence[int] = ()) -> None:
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"tokenizer.json is missing in {directory}")
        self.tokenizer = Tokenizer.from_file(str(path))
        cfg_path = directory / "tokenizer_config.json"
        cfg: dict[str, Any] = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        template = cfg.get("chat_template")
        jinja_file = directory / "chat_template.jinja"
        if not template and jinja_file.is_file():
            template = jinja_file.read_text()
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(template) if isinstance(template, str) and template else None
        self._special = {k: _token_text(cfg.get(k)) for k in ("bos_token", "eos_token")}
        eos = set(eos_ids)
        eos_text = self._special["eos_token"]
        if eos_text and (tid := self.tokenizer.token_to_id(eos_text)) is not None:
            eos.add(tid)
        self.eos_ids = frozenset(eos)

    def encode(self, text: str) -> list[int]:
        # The prompt is already formatted (chat template or raw): add no special tokens of our own.
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def chat_prompt(self, messages: Sequence[ChatMessage]) -> str:
        if self._template is None:
            # No template: a plain transcript, still ending on the assistant's turn.
            return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"
        return str(
            self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=True,
                **self._special,
            )
        )


def _token_text(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value) if value else ""


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


class Detokenizer:
    """Turns a growing list of token ids into text deltas that are always whole UTF-8 characters."""

    def __init__(self, codec: TextCodec) -> None:
        self._decode = codec.decode
        self.ids: list[int] = []
        self._prefix = 0  # window start: tokens before it are context only
        self._read = 0  # tokens whose text has been emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if after.endswith(_REPLACEMENT) or len(after) <= len(before):
            return ""  # an incomplete character (or a token with no text yet): wait for more
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before) :]


class StopMatcher:
    """Holds back text that could begin a stop string; reports the text to emit and whether a stop was hit."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buf = self._pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._pending = ""
            return buf[: min(hits)], True
        cut = max(len(buf) - self._hold, 0)
        self._pending = buf[cut:]
        return buf[:cut], False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out
