"""Dynamic batching: one queue per model version, ``instances`` executions at a time.

Requests arrive validated. Each free instance takes the oldest request and
everything waiting behind it that fits (same per-item shapes, up to
``max_batch_size``), waiting at most ``max_delay`` for more after the oldest
arrived (0 = take only what is already there). The batch runs in an executor
thread; outputs are split back per request. A failing batch is re-run one
request at a time so a bad request fails alone. Requests whose deadline passed
while queued are dropped before they run. A non-batching model is the same
loop with a batch of one request.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmaas.protos.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from lmaas.server.metrics import ModelMetrics

__all__ = ["Batcher", "BatchPolicy"]

Array = np.ndarray[Any, Any]
Outputs = dict[str, Array]
RunFn = Callable[[Mapping[str, Array]], Outputs]


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int = 0  # 0: the model does not batch; one request per execution
    max_delay: float = 0.0  # seconds the oldest request may wait for the batch to fill
    preferred_sizes: tuple[int, ...] = ()
    max_queue_size: int = 0  # 0: unbounded
    instances: int = 1


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: Mapping[str, Array]
    batch: int
    key: tuple[Any, ...]  # per-item shapes: only equal keys share a batch
    future: asyncio.Future[Outputs]
    deadline: float | None  # loop time
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, run: RunFn, policy: BatchPolicy, executor: Executor, metrics: ModelMetrics) -> None:
        self._run, self.policy, self._executor, self._metrics = run, policy, executor, metrics
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._tasks = [asyncio.create_task(self._instance_loop(), name=f"batcher-{i}") for i in range(self.policy.instances)]

    async def stop(self) -> None:
        """Fail what is still queued and stop the loops (callers drain first)."""
        self._closed = True
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(Unavailable("model is unloading"))
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, inputs: Mapping[str, Array], batch: int, deadline: float | None) -> Outputs:
        if self._closed:
            raise Unavailable("model is unloading")
        limit = self.policy.max_queue_size
        if limit and len(self._queue) >= limit:
            self._metrics.rejected("queue_full")
            raise ResourceExhausted(f"queue of {limit} requests is full; retry later")
        key = tuple(a.shape[1:] for a in inputs.values()) if self.policy.max_batch_size else ()
        p = _Pending(inputs, batch, key, asyncio.get_running_loop().create_future(), deadline)
        self._queue.append(p)
        self._metrics.pending.inc()
        assert self._wakeup is not None
        self._wakeup.set()
        return await p.future

    async def _next_batch(self) -> list[_Pending]:
        assert self._wakeup is not None
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        first = self._queue.popleft()
        batch, size = [first], first.batch
        pol = self.policy
        if pol.max_batch_size:
            fill_until = first.enqueued + pol.max_delay
            while size < pol.max_batch_size and size not in pol.preferred_sizes:
                if self._queue:
                    nxt = self._queue[0]
                    if nxt.key != first.key or size + nxt.batch > pol.max_batch_size:
                        break
                    batch.append(self._queue.popleft())
                    size += nxt.batch
                    continue
                remaining = fill_until - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
        if self._queue:  # another instance may take the rest right away
            self._wakeup.set()
        return batch

    async def _instance_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            self._metrics.pending.dec(len(batch))
            now, started = loop.time(), time.perf_counter()
            live = []
            for p in batch:
                if p.future.done():  # the caller went away (cancelled)
                    continue
                if p.deadline is not None and now >= p.deadline:
                    self._metrics.rejected("deadline")
                    p.future.set_exception(DeadlineExceeded("deadline passed while the request was queued"))
                    continue
                self._metrics.queue_duration.observe(started - p.enqueued)
                live.append(p)
            if live:
                await self._execute(loop, live)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: Sequence[_Pending]) -> None:
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs}
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, self._run, inputs)
        except Exception as exc:
            if len(batch) > 1:  # isolate the request that broke the batch
                for p in batch:
                    await self._execute(loop, [p])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        m = self._metrics
        m.compute_duration.observe(time.perf_counter() - started)
        m.executions.inc()
        total = sum(p.batch for p in batch)
        m.batch_size.observe(total)
        m.inferences.inc(total)
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
            return
        offset = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result({k: v[offset : offset + p.batch] for k, v in outputs.items()})
            offset += p.batch
