"""The loop that joins scheduler and runner, in one dedicated thread; transports see only :class:`LLMEngine`.

Each step: apply cancellations, ask the scheduler for this step's work, run one packed forward, sample, detokenise
and push each request's new text to its own asyncio queue, then hand finished sequences back to the scheduler.
The chunks of one step go to each event loop in one ``call_soon_threadsafe`` (one wake-up per step, not one per
stream: each is a self-pipe write and a loop iteration that contend with the step for the GIL and the cores).
Torch releases the GIL inside its kernels, so the event loop keeps serving while a step runs. A request whose
consumer went away (iterator closed, task cancelled, client gone) is aborted at the start of the next step and
its KV cache is freed with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lmaas.protos.errors import InvalidArgument, Unavailable
from lmaas.server.llm.model import BLOCK, KVCache, Llama, SeqInput
from lmaas.server.llm.sampling import Sampler, validate
from lmaas.server.llm.scheduler import Entry, Scheduler
from lmaas.server.llm.text import Detokenizer, StopMatcher, TextCodec
from lmaas.server.llm.types import ChatMessage, FinishReason, GenerationChunk, SamplingParams
from lmaas.server.metrics import LLMMetrics

__all__ = ["EngineSettings", "LLMEngine", "default_torch_threads", "usable_cpus"]

log = logging.getLogger("lmaas.llm")
_ids = itertools.count(1)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def default_torch_threads() -> int:
    """Intra-op threads when a version sets none: the usable CPUs but one.

    The engine's loop thread is one of torch's threads, and the event loop (detokenising, delivering chunks, the
    transports) needs a core of its own: with as many OpenMP threads as cores, each op waits at its barrier behind
    whichever thread the scheduler preempted. Measured on 2 cores (SmolLM2, 64 new tokens, in-process): 16 streams
    71.7 tok/s with 1 thread against 29.2 with 2 (fp32), 122.6 against 39.5 (int8).
    """
    return max(1, usable_cpus() - 1)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Per-version knobs (``parameters`` of the model config; all optional)."""

    context_length: int = 2048  # capped by the model's max_position_embeddings
    max_new_tokens: int = 1024  # hard cap on a request's max_tokens
    kv_cache_mb: int = 256  # the KV budget: admission reserves prompt + max_tokens tokens of it
    max_running: int = 32
    max_waiting: int = 256
    prefill_chunk: int = 64
    step_tokens: int = 256  # tokens per step while streams decode (bounds their inter-token latency)
    burst_tokens: int = 1024  # tokens per step when none decodes: arrivals that came together prefill together
    torch_threads: int = 0  # 0: default_torch_threads() (the usable CPUs but one, for the event loop)
    dtype: str = "float32"

    @classmethod
    def from_parameters(cls, parameters: dict[str, Any]) -> EngineSettings:
        known = {f: type(getattr(cls(), f)) for f in cls.__dataclass_fields__}
        values: dict[str, Any] = {}
        for key, value in parameters.items():
            if key in known:
                try:
                    values[key] = known[key](value)
                except (TypeError, ValueError):
                    raise InvalidArgument(f"parameter {key}={value!r} is not a {known[key].__name__}") from None
        settings = cls(**values)
        if settings.dtype not in ("float32", "bfloat16"):
            raise InvalidArgument(f"parameter dtype={settings.dtype!r}: float32 or bfloat16")
        return settings


_Delivery = tuple["asyncio.Queue[GenerationChunk]", GenerationChunk]


@dataclass(eq=False)
class _Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[GenerationChunk]
    detok: Detokenizer
    sampler: Sampler
    stop: StopMatcher
    arrived: float = field(default_factory=time.perf_counter)
    cache: KVCache | None = None
    last_token: int = -1
    generated: int = 0
    pending_ids: list[int] = field(default_factory=list)  # tokens whose text is not sent yet
    last_time: float = 0.0


