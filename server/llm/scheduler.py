"""The scheduler that decides: who runs this step, with how many tokens. Pure Python, no tensors.

Admission is by KV budget: a sequence reserves ``prompt + max_tokens`` cache tokens when it joins the batch
(rounded up to whole cache blocks of ``block`` tokens, the unit the KV pool hands out), so a running sequence can
never run out of cache (no preemption needed) and ``reserved / budget`` is the KV usage.
Requests that do not fit wait FIFO in a bounded queue (beyond it: ResourceExhausted). Each step, every decoding
sequence gets one token first (running streams keep flowing), then prefilling sequences get prompt chunks from
what is left of the step's token budget: ``step_tokens``, which bounds the inter-token latency of running streams,
or ``burst_tokens`` for a step where none decodes (a burst of arrivals: nobody waits on that step, and prompts that
arrived together are prefilled in one forward). A chunk is always ``min(prefill_chunk, remaining)`` tokens, so
where a prompt is cut depends only on the prompt, never on what else runs: batching cannot change a result.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from lmaas.protos.errors import InvalidArgument, ResourceExhausted

__all__ = ["Entry", "Scheduler", "Work"]


@dataclass(slots=True)
class Entry:
    """One sequence as the scheduler sees it."""

    id: str
    prompt_len: int
    reserve: int  # KV tokens held while running: prompt + max new tokens
    computed: int = 0  # prompt tokens already prefilled

    @property
    def decoding(self) -> bool:
        return self.computed >= self.prompt_len


@dataclass(frozen=True, slots=True)
class Work:
    """This step's share of one sequence: ``start`` is the first prompt position (decode: ``start == prompt_len``)."""

    id: str
    start: int
    count: int
    decode: bool
    last_chunk: bool  # the chunk that ends the prompt (or a decode): its logits choose a token


class Scheduler:
    def __init__(
        self,
        kv_tokens: int,
        *,
        max_running: int = 32,
        max_waiting: int = 256,
        prefill_chunk: int = 64,
        step_tokens: int = 256,
        block: int = 1,
        burst_tokens: int = 0,  # 0: step_tokens
    ) -> None:
        if min(kv_tokens, max_running, prefill_chunk, step_tokens, block) <= 0 or max_waiting < 0:
            raise ValueError("scheduler limits must be positive")
        self.block = block
        self.burst_tokens = max(burst_tokens, step_tokens)
        self.kv_tokens, self.max_running, self.max_waiting = kv_tokens, max_running, max_waiting
        self.prefill_chunk, self.step_tokens = prefill_chunk, step_tokens
        self.waiting: deque[Entry] = deque()
        self.running: dict[str, Entry] = {}  # in admission order
        self.reserved = 0

    # ---- inputs ----

    def _cost(self, entry: Entry) -> int:
        return -(-entry.reserve // self.block) * self.block

    def add(self, entry: Entry) -> None:
        if self._cost(entry) > self.kv_tokens:
            raise InvalidArgument(
                f"the request needs {entry.reserve} KV-cache tokens (prompt {entry.prompt_len} + max_tokens); "
                f"this model's KV budget holds {self.kv_tokens}"
            )
        if len(self.waiting) >= self.max_waiting:
            raise ResourceExhausted(f"generation queue is full ({self.max_waiting} waiting)")
        self.waiting.append(entry)

    def finish(self, seq_id: str) -> bool:
        """The one way out, for every reason (done, stop string, cancelled): frees the reservation."""
        entry = self.running.pop(seq_id, None)
        if entry is not None:
            self.reserved -= self._cost(entry)
            return True
        for queued in self.waiting:
            if queued.id == seq_id:
                self.waiting.remove(queued)
                return True
        return False

    # ---- the decision ----

    def schedule(self) -> list[Work]:
        """Admit what fits, then plan one step (decodes first, then prompt chunks)."""
        while self.waiting and len(self.running) < self.max_running:
            head = self.waiting[0]
            if self.reserved + self._cost(head) > self.kv_tokens:
                break  # FIFO: a large request is not overtaken forever by small ones
            self.waiting.popleft()
            self.running[head.id] = head
            self.reserved += self._cost(head)
        plan = [Work(e.id, e.prompt_len, 1, True, True) for e in self.running.values() if e.decoding]
        budget = (self.step_tokens if plan else self.burst_tokens) - len(plan)
        prefilled = False
        for e in self.running.values():
            if e.decoding:
                continue
            n = min(self.prefill_chunk, e.prompt_len - e.computed)
            if n > budget and prefilled:
                break  # later prompts wait for the next step; the chunk size never shrinks
            plan.append(Work(e.id, e.computed, n, False, e.computed + n == e.prompt_len))
            e.computed += n
            budget -= n
            prefilled = True
        return plan

    # ---- what metrics read ----

    def kv_usage(self) -> float:
        return self.reserved / self.kv_tokens

    def counts(self) -> tuple[int, int]:
        return len(self.running), len(self.waiting)

    def idle(self) -> bool:
        return not self.running and not self.waiting
