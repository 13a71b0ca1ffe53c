"""Dynamic batching: one queue per model version, ``instances`` executions at a time.

Requests arrive validated. When an execution slot is free and nothing waits,
a request runs at once in its own coroutine (no hand-off). Otherwise it
queues; a dispatcher takes the oldest request and everything behind it that
fits (same per-item shapes, up to ``max_batch_size``), waiting at most
``max_delay`` after the oldest arrived for more (0 = take only what is already
there), and runs the batch when a slot frees up. Outputs are split back per
request. A failing batch is re-run one request at a time so a bad request
fails alone. Requests whose deadline passed while queued are dropped before
they run: a cancelled one (gRPC cancels a call at its deadline) leaves the
queue at once, and both count as ``rejected{reason="deadline"}``. A
non-batching model is the same with batches of one request.

Where a batch runs: models whose executions take under ``INLINE_SECONDS`` run
on the event loop (a thread hop costs more than they do); slower ones run in
the executor, so the loop keeps decoding requests meanwhile (ONNX Runtime and
torch release the GIL). A slower one (measured at warm-up under
``IDLE_INLINE_SECONDS``) also runs on the loop when it is the only request in
the process after one loop turn: nothing could be decoded meanwhile, and the
hop to the executor cost ~0.85 ms of CPU per call of the benchmark CNN
(ONNX Runtime's intra-op pool woken from another thread).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from lmaas.protos.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from lmaas.server.metrics import ModelMetrics
from lmaas.server.tracing import Trace

__all__ = ["DEADLINE_SLACK", "IDLE_INLINE_SECONDS", "INLINE_SECONDS", "BatchPolicy", "Batcher", "expired"]

Array = np.ndarray[Any, Any]
Outputs = dict[str, Array]
RunFn = Callable[[Mapping[str, Array]], Outputs]

INLINE_SECONDS = 0.0003
# Longest measured execution that may run on the loop when nothing else is in flight: it bounds how long a request
# arriving meanwhile (any model) waits for the loop.
IDLE_INLINE_SECONDS = 0.02
# A call whose deadline passes is cancelled either by the server's timer or, a little earlier, by the client's own
# (whose deadline runs ahead of the server's by the one-way latency): a cancellation this close to (or past) the
# request's deadline counts as the deadline passing, not as the client giving up.
DEADLINE_SLACK = 0.010


def expired(deadline: float | None, now: float) -> bool:
    """Whether a request with ``deadline`` (event-loop time, None = none) has run out of time at ``now``."""
    return deadline is not None and now >= deadline - DEADLINE_SLACK


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
    trace: Trace | None = None  # a sampled request (TraceSetting): compute timestamps


class Batcher:
    _active = 0  # submits in progress in this process, every batcher: "alone" means 1

    def __init__(self, run: RunFn, policy: BatchPolicy, executor: Executor, metrics: ModelMetrics) -> None:
        self._run, self.policy, self._executor, self._metrics = run, policy, executor, metrics
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._free = policy.instances
        self._closed = False
        self.inline = False  # until measured: see estimate()
        self._ema = 1.0
        self._measured = False  # estimate() ran: only a measured model runs inline when idle

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._dispatcher = asyncio.create_task(self._dispatch(), name="batcher")

    async def stop(self) -> None:
        """Fail what is still queued and stop dispatching (callers drain first)."""
        self._closed = True
        while self._queue:
            p = self._queue.popleft()
            self._metrics.pending.dec()
            if not p.future.done():
                p.future.set_exception(Unavailable("model is unloading"))
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, *self._running, return_exceptions=True)

    def estimate(self, seconds: float) -> None:
        """Seed the execution-time average (from warm-up), which decides inline vs executor."""
        self._ema = seconds
        self.inline = seconds < INLINE_SECONDS
        self._measured = True

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(
        self, inputs: Mapping[str, Array], batch: int, deadline: float | None, trace: Trace | None = None
    ) -> Outputs:
        Batcher._active += 1
        try:
            return await self._submit(inputs, batch, deadline, trace)
        finally:
            Batcher._active -= 1

    async def _alone(self) -> bool:
        """Whether a measured, moderately slow model may run this request on the loop: after one loop turn
        (requests that arrived meanwhile get to enter) nothing else is queued or in flight in the process."""
        if not self._measured or self._ema >= IDLE_INLINE_SECONDS:
            return False
        await asyncio.sleep(0)
        return not self._queue and Batcher._active == 1

    async def _submit(
        self, inputs: Mapping[str, Array], batch: int, deadline: float | None, trace: Trace | None
    ) -> Outputs:
        if self._closed:
            raise Unavailable("model is unloading")
        loop = asyncio.get_running_loop()
        if self._free and not self._queue and not self.policy.max_delay:
            # Fast path: a slot is free and nobody waits, so run here without a hand-off or a future.
            if deadline is not None and loop.time() >= deadline:
                self._metrics.rejected("deadline")
                raise DeadlineExceeded("deadline passed before the request could run")
            self._free -= 1
            try:
                self._metrics.queue_duration.observe(0.0)
                inline = self.inline or await self._alone()
                if trace is None:
                    return await self._compute(loop, inputs, batch, inline)
                trace.stamp("COMPUTE_START")
                trace.stamp("COMPUTE_INPUT_END")  # inputs were decoded before the queue: nothing to gather
                outputs = await self._compute(loop, inputs, batch, inline)
                trace.stamp("COMPUTE_OUTPUT_START")
                trace.stamp("COMPUTE_END")
                return outputs
            finally:
                self._release()
        # Only requests with equal per-item shapes can share a batch.
        key = tuple([a.shape[1:] for a in inputs.values()]) if self.policy.max_batch_size else ()
        p = _Pending(inputs, batch, key, loop.create_future(), deadline, trace=trace)
        limit = self.policy.max_queue_size
        if limit and len(self._queue) >= limit:
            self._metrics.rejected("queue_full")
            raise ResourceExhausted(f"queue of {limit} requests is full; retry later")
        self._queue.append(p)
        self._metrics.pending.inc()
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            return await p.future
        except asyncio.CancelledError:
            self._abandon(p, loop.time())
            raise

    def _abandon(self, p: _Pending, now: float) -> None:
        """The caller went away while its request waited (gRPC cancels a call when its deadline passes).

        Take the request out of the queue at once, so it holds no queue slot and is never executed, and count
        it as a deadline drop when that is why. One the dispatcher already took is counted in :meth:`_execute`.
        """
        try:
            self._queue.remove(p)
        except ValueError:
            return
        self._metrics.pending.dec()
        if expired(p.deadline, now):
            self._metrics.rejected("deadline")

    def _release(self) -> None:
        self._free += 1
        if self._queue and self._wakeup is not None:
            self._wakeup.set()

    async def _next_batch(self) -> list[_Pending]:
        """Wait for a free slot and a request, then gather the batch."""
        assert self._wakeup is not None
        pol = self.policy
        while True:
            while not (self._queue and self._free):
                self._wakeup.clear()
                await self._wakeup.wait()
            if pol.max_batch_size and pol.max_delay:
                head = self._queue[0]
                fill_until = head.enqueued + pol.max_delay
                while self._queued_items(head) < pol.max_batch_size:
                    remaining = fill_until - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except TimeoutError:
                        break
            if self._queue:  # cancelled requests leave the queue, maybe all of them while the batch filled
                break
        first = self._queue.popleft()
        batch, size = [first], first.batch
        while pol.max_batch_size and self._queue and size not in pol.preferred_sizes:
            nxt = self._queue[0]
            if nxt.key != first.key or size + nxt.batch > pol.max_batch_size:
                break
            batch.append(self._queue.popleft())
            size += nxt.batch
        self._metrics.pending.dec(len(batch))
        return batch

    def _queued_items(self, first: _Pending) -> int:
        total = 0
        for p in self._queue:
            if p.key != first.key:
                break
            total += p.batch
            if total in self.policy.preferred_sizes:
                return self.policy.max_batch_size
        return total

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            self._free -= 1
            task = asyncio.create_task(self._execute_and_release(loop, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute_and_release(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        try:
            await self._execute(loop, batch)
        finally:
            self._release()

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        now, started = loop.time(), time.perf_counter()
        live = []
        for p in batch:
            if p.future.done():  # the caller went away (cancelled): a deadline drop if that is why
                if p.future.cancelled() and expired(p.deadline, now):
                    self._metrics.rejected("deadline")
                continue
            if p.deadline is not None and now >= p.deadline:
                self._metrics.rejected("deadline")
                p.future.set_exception(DeadlineExceeded("deadline passed while the request was queued"))
                continue
            self._metrics.queue_duration.observe(started - p.enqueued)
            live.append(p)
        if live:
            await self._run_batch(loop, live)

    def _timed_run(self, inputs: Mapping[str, Array]) -> tuple[Outputs, float]:
        """Run and time the model alone (in whichever thread runs it), excluding any hand-off."""
        started = time.perf_counter()
        outputs = self._run(inputs)
        return outputs, time.perf_counter() - started

    async def _compute(
        self, loop: asyncio.AbstractEventLoop, inputs: Mapping[str, Array], items: int, inline: bool | None = None
    ) -> Outputs:
        """One execution of ``items`` inputs, inline or in the executor (default: by the measured execution time);
        records the execution metrics."""
        if self.inline if inline is None else inline:
            outputs, elapsed = self._timed_run(inputs)
        else:
            outputs, elapsed = await loop.run_in_executor(self._executor, self._timed_run, inputs)
        self._ema = 0.8 * self._ema + 0.2 * elapsed
        self.inline = self._ema < INLINE_SECONDS
        m = self._metrics
        m.compute_duration.observe(elapsed)
        m.executions.inc()
        m.batch_size.observe(items)
        m.inferences.inc(items)
        return outputs

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        traced = [p.trace for p in batch if p.trace is not None]
        for trace in traced:
            trace.stamp("COMPUTE_START")
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs}
        for trace in traced:
            trace.stamp("COMPUTE_INPUT_END")
        try:
            outputs = await self._compute(loop, inputs, sum(p.batch for p in batch))
        except Exception as exc:
            if len(batch) > 1:  # isolate the request that broke the batch
                for p in batch:
                    await self._run_batch(loop, [p])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        for trace in traced:
            trace.stamp("COMPUTE_OUTPUT_START")
        if len(batch) == 1:
            for trace in traced:
                trace.stamp("COMPUTE_END")
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
            return
        offset = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result({k: v[offset : offset + p.batch] for k, v in outputs.items()})
            offset += p.batch
        for trace in traced:
            trace.stamp("COMPUTE_END")