class LLMEngine:
    """A loaded generative version: implements :class:`lmaas.server.llm.types.LLMModel`."""

    def __init__(
        self,
        directory: Path,
        *,
        name: str = "",
        version: int = 0,
        digest: str = "",
        settings: EngineSettings | None = None,
        metrics: LLMMetrics | None = None,
    ) -> None:
        import json

        self.settings = s = settings or EngineSettings()
        self.name, self.version, self.digest = name, version, digest
        torch.set_num_threads(s.torch_threads if s.torch_threads > 0 else default_torch_threads())
        dtype = torch.float32 if s.dtype == "float32" else torch.bfloat16
        gen_path = directory / "generation_config.json"
        gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
        eos = gen.get("eos_token_id", [])
        self.codec = TextCodec(directory, eos if isinstance(eos, list) else [eos])  # before the weights: fail fast
        self.model = Llama.load(directory, dtype)
        c = self.model.config
        self.context_length = min(s.context_length, c.max_position_embeddings)
        self.max_new_tokens = min(s.max_new_tokens, self.context_length - 1)
        self.kv_bytes_per_token = c.kv_bytes_per_token(dtype)
        # The pool is sized once by the budget; the scheduler reserves whole blocks of it, so it never runs out.
        blocks = self.model.reserve_kv(max(s.kv_cache_mb * 2**20 // self.kv_bytes_per_token, 1))
        self.scheduler = Scheduler(
            blocks * BLOCK,
            max_running=s.max_running,
            max_waiting=s.max_waiting,
            prefill_chunk=s.prefill_chunk,
            step_tokens=s.step_tokens,
            block=BLOCK,
            burst_tokens=s.burst_tokens,
        )
        self.metrics = metrics
        self._requests: dict[str, _Request] = {}
        self._aborts: set[str] = set()
        # During a step, chunks wait here per event loop and are delivered together at its end (engine thread only).
        self._outbox: dict[asyncio.AbstractEventLoop, list[_Delivery]] | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"llm-{name or 'engine'}-v{version}", daemon=True)
        self._thread.start()

    # ---- LLMModel ----

    def chat_prompt(self, messages: Sequence[ChatMessage]) -> str:
        return self.codec.chat_prompt(messages)

    def count_tokens(self, text: str) -> int:
        return len(self.codec.encode(text))

    def generate(self, prompt: str, params: SamplingParams, request_id: str = "") -> AsyncIterator[GenerationChunk]:
        return self._generate(prompt, params, request_id)

    async def _generate(self, prompt: str, params: SamplingParams, request_id: str) -> AsyncIterator[GenerationChunk]:
        request = self._admit(prompt, params, request_id)
        done = False
        try:
            while True:
                chunk = await request.queue.get()
                done = chunk.finish_reason is not None
                yield chunk
                if done:
                    return
        finally:
            if not done:
                self.abort(request.id)

    def _admit(self, prompt: str, params: SamplingParams, request_id: str) -> _Request:
        if self._stopping:
            raise Unavailable(f"model '{self.name}' version {self.version} is unloading")
        if not isinstance(prompt, str) or not prompt:
            raise InvalidArgument("the prompt is empty")
        validate(params, self.max_new_tokens)
        ids = self.codec.encode(prompt)
        if not ids:
            raise InvalidArgument("the prompt is empty (it has no tokens)")
        if len(ids) + params.max_tokens > self.context_length:
            raise InvalidArgument(
                f"the prompt ({len(ids)} tokens) plus max_tokens ({params.max_tokens}) is over the context length "
                f"of {self.context_length} tokens"
            )
        rid = f"{request_id or 'gen'}#{next(_ids)}"  # unique even when clients reuse ids
        request = _Request(
            rid,
            ids,
            params,
            asyncio.get_running_loop(),
            asyncio.Queue(),
            Detokenizer(self.codec),
            Sampler(params, ids),
            StopMatcher(params.stop),
        )
        with self._cond:
            self.scheduler.add(Entry(rid, len(ids), len(ids) + params.max_tokens))  # may raise ResourceExhausted
            self._requests[rid] = request
            self._gauges()
            self._cond.notify()
        return request

    def abort(self, request_id: str) -> None:
        with self._cond:
            if request_id in self._requests:
                self._aborts.add(request_id)
                self._cond.notify()

    # ---- bookkeeping ----

    def running(self) -> int:
        return self.scheduler.counts()[0]

    def active(self) -> int:
        """Requests not finished yet (running or waiting)."""
        return len(self._requests)

    def close(self) -> None:
        """Stop the loop; any request still open ends with finish_reason "cancelled"; frees the weights."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        for request in list(self._requests.values()):
            self._finish(request, "cancelled")
        self.model = None  # type: ignore[assignment]
        if self.metrics is not None:
            self.metrics.forget()

    def _gauges(self) -> None:
        if self.metrics is not None:
            running, waiting = self.scheduler.counts()
            self.metrics.running.set(running)
            self.metrics.waiting.set(waiting)
            self.metrics.kv_usage.set(self.scheduler.kv_usage())

    # ---- the engine thread ----

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._aborts and self.scheduler.idle():
                    self._cond.wait()
                if self._stopping:
                    return
                for rid in list(self._aborts):
                    if (request := self._requests.get(rid)) is not None:
                        self._finish(request, "cancelled", locked=True)
                self._aborts.clear()
                plan = self.scheduler.schedule()
                self._gauges()
            if not plan:
                continue
            try:
                self._step(plan)
            except Exception as exc:  # a bug or out of memory: fail this step's requests, keep serving others
                log.exception("generation step failed model=%s version=%d", self.name, self.version)
                for work in plan:
                    if (request := self._requests.get(work.id)) is not None:
                        self._finish(request, "error", error=f"generation failed: {exc}")

    def _step(self, plan: list[Any]) -> None:
        seqs: list[SeqInput] = []
        requests: list[_Request] = []
        now = time.perf_counter()
        for work in plan:
            request = self._requests[work.id]
            if request.cache is None:  # admitted this step
                request.cache = self.model.new_cache(len(request.prompt) + request.params.max_tokens)
                if self.metrics is not None:
                    self.metrics.queue.observe(now - request.arrived)
            tokens = [request.last_token] if work.decode else request.prompt[work.start : work.start + work.count]
            seqs.append(SeqInput(tokens, request.cache, work.last_chunk))
            requests.append(request)
        logits = self.model.forward(seqs)
        now = time.perf_counter()
        self._outbox = {}
        try:
            for request, work, row in zip(requests, plan, logits, strict=True):
                if not work.decode and self.metrics is not None:
                    self.metrics.prompt_tokens.inc(work.count)
                if row is not None:
                    self._on_token(request, request.sampler(row), now)
        finally:
            outbox, self._outbox = self._outbox, None
            for loop, items in outbox.items():
                with contextlib.suppress(RuntimeError):  # the consumers' loop is closed: nobody is listening
                    loop.call_soon_threadsafe(_deliver, items)

    def _on_token(self, request: _Request, token: int, now: float) -> None:
        p = request.params
        request.sampler.observe(token)
        request.last_token = token
        request.generated += 1
        m = self.metrics
        if m is not None:
            m.generation_tokens.inc()
            if request.generated == 1:
                m.ttft.observe(now - request.arrived)
            else:
                m.itl.observe(now - request.last_time)
        request.last_time = now
        if token in self.codec.eos_ids and not p.ignore_eos:
            self._finish(request, "stop", text=request.stop.flush())
            return
        request.pending_ids.append(token)
        text, stopped = request.stop.feed(request.detok.push(token))
        if stopped:
            self._finish(request, "stop", text=text)
        elif request.generated >= p.max_tokens:
            self._finish(request, "length", text=text + request.stop.flush())
        elif text:
            self._emit(
                request, GenerationChunk(text, tuple(request.pending_ids), None, len(request.prompt), request.generated)
            )
            request.pending_ids = []

    def _finish(
        self, request: _Request, reason: FinishReason, *, text: str = "", error: str = "", locked: bool = False
    ) -> None:
        chunk = GenerationChunk(
            text, tuple(request.pending_ids), reason, len(request.prompt), request.generated, error=error
        )
        self._emit(request, chunk)
        if locked:
            self._release(request)
        else:
            with self._cond:
                self._release(request)
        if self.metrics is not None:
            self.metrics.finished[reason].inc()
            self.metrics.e2e.observe(time.perf_counter() - request.arrived)

    def _release(self, request: _Request) -> None:
        self.scheduler.finish(request.id)
        self._requests.pop(request.id, None)
        self._aborts.discard(request.id)
        if request.cache is not None:
            request.cache.free()  # its blocks go back to the pool now, not when the last reference goes
            request.cache = None
        self._gauges()

    def _emit(self, request: _Request, chunk: GenerationChunk) -> None:
        if self._outbox is not None and threading.current_thread() is self._thread:
            self._outbox.setdefault(request.loop, []).append((request.queue, chunk))
            return
        with contextlib.suppress(RuntimeError):  # the consumer's loop is closed: nobody is listening
            request.loop.call_soon_threadsafe(request.queue.put_nowait, chunk)


def _deliver(items: list[_Delivery]) -> None:
    """On the consumers' event loop: one step's chunks, in order."""
    for queue, chunk in items:
        queue.put_nowait(chunk)
