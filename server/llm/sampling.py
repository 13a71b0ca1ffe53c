"""Choosing the next token from one sequence's logits: penalties, temperature, top-k, top-p, a seeded generator."""

from __future__ import annotations

import random

import torch
from lmaas.protos.errors import InvalidArgument
from lmaas.server.llm.types import SamplingParams

__all__ = ["Sampler", "validate"]


def validate(params: SamplingParams, max_new_tokens: int) -> None:
    """Reject what no model could honour, naming the field (InvalidArgument)."""
    if not isinstance(params.max_tokens, int) or params.max_tokens <= 0:
        raise InvalidArgument(f"max_tokens must be a positive integer (got {params.max_tokens!r})")
    if params.max_tokens > max_new_tokens:
        raise InvalidArgument(f"max_tokens {params.max_tokens} is over this model's limit of {max_new_tokens}")
    if not 0.0 <= params.temperature <= 100.0:
        raise InvalidArgument(f"temperature must be in [0, 100] (got {params.temperature})")
    if not 0.0 < params.top_p <= 1.0:
        raise InvalidArgument(f"top_p must be in (0, 1] (got {params.top_p})")
    if params.top_k < 0:
        raise InvalidArgument(f"top_k must be >= 0 (got {params.top_k})")
    if params.repetition_penalty <= 0.0:
        raise InvalidArgument(f"repetition_penalty must be > 0 (got {params.repetition_penalty})")
    for name in ("frequency_penalty", "presence_penalty"):
        if not -2.0 <= getattr(params, name) <= 2.0:
            raise InvalidArgument(f"{name} must be in [-2, 2] (got {getattr(params, name)})")
    if len(params.stop) > 16 or any(not isinstance(s, str) or len(s) > 256 for s in params.stop):
        raise InvalidArgument("stop: at most 16 strings of at most 256 characters")


class Sampler:
    """One request's sampling state (its token counts and its own generator, so a seed reproduces the text)."""

    def __init__(self, params: SamplingParams, prompt: list[int]) -> None:
        self.p = params
        self.greedy = params.temperature == 0.0
        self.generator = torch.Generator()
        self.generator.manual_seed(params.seed if params.seed is not None else random.getrandbits(63))
        self._seen = set(prompt)  # repetition penalty: prompt + output tokens
        self._counts: dict[int, int] = {}  # frequency/presence: output only (OpenAI's definition)

    def observe(self, token: int) -> None:
        self._counts[token] = self._counts.get(token, 0) + 1

    def __call__(self, logits: torch.Tensor) -> int:
        p = self.p
        if p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            logits = logits.clone()
        if p.repetition_penalty != 1.0:
            ids = torch.tensor(sorted(self._seen | self._counts.keys()), dtype=torch.long)
            picked = logits[ids]
            logits[ids] = torch.where(picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty)
        if self._counts and (p.frequency_penalty or p.presence_penalty):
            ids = torch.tensor(list(self._counts), dtype=torch.long)
            counts = torch.tensor(list(self._counts.values()), dtype=logits.dtype)
            logits[ids] -= counts * p.frequency_penalty + p.presence_penalty
        if self.greedy:
            return int(torch.argmax(logits))
        logits = logits / p.temperature
        if p.top_k and p.top_k < logits.shape[0]:
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = (sorted_probs.cumsum(0) - sorted_probs) < p.top_p  # always keeps the most likely token
            sorted_probs = sorted_probs * keep
            return int(order[torch.multinomial(sorted_probs, 1, generator=self.generator)])
        return int(torch.multinomial(probs, 1, generator=self.generator))
