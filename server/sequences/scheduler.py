"""The sequence batcher: requests of one sequence run in order, each on the slot the sequence holds.

A request names its sequence with the parameters ``sequence_id`` (uint64 or string), ``sequence_start`` and
``sequence_end`` (what tritonclient's ``infer(sequence_id=, sequence_start=, sequence_end=)`` sends). A START
takes a free slot, or waits in the backlog until one frees (Triton's direct and oldest strategies both queue
rather than refuse). A sequence's next request waits until its previous one finished, because it reads the state
that one wrote. Each execution takes at most one request per sequence: the rows of one instance's slots (direct)
or the oldest waiting requests of the live candidates (oldest), up to ``max_batch_size`` rows. A partial
batch runs at once unless the strategy sets ``max_queue_delay_microseconds``: then it waits up to that long
after its oldest request for more rows (ending early at a ``preferred_batch_size`` for oldest, or at
``minimum_slot_utilization`` of the slots for direct). Rows without a request are not run, so READY is always
true in an execution.

Implicit state lives here, per sequence: zeros at START, then the ``output_name`` tensor of each execution is
the ``input_name`` tensor of the next, so a stateless ONNX graph with state in/out tensors serves as a stateful
model. A sequence idle for ``max_sequence_idle_microseconds`` loses its slot and its state; a later request
without START is refused (INVALID_ARGUMENT, Triton's wording), never silently restarted. Unloading fails every
waiting request with UNAVAILABLE naming its sequence.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from lmaas.protos.errors import DeadlineExceeded, InvalidArgument, Unavailable
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.tensors import DTYPES
from lmaas.server.backends.base import Backend, BackendError, Signature
from lmaas.server.metrics import ModelMetrics
from lmaas.server.sequences.config import ControlSpec, SequenceBatching
from lmaas.server.tracing import Trace

__all__ = ["SequenceFlags", "SequenceScheduler", "sequence_flags"]

log = logging.getLogger("lmaas.worker")

Array = np.ndarray[Any, Any]
Outputs = dict[str, Array]
SequenceId = int | str


@dataclass(frozen=True, slots=True)
class SequenceFlags:
    id: SequenceId
    start: bool
    end: bool


def _flag(request: pb.ModelInferRequest, key: str) -> bool:
    p = request.parameters.get(key)
    if p is None:
        return False
    which = p.WhichOneof("parameter_choice")
    if which == "bool_param":
        return bool(p.bool_param)
    raise InvalidArgument(f"parameter '{key}' must be a boolean")


def sequence_flags(request: pb.ModelInferRequest, model: str) -> SequenceFlags:
    """The sequence a request belongs to; Triton refuses a request to a sequence model without a correlation ID."""
    sid: SequenceId = 0
    p = request.parameters.get("sequence_id")
    if p is not None:
        which = p.WhichOneof("parameter_choice")
        if which == "int64_param":
            sid = p.int64_param
        elif which == "uint64_param":
            sid = p.uint64_param
        elif which == "string_param":
            sid = p.string_param
        else:
            raise InvalidArgument("parameter 'sequence_id' must be an unsigned integer or a string")
    if sid == 0 or sid == "":
        raise InvalidArgument(
            f"inference request to model '{model}' must specify a non-zero or non-empty correlation ID"
        )
    return SequenceFlags(sid, _flag(request, "sequence_start"), _flag(request, "sequence_end"))


@dataclass(slots=True, eq=False)
class _Request:
    inputs: Mapping[str, Array]
    start: bool
    end: bool
    future: asyncio.Future[Outputs]
    deadline: float | None
    enqueued: float = field(default_factory=time.perf_counter)
    trace: Trace | None = None


@dataclass(slots=True, eq=False)
class _Sequence:
    id: SequenceId
    slot: int | None = None
    state: dict[str, Array] = field(default_factory=dict)
    queue: collections.deque[_Request] = field(default_factory=collections.deque)
    busy: bool = False
    ending: bool = False  # its END request arrived: only a new START may follow
    idle_since: float = 0.0  # loop time of its last activity


def _control_values(spec: ControlSpec) -> tuple[Any, Any]:
    for values in (spec.int32_false_true, spec.fp32_false_true, spec.bool_false_true):
        if values is not None:
            return values
    raise AssertionError("validated by ControlSpec")


def _datatype(name: str | None) -> str | None:
    if name is None:
        return None
    plain = name.removeprefix("TYPE_")
    return "BYTES" if plain == "STRING" else plain


class SequenceScheduler:
    """One per sequence-batched model version; :meth:`submit` is its only request-path entry."""

    def __init__(
        self,
        model: str,
        config: SequenceBatching,
        backend: Backend,
        *,
        max_batch_size: int,
        instances: int,
        outputs: tuple[str, ...],
        executor: Executor,
        metrics: ModelMetrics,
    ) -> None:
        self.model, self.config, self._backend = model, config, backend
        self._batching = max_batch_size > 0
        self.rows = max(1, max_batch_size)
        self.oldest = config.oldest is not None
        self.instances = instances
        self.capacity = config.oldest.max_candidate_sequences if config.oldest else instances * self.rows
        self._executor, self._metrics = executor, metrics
        self._idle_timeout = config.max_sequence_idle_microseconds / 1e6
        strategy = config.oldest or config.direct
        self._delay = strategy.max_queue_delay_microseconds / 1e6 if strategy else 0.0
        self._preferred = frozenset(config.oldest.preferred_batch_size) if config.oldest else frozenset()
        self._utilization = config.direct.minimum_slot_utilization if config.direct else 0.0
        inputs = {s.name: s for s in backend.inputs}
        outs = {s.name: s for s in backend.outputs}
        self._controls: list[tuple[Signature, ControlSpec]] = []
        for control in config.control_input:
            sig = inputs.get(control.name)
            if sig is None:
                raise BackendError(f"sequence control input '{control.name}' is not an input of the model")
            self._controls.append((sig, control.control[0]))
        self._states: list[tuple[Signature, str, Array]] = []  # input signature, output name, initial value
        for state in config.state:
            sig = inputs.get(state.input_name)
            if sig is None:
                raise BackendError(f"state input '{state.input_name}' is not an input of the model")
            if state.output_name not in outs:
                raise BackendError(f"state output '{state.output_name}' is not an output of the model")
            declared = _datatype(state.data_type)
            if declared is not None and declared != sig.datatype:
                raise BackendError(
                    f"state '{state.input_name}' is {declared} in the config, {sig.datatype} in the model"
                )
            dims = state.dims if state.dims is not None else sig.shape[1 if self._batching else 0 :]
            if any(d < 0 for d in dims):
                raise BackendError(f"state '{state.input_name}' needs dims without -1 in the config")
            initial = (
                np.full(dims, b"", dtype=object) if sig.datatype == "BYTES" else np.zeros(dims, DTYPES[sig.datatype])
            )
            self._states.append((sig, state.output_name, initial))
        self._numeric_corrid = next(
            (s.name for s, c in self._controls if c.kind == "CONTROL_SEQUENCE_CORRID" and s.datatype != "BYTES"), None
        )
        self.hidden_inputs = frozenset(s.name for s, _ in self._controls) | {s.name for s, _, _ in self._states}
        self.hidden_outputs = frozenset(o for _, o, _ in self._states)
        self._visible_outputs = tuple(o for o in outputs if o not in self.hidden_outputs)
        self._run_outputs = (*self._visible_outputs, *sorted(self.hidden_outputs))
        self._active: dict[SequenceId, _Sequence] = {}  # holds a slot
        self._backlog: collections.OrderedDict[SequenceId, _Sequence] = collections.OrderedDict()  # waits for one
        self._free_slots = list(range(self.capacity))
        self._free_instances = instances
        self._busy_instances: set[int] = set()
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    # ---- lifecycle ----

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._dispatch(), name=f"sequences-{self.model}"),
            asyncio.create_task(self._reap(), name=f"sequences-idle-{self.model}"),
        ]

    async def stop(self) -> None:
        """Unload: every waiting request fails with UNAVAILABLE naming its sequence; the state is dropped."""
        self._closed = True
        for seq in [*self._active.values(), *self._backlog.values()]:
            while seq.queue:
                req = seq.queue.popleft()
                if not req.future.done():
                    req.future.set_exception(
                        Unavailable(f"model '{self.model}' is unloading: sequence {seq.id} cannot continue")
                    )
        self._active.clear()
        self._backlog.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._running, return_exceptions=True)

    @property
    def live_sequences(self) -> int:
        return len(self._active)

    # ---- the request path ----

    async def submit(
        self,
        flags: SequenceFlags,
        inputs: Mapping[str, Array],
        batch: int,
        deadline: float | None,
        trace: Trace | None = None,
    ) -> Outputs:
        if self._closed:
            raise Unavailable(f"model '{self.model}' is unloading: sequence {flags.id} cannot continue")
        if self._batching and batch != 1:  # Triton's wording
            raise InvalidArgument(
                f"inference request to model '{self.model}' must specify batch-size 1 due to requirements "
                "of sequence batcher"
            )
        if isinstance(flags.id, str) and self._numeric_corrid is not None:
            raise InvalidArgument(
                f"sequence ID '{flags.id}' is a string: control input '{self._numeric_corrid}' of model "
                f"'{self.model}' takes an unsigned integer correlation ID"
            )
        loop = asyncio.get_running_loop()
        seq = self._active.get(flags.id) or self._backlog.get(flags.id)
        if not flags.start and (seq is None or seq.ending):
            raise InvalidArgument(
                f"inference request for sequence {flags.id} to model '{self.model}' must specify the START flag "
                "on the first request of the sequence"
            )
        if seq is None:
            seq = _Sequence(flags.id, idle_since=loop.time())
            if self._free_slots:
                self._assign(seq)
            else:
                self._backlog[seq.id] = seq
        seq.ending = flags.end
        req = _Request(inputs, flags.start, flags.end, loop.create_future(), deadline, trace=trace)
        seq.queue.append(req)
        self._metrics.pending.inc()
        self._wake()
        try:
            return await req.future
        except asyncio.CancelledError:  # the caller went away: a request not yet taken never runs
            if req in seq.queue:
                seq.queue.remove(req)
                self._metrics.pending.dec()
            raise

    def _assign(self, seq: _Sequence) -> None:
        self._free_slots.sort()
        seq.slot = self._free_slots.pop(0)
        self._active[seq.id] = seq

    def _release(self, seq: _Sequence, why: str) -> None:
        """Free the sequence's slot and state; the oldest backlogged sequence takes the slot."""
        if self._active.get(seq.id) is not seq:
            return
        del self._active[seq.id]
        assert seq.slot is not None
        self._free_slots.append(seq.slot)
        log.debug("sequence %s of model %s released (%s)", seq.id, self.model, why)
        while self._backlog and self._free_slots:
            _, waiting = self._backlog.popitem(last=False)
            self._assign(waiting)
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    # ---- dispatch ----

    def _ready(self, seq: _Sequence) -> bool:
        return bool(seq.queue) and not seq.busy

    def _next_batch(self) -> tuple[int, list[_Sequence]] | None:
        """(instance, sequences) of the next execution, or None when nothing can run now."""
        if not self._free_instances:
            return None
        if self.oldest:
            ready = sorted((s for s in self._active.values() if self._ready(s)), key=lambda s: s.queue[0].enqueued)
            if not ready:
                return None
            instance = min(set(range(self.instances)) - self._busy_instances)
            return instance, ready[: self.rows]
        for instance in range(self.instances):
            if instance in self._busy_instances:
                continue
            rows = [
                s
                for s in self._active.values()
                if s.slot is not None and s.slot // self.rows == instance and self._ready(s)
            ]
            if rows:
                rows.sort(key=lambda s: s.slot or 0)
                return instance, rows
        return None

    def _should_wait(self, seqs: list[_Sequence]) -> bool:
        """Whether to hold a partial batch: ``max_queue_delay_microseconds`` not yet spent, the batch not full, not
        a preferred size (oldest), below ``minimum_slot_utilization`` when one is set (direct)."""
        if not self._delay or len(seqs) >= self.rows or len(seqs) in self._preferred:
            return False
        if self._utilization and len(seqs) / self.rows >= self._utilization:
            return False
        return min(s.queue[0].enqueued for s in seqs) + self._delay > time.perf_counter()

    async def _dispatch(self) -> None:
        assert self._wakeup is not None
        while True:
            picked = self._next_batch()
            if picked is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            instance, seqs = picked
            if self._should_wait(seqs):  # more rows may come before the oldest waited max_queue_delay
                remaining = min(s.queue[0].enqueued for s in seqs) + self._delay - time.perf_counter()
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                continue
            batch = []
            now = asyncio.get_running_loop().time()
            for seq in seqs:
                req = seq.queue.popleft()
                self._metrics.pending.dec()
                if req.future.done():
                    continue
                if req.deadline is not None and now >= req.deadline:
                    self._metrics.rejected("deadline")
                    req.future.set_exception(DeadlineExceeded("deadline passed while the request was queued"))
                    self._after(seq, req, now)
                    continue
                seq.busy = True
                batch.append((seq, req))
            if not batch:
                continue
            self._busy_instances.add(instance)
            self._free_instances -= 1
            task = asyncio.create_task(self._execute(instance, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _after(self, seq: _Sequence, req: _Request, now: float) -> None:
        seq.busy = False
        seq.idle_since = now
        if req.end and not seq.queue:
            self._release(seq, "END")

    async def _execute(self, instance: int, batch: list[tuple[_Sequence, _Request]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._run_rows(loop, batch)
        finally:
            now = loop.time()
            for seq, req in batch:
                self._after(seq, req, now)
            self._busy_instances.discard(instance)
            self._free_instances += 1
            self._wake()

    def _feed(self, batch: list[tuple[_Sequence, _Request]]) -> dict[str, Array]:
        reqs = [r for _, r in batch]
        for seq, req in batch:
            if req.start or len(seq.state) != len(self._states):  # START (or a skipped START) resets the state
                seq.state = {sig.name: initial.copy() for sig, _, initial in self._states}
        feed: dict[str, Array] = {}
        for name in reqs[0].inputs:
            feed[name] = reqs[0].inputs[name] if len(reqs) == 1 else np.concatenate([r.inputs[name] for r in reqs])
        for sig, _, _ in self._states:
            rows = [seq.state[sig.name] for seq, _ in batch]
            feed[sig.name] = np.stack(rows) if self._batching else rows[0]
        for sig, spec in self._controls:
            feed[sig.name] = self._control(sig, spec, batch)
        return feed

    def _control(self, sig: Signature, spec: ControlSpec, batch: list[tuple[_Sequence, _Request]]) -> Array:
        values: list[Any]
        if spec.kind == "CONTROL_SEQUENCE_CORRID":
            values = [seq.id if sig.datatype != "BYTES" else str(seq.id).encode() for seq, _ in batch]
        else:
            false, true = _control_values(spec)
            if spec.kind == "CONTROL_SEQUENCE_START":
                values = [true if r.start else false for _, r in batch]
            elif spec.kind == "CONTROL_SEQUENCE_END":
                values = [true if r.end else false for _, r in batch]
            else:  # READY: only rows with a request run
                values = [true] * len(batch)
        dtype = object if sig.datatype == "BYTES" else DTYPES[sig.datatype]
        shape = [len(batch) if (self._batching and i == 0) else (1 if d == -1 else d) for i, d in enumerate(sig.shape)]
        try:
            return np.array(values, dtype=dtype).reshape(shape)
        except (ValueError, OverflowError, TypeError) as exc:
            raise InvalidArgument(
                f"control input '{sig.name}' of model '{self.model}' cannot hold {values}: {exc}"
            ) from exc

    async def _run_rows(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[_Sequence, _Request]]) -> None:
        started = time.perf_counter()
        traced = [r.trace for _, r in batch if r.trace is not None]
        try:
            for trace in traced:
                trace.stamp("COMPUTE_START")
            feed = self._feed(batch)
            for _, req in batch:
                self._metrics.queue_duration.observe(started - req.enqueued)
            for trace in traced:
                trace.stamp("COMPUTE_INPUT_END")
            outputs, elapsed = await loop.run_in_executor(self._executor, self._timed_run, feed)
        except Exception as exc:
            if len(batch) > 1:  # isolate the request that broke the batch; states are untouched so far
                for row in batch:
                    await self._run_rows(loop, [row])
                return
            if not batch[0][1].future.done():
                batch[0][1].future.set_exception(exc)
            return
        for trace in traced:
            trace.stamp("COMPUTE_OUTPUT_START")
        m = self._metrics
        m.compute_duration.observe(elapsed)
        m.executions.inc()
        m.batch_size.observe(len(batch))
        m.inferences.inc(len(batch))
        for i, (seq, req) in enumerate(batch):
            for sig, output, _ in self._states:
                seq.state[sig.name] = np.array(outputs[output][i] if self._batching else outputs[output])
            if not req.future.done():
                req.future.set_result(
                    {k: (outputs[k][i : i + 1] if self._batching else outputs[k]) for k in self._visible_outputs}
                )
        for trace in traced:
            trace.stamp("COMPUTE_END")

    def _timed_run(self, feed: Mapping[str, Array]) -> tuple[Outputs, float]:
        started = time.perf_counter()
        outputs = self._backend.run(feed, self._run_outputs)
        return outputs, time.perf_counter() - started

    # ---- idle sequences ----

    async def _reap(self) -> None:
        """Free the slot of every sequence idle longer than ``max_sequence_idle_microseconds``."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            next_check = self._idle_timeout
            for seq in list(self._active.values()):
                if seq.busy or seq.queue:
                    continue
                left = seq.idle_since + self._idle_timeout - now
                if left <= 0:
                    log.info(
                        "sequence %s of model %s idle for %.3fs: slot freed", seq.id, self.model, now - seq.idle_since
                    )
                    self._release(seq, "idle")
                else:
                    next_check = min(next_check, left)
            await asyncio.sleep(next_check)
