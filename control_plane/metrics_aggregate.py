"""Latency percentiles without Prometheus: the control plane's own aggregation of the workers' histograms.

Each worker sends its cumulative latency histograms per loaded version (request duration; time to first token
and generated tokens for LLMs) in the Reports of its sync stream; the session keeps the latest on the worker's
record (:class:`~lmaas.protos.lmaas.control.v1.resources_pb2.WorkerInfo` ``latency``). A
:class:`LatencyAggregator` reads those records every :data:`RING_EVERY` seconds (and when a client asks, at most
every :data:`SAMPLE_EVERY`), keeps a ring of the snapshots of the last hour, and answers percentiles over a
window from the differences of the cumulative buckets between two snapshots, summed over the workers, the way
Prometheus's ``histogram_quantile(rate(...[1m]))`` does. Cumulative figures make a lost report harmless; a
count that went down means the worker reloaded the version, and the newer figures count from zero.

The ring lives in one replica's memory (nothing is stored): every replica reads the same records, so each has
the same view after its first hour, and a replica that starts later has a shorter history.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from lmaas.control_plane.store.base import Store
from lmaas.control_plane.workers import list_workers
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

__all__ = ["RATE_WINDOW_S", "RING_EVERY", "SAMPLE_EVERY", "WINDOW_S", "Delta", "LatencyAggregator", "Window",
           "delta", "quantile"]

log = logging.getLogger(__name__)
RING_EVERY = 15.0  # seconds between background snapshots
SAMPLE_EVERY = 5.0  # a client's read takes a fresh snapshot if the latest is older than this
WINDOW_S = 3600.0  # the ring covers the last hour
RATE_WINDOW_S = 60.0  # percentiles at a point cover the minute before it (Prometheus's rate(...[1m]))

_Key = tuple[str, str, int]  # (worker, model, version)


@dataclass(frozen=True, slots=True)
class Delta:
    """Observations between two snapshots: per upper bound, cumulative counts; ``count`` includes +Inf."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum: float


def delta(now: pb.LatencyHistogram, then: pb.LatencyHistogram | None) -> Delta:
    """``now - then``; ``then`` is ignored when its bounds differ or its count is higher (a restart)."""
    if then is None or list(then.bounds) != list(now.bounds) or then.count > now.count:
        return Delta(tuple(now.bounds), tuple(now.counts), now.count, now.sum)
    return Delta(tuple(now.bounds), tuple(a - b for a, b in zip(now.counts, then.counts, strict=True)),
                 now.count - then.count, now.sum - then.sum)


def _add(a: Delta | None, b: Delta) -> Delta | None:
    if a is None:
        return b
    if a.bounds != b.bounds:  # workers of other releases with other buckets: keep the first kind
        return a
    return Delta(a.bounds, tuple(x + y for x, y in zip(a.counts, b.counts, strict=True)), a.count + b.count,
                 a.sum + b.sum)


def quantile(q: float, bounds: Sequence[float], counts: Sequence[int], count: int) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated linearly inside its bucket (as Prometheus).

    None without observations. A rank in the +Inf bucket answers the highest finite bound; the first bucket
    starts at 0.
    """
    if count <= 0 or not bounds:
        return None
    rank = q * count
    i = bisect.bisect_left(counts, rank)  # cumulative counts never decrease
    if i >= len(bounds):
        return float(bounds[-1])
    lower = 0.0 if i == 0 else float(bounds[i - 1])
    below = 0 if i == 0 else counts[i - 1]
    inside = counts[i] - below
    if inside <= 0:
        return float(bounds[i])
    return lower + (float(bounds[i]) - lower) * (rank - below) / inside


@dataclass(frozen=True, slots=True)
class Window:
    """What a version did between two snapshots, summed over the workers."""

    seconds: float
    requests: Delta | None
    ttft: Delta | None
    tokens: int

    def percentile_ms(self, q: float, which: str = "requests") -> float | None:
        d = self.requests if which == "requests" else self.ttft
        if d is None:
            return None
        value = quantile(q, d.bounds, d.counts, d.count)
        return None if value is None else value * 1000

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.tokens and self.seconds > 0 else None


@dataclass(slots=True)
class _Snapshot:
    wall_ms: int
    latency: dict[_Key, pb.VersionLatency]


class LatencyAggregator:
    """A ring of the workers' cumulative latency figures over the last hour, and windows over it."""

    def __init__(self, store: Store, *, every: float = RING_EVERY, sample_every: float = SAMPLE_EVERY,
                 window_s: float = WINDOW_S) -> None:
        self._store = store
        self.every = every
        self.sample_every = sample_every
        self.window_s = window_s
        self._ring: deque[_Snapshot] = deque()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._last_read = 0.0

    async def sample(self, *, at_most_every: float = 0.0) -> None:
        """Take a snapshot of every worker's figures (unless the latest is younger than ``at_most_every``)."""
        async with self._lock:
            now_ms = int(time.time() * 1000)
            if self._ring and now_ms - self._ring[-1].wall_ms < at_most_every * 1000:
                return
            workers, _ = await list_workers(self._store, "")
            latency = {(w.worker_id, v.model, v.version): v for w in workers for v in w.latency}
            self._ring.append(_Snapshot(now_ms, latency))
            while self._ring and now_ms - self._ring[0].wall_ms > (self.window_s + RATE_WINDOW_S) * 1000:
                self._ring.popleft()

    async def read(self) -> None:
        """A client asks: keep the background ring running, and make sure the latest snapshot is recent."""
        self._last_read = time.monotonic()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="lmaas-latency-ring")
        await self.sample(at_most_every=self.sample_every)

    async def _run(self) -> None:
        """Snapshots every ``every`` seconds while someone asked within the last hour, then stop (no reads)."""
        while time.monotonic() - self._last_read < self.window_s:
            await asyncio.sleep(self.every)
            try:
                await self.sample(at_most_every=self.every / 2)
            except Exception as exc:  # the store is unreachable for a moment: the next round tries again
                log.warning("latency ring: reading the workers failed: %s", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def window(self, model: str, version: int, end_ms: int, span_s: float = RATE_WINDOW_S) -> Window | None:
        """The version's figures between the snapshot at ``end_ms - span_s`` (the oldest one, if the ring is
        younger) and the one at ``end_ms`` (each: the latest taken at or before that time)."""
        times = [s.wall_ms for s in self._ring]
        j = bisect.bisect_right(times, end_ms) - 1
        if j <= 0:
            return None
        i = max(0, bisect.bisect_right(times, end_ms - int(span_s * 1000)) - 1)
        if i >= j:
            i = j - 1
        then, now = self._ring[i], self._ring[j]
        requests: Delta | None = None
        ttft: Delta | None = None
        tokens = 0
        for key, v in now.latency.items():
            if key[1] != model or key[2] != version:
                continue
            old = then.latency.get(key)
            if v.HasField("request_duration"):
                requests = _add(requests, delta(v.request_duration, old.request_duration if old else None))
            if v.HasField("time_to_first_token"):
                ttft = _add(ttft, delta(v.time_to_first_token, old.time_to_first_token if old else None))
            restarted = old is None or old.generation_tokens > v.generation_tokens
            tokens += v.generation_tokens - (0 if restarted or old is None else old.generation_tokens)
        return Window((now.wall_ms - then.wall_ms) / 1000, requests, ttft, tokens)
