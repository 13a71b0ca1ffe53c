"""The contract between the LLM engine and everything that calls it (gRPC, HTTP, SDK, benchmarks).

Transports never touch tensors: they build :class:`SamplingParams`, call
:meth:`LLMModel.generate` and forward each :class:`GenerationChunk`. Leaving the
iterator early (``aclose()``, task cancellation, client gone) aborts the sequence
and frees its KV memory at the next engine step — cancellation is an input, not
an error path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

__all__ = ["ChatMessage", "FinishReason", "GenerationChunk", "LLMModel", "SamplingParams"]

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request generation settings (OpenAI / vLLM names). ``temperature=0`` is greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None  # same seed + same prompt + same params = same text
    stop: tuple[str, ...] = ()  # the text ends before the first stop string; it is not emitted
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    ignore_eos: bool = False  # keep generating past EOS (benchmarks)


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """New text since the previous chunk; ``finish_reason`` is set on the last chunk only."""

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # total so far
    error: str = ""  # set with finish_reason="error"
    extra: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class LLMModel(Protocol):
    """A loaded generative version (what the model manager hands to transports)."""

    name: str
    version: int
    digest: str  # the version's artifact digest (sha256 hex): part of OpenAI's system_fingerprint
    context_length: int
    max_new_tokens: int  # hard cap on max_tokens for one request

    def chat_prompt(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt text the version's chat template makes of a conversation (generation prompt appended)."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def generate(self, prompt: str, params: SamplingParams, request_id: str = "") -> AsyncIterator[GenerationChunk]:
        """Stream the completion of ``prompt``.

        Raises (before the first chunk) InvalidArgument for an empty prompt, a prompt over the context
        length or a bad parameter, ResourceExhausted when the waiting queue is full. Closing the iterator
        cancels the sequence.
        """
        ...
