"""Load-time self-tune of an ONNX version: instance count x intra-op threads, measured on the worker's own cores.

At load (in the loader thread, before the version takes traffic) the tuner runs the version in-process on a
synthetic batch-1 request for each candidate ``(instances, threads)``: ``instances`` Python threads call one
session built with ``threads`` intra-op threads, in a closed loop, for an equal slice of the budget (≤ 2 s per
version by default, session builds and warm-up calls included; at most ``WINDOW_S`` or ``WINDOW_CALLS`` calls
each, whichever is longer, so a fast model tunes in a fraction of the budget). Candidates of a small model
(``KEEP_ALIVE_BYTES``) stay loaded together and are measured in ``ROUNDS`` interleaved rounds, best of rounds;
a larger model's are built, measured and closed one at a time (at most two sessions open). The best balance of
throughput under load and one lone request's speed (their geometric mean, :func:`_score`) wins; the default
keeps its place unless a candidate beats it by ``MARGIN`` (noise must not flip it), or when other programs
used more than ``BUSY_SHARE`` of the cores meanwhile (a busy host favours fewer threads).
A batching model without a configured ``dynamic_batching`` is also measured on batches of ``BATCH_PROBE``
rows with the chosen config: where that is slower per row than batch-1 calls (by ``MARGIN``), the batcher stops
combining requests (``autotune_combine_requests: no``); clients may still send batches up to max_batch_size.

What the config states explicitly wins: ``parameters.intra_op_threads`` fixes the threads, an
``instance_count`` (or Triton ``instance_group``) fixes the instances; with both given nothing is measured.
Stateful (sequence-batched) and decoupled models keep their configured counts (the instance count is part of
their scheduling there). The outcome is logged once per version, exported as
``lmaas_model_autotune_choice{model,version,setting}`` / ``lmaas_model_autotune_seconds`` and shown in the
version's ModelConfig as ``autotune*`` parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from lmaas.protos.tensors import DTYPES
from lmaas.server.backends.base import Array, Backend, Signature
from lmaas.server.config import ModelConfig
from lmaas.server.memory import malloc_trim
from prometheus_client import CollectorRegistry, Gauge

if TYPE_CHECKING:
    from lmaas.server.models import ModelVersion

__all__ = [
    "BUSY_SHARE",
    "KEEP_ALIVE_BYTES",
    "MARGIN",
    "ROUNDS",
    "Autotuner",
    "Candidate",
    "TuneResult",
    "candidates",
    "synthetic_feed",
]

log = logging.getLogger("lmaas.worker")

MARGIN = 1.05  # a candidate must beat the default by 5 % to replace it
_MIN_CALLS = 5  # a slice shorter than this many calls measures nothing
# Each candidate runs for this long or this many calls, whichever is longer (within its slice of the budget):
# enough to rank configurations, short enough that a small model's load is not held up for the whole budget.
WINDOW_S = 0.1
WINDOW_CALLS = 20
_BUILD_GUESS_S = 0.05  # until the first candidate session was built and timed
# Candidates of a model file up to this size stay loaded together and are measured in ROUNDS interleaved rounds
# (best of them: a burst of other load then lowers one sample, not the candidate); larger ones one at a time.
KEEP_ALIVE_BYTES = 64 << 20
ROUNDS = 2
# Other programs using more than this share of the usable cores during the tune make its figures those of a busy
# host (fewer threads always look better then): the default is kept, and the measured figures still shown.
BUSY_SHARE = 0.2
BATCH_PROBE = 4  # batch size measured against batch-1 calls for a batching model
COMBINE = "autotune_combine_requests"  # ModelConfig parameter: "no" = the batcher runs requests one at a time
PLAN_SHARE = 0.9  # of the budget; the rest absorbs calls and thread joins that end late


@dataclass(frozen=True, slots=True)
class Candidate:
    instances: int
    threads: int
    rate: float | None = None  # calls/s; None = not measured (budget)

    def __str__(self) -> str:
        return f"{self.instances}x{self.threads}=" + ("skipped" if self.rate is None else f"{self.rate:.0f}/s")


@dataclass(frozen=True, slots=True)
class TuneResult:
    status: str  # "tuned" | "explicit" | "skipped: <why>"
    instances: int
    threads: int
    measured: tuple[Candidate, ...] = ()
    seconds: float = 0.0
    budget: float = 0.0
    batch_probe: tuple[int, float] | None = None  # (batch size, rows/s) of the chosen config, batching models
    combine: bool = True  # False: batching measured slower than batch-1 calls, requests are not combined

    def parameters(self) -> dict[str, str]:
        """What ModelConfig shows (string parameters, as Triton's)."""
        out = {"autotune": self.status}
        if self.measured:
            out |= {
                "autotune_instances": str(self.instances),
                "autotune_intra_op_threads": str(self.threads),
                "autotune_candidates": " ".join(str(c) for c in self.measured),
                "autotune_seconds": f"{self.seconds:.3f}",
                "autotune_budget_seconds": f"{self.budget:.3f}",
            }
        if self.batch_probe is not None:
            out[f"autotune_batch{self.batch_probe[0]}_rows_per_s"] = f"{self.batch_probe[1]:.0f}"
            out[COMBINE] = "yes" if self.combine else "no"
        return out


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def _powers(limit: int) -> list[int]:
    out, n = [], 1
    while n <= limit:
        out.append(n)
        n *= 2
    return out


def candidates(cores: int, instances: int | None, threads: int | None, limit: int = 6) -> list[tuple[int, int]]:
    """(instances, threads) pairs to measure; ``instances``/``threads`` fixed where the config gives them.

    Free in both: every split of all cores (instances a power of two) plus one single-thread call; at most
    ``limit`` pairs, the splits that use every core first."""
    if instances is not None:
        pairs = [(instances, t) for t in sorted({*_powers(max(1, cores // instances)), max(1, cores // instances)})]
        return sorted(pairs, key=lambda p: -p[1])[:limit]
    if threads is not None:
        return [(i, threads) for i in sorted({1, *_powers(max(1, cores // threads))})][:limit]
    pairs = [(i, max(1, cores // i)) for i in _powers(cores)]
    if (1, 1) not in pairs:
        pairs.append((1, 1))
    return pairs[:limit]


def synthetic_feed(inputs: tuple[Signature, ...], batched: bool, batch: int = 1) -> dict[str, Array]:
    """One request of zeros (empty strings for BYTES), batch 1 by default: what the synthetic warm-up runs too."""
    feed: dict[str, Array] = {}
    for sig in inputs:
        shape = [1 if d == -1 else d for d in sig.shape]
        if batched and shape:
            shape[0] = batch
        if sig.datatype == "BYTES":
            feed[sig.name] = np.full(shape, b"", dtype=object)
        else:
            feed[sig.name] = np.zeros(shape, DTYPES[sig.datatype])
    return feed


def _busy_jiffies(cores: set[int]) -> int | None:
    """Busy clock ticks of ``cores`` since boot (/proc/stat), None where unreadable."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    total = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            fields = [int(x) for x in rest.split()]
            total += sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait (steal included)
    return total


class _HostMeter:
    """Cores other programs used while the tune ran (host busy time minus this process's CPU time)."""

    def __init__(self) -> None:
        self._cores = os.sched_getaffinity(0)
        self._busy = _busy_jiffies(self._cores)
        self._own = _own_cpu()
        self._wall = time.perf_counter()

    def foreign_cores(self) -> float | None:
        busy = _busy_jiffies(self._cores)
        if busy is None or self._busy is None:
            return None
        wall = max(time.perf_counter() - self._wall, 1e-6)
        host = (busy - self._busy) / os.sysconf("SC_CLK_TCK")
        return max(0.0, (host - (_own_cpu() - self._own)) / wall)


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _score(rates: dict[tuple[int, int], float], candidate: tuple[int, int]) -> float:
    """Geometric mean of the candidate's throughput under load and the speed of one lone request on it (the
    ``1 x threads`` rate, else throughput / instances): more instances of fewer threads raise the first and lower
    the second, and a tune must not halve c=1 speed for a few percent at c=16 (measured served: the benchmark CNN
    at 2 x 1 ran c=1 at 0.50x the 1 x 2 default and gained nothing at c=16)."""
    instances, threads = candidate
    lone = rates.get((1, threads), rates[candidate] / instances)
    return float((rates[candidate] * lone) ** 0.5)


def _choose(rates: dict[tuple[int, int], float], default: tuple[int, int]) -> tuple[int, int]:
    """The best-scoring candidate (:func:`_score`), unless the default is within ``MARGIN`` of it."""
    if not rates:
        return default
    top = max(rates, key=lambda c: _score(rates, c))
    return default if default in rates and _score(rates, top) < _score(rates, default) * MARGIN else top


def _closed_loop(run: Callable[[], Any], callers: int, until: float) -> tuple[float, float]:
    """``callers`` threads call ``run`` until ``until`` (perf_counter); returns (calls/s, longest call s).

    A thread starts a call only if its previous call would still end before ``until``: the loop stays
    inside its slice."""
    counts = [0] * callers
    longest = [0.0] * callers
    errors: list[BaseException] = []
    barrier = threading.Barrier(callers)

    def loop(k: int) -> None:
        clock = time.perf_counter
        try:
            barrier.wait()
            last = 0.0
            while clock() + last < until:
                t0 = clock()
                run()
                last = clock() - t0
                counts[k] += 1
                longest[k] = max(longest[k], last)
        except BaseException as exc:  # reported to the tuner, which keeps the default
            errors.append(exc)

    started = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(1, callers)]
    for w in workers:
        w.start()
    loop(0)
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    elapsed = max(time.perf_counter() - started, 1e-9)
    return sum(counts) / elapsed, max(longest)


BuildFn = Callable[[int, int], Backend]  # (instances, threads) -> a loaded backend


class Autotuner:
    """One per worker; :meth:`tune` runs in the loader thread."""

    def __init__(self, registry: CollectorRegistry | None, budget_s: float = 2.0) -> None:
        self.budget_s = budget_s
        self._choice: Gauge | None = None
        self._seconds: Gauge | None = None
        if registry is not None:
            self._choice = Gauge(
                "lmaas_model_autotune_choice",
                "Instance count and intra-op threads the load-time self-tune chose per version.",
                ("model", "version", "setting"),
                registry=registry,
                multiprocess_mode="livemax",
            )
            self._seconds = Gauge(
                "lmaas_model_autotune_seconds",
                "Time the load-time self-tune of a version took.",
                ("model", "version"),
                registry=registry,
                multiprocess_mode="livemax",
            )

    def tune_onnx(
        self, name: str, version: int, backend: Backend, path: Path, config: ModelConfig
    ) -> tuple[Backend, ModelConfig]:
        """Tune a freshly loaded ONNX ``backend`` (built with ``config``); returns the backend to serve with
        (``backend`` itself or a better one; the others are closed) and its config, ``autotune*`` parameters
        added. A tune that fails leaves the version as it was loaded (logged): it never fails the load."""
        try:
            backend, config, _ = self.tune_onnx_result(name, version, backend, path, config)
        except Exception as exc:
            log.warning("autotune model=%s version=%d failed, serving untuned: %s", name, version, exc)
        return backend, config

    def tune_onnx_result(
        self, name: str, version: int, backend: Backend, path: Path, config: ModelConfig
    ) -> tuple[Backend, ModelConfig, TuneResult]:
        """:meth:`tune_onnx`, with what was measured; exceptions propagate."""
        from lmaas.server.backends.onnx import OnnxBackend, default_threads

        params = config.parameters

        def build(instances: int, threads: int) -> Backend:
            return OnnxBackend(path, {**params, "intra_op_threads": threads}, instances)

        explicit_threads = int(params["intra_op_threads"]) if "intra_op_threads" in params else None
        explicit_instances = config.instance_count if "instance_count" in config.model_fields_set else None
        default = (config.instance_count, explicit_threads or default_threads(config.instance_count))
        # ONNX weights may sit beside the graph (external data): the version directory's files are the model
        size = sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file())
        chosen_backend, result = self._tune(
            backend, build, default, explicit_instances, explicit_threads, config, keep_alive=size <= KEEP_ALIVE_BYTES
        )
        self._report(name, version, result)
        new_params = {**params, **result.parameters()}
        if result.measured and chosen_backend is not backend:
            new_params["intra_op_threads"] = result.threads  # the options the served session was built with
        tuned = config.model_copy(update={"instance_count": result.instances, "parameters": new_params})
        return chosen_backend, tuned, result

    def _tune(
        self,
        backend: Backend,
        build: BuildFn,
        default: tuple[int, int],
        instances: int | None,
        threads: int | None,
        config: ModelConfig,
        *,
        keep_alive: bool,
    ) -> tuple[Backend, TuneResult]:
        from lmaas.server.models import effective_max_batch_size

        if config.sequence_batching is not None or (
            config.model_transaction_policy is not None and config.model_transaction_policy.decoupled
        ):
            return backend, TuneResult("skipped: stateful or decoupled model", *default)
        if instances is not None and threads is not None:
            return backend, TuneResult("explicit", *default)
        pairs = candidates(usable_cores(), instances, threads)
        if default in pairs:  # the loaded backend is measured first: it costs no build
            pairs.remove(default)
        pairs.insert(0, default)
        if len(pairs) == 1:  # e.g. one usable core: nothing to choose between
            return backend, TuneResult("skipped: one candidate", *default)
        max_batch = effective_max_batch_size(config, backend)
        feed = synthetic_feed(backend.inputs, batched=max_batch > 0)
        # configured dynamic_batching is the user's word: only the default batching is measured
        probe = min(BATCH_PROBE, max_batch) if max_batch >= 2 and config.dynamic_batching is None else 0
        outputs = tuple(s.name for s in backend.outputs)
        started = time.perf_counter()
        # planned against 90 % of the budget: a native call cannot be cut short, and one may run long on a busy host
        deadline = started + PLAN_SHARE * self.budget_s
        meter = _HostMeter()
        try:
            t0 = time.perf_counter()
            backend.run(feed, outputs)
            call_s = time.perf_counter() - t0
        except Exception as exc:  # zeros are not valid input for every model: serve untuned
            return backend, TuneResult(f"skipped: the synthetic request failed: {exc}"[:200], *default)
        build_s = _BUILD_GUESS_S
        rounds = ROUNDS if keep_alive else 1
        alive: dict[tuple[int, int], Backend] = {default: backend}
        failed: set[tuple[int, int]] = set()
        rates: dict[tuple[int, int], float] = {}
        todo = [pair for _ in range(rounds) for pair in pairs]
        for k, pair in enumerate(todo):
            if pair in failed:
                continue
            builds_left = len({p for p in todo[k:] if p not in alive and p not in failed})
            cost = 1.5 * build_s + 2 * call_s  # a build and its untimed first call
            slice_s = (deadline - time.perf_counter() - cost * builds_left - call_s) / (len(todo) - k + (probe > 0))
            if slice_s < _MIN_CALLS * call_s:
                break
            candidate = alive.get(pair)
            if candidate is None:
                t0 = time.perf_counter()
                try:
                    candidate = build(*pair)
                    candidate.run(feed, outputs)
                except Exception as exc:
                    log.warning("autotune: candidate %dx%d failed: %s", *pair, exc)
                    failed.add(pair)
                    continue
                build_s = max(build_s, time.perf_counter() - t0 - call_s)
                alive[pair] = candidate
            try:
                window = min(slice_s, max(WINDOW_S, WINDOW_CALLS * call_s) / rounds)
                rate, longest = _closed_loop(
                    functools.partial(candidate.run, feed, outputs), pair[0], time.perf_counter() + window
                )
                call_s = max(call_s, longest)
                rates[pair] = max(rate, rates.get(pair, 0.0))  # load from others only lowers a rate: best of rounds
            except Exception as exc:
                log.warning("autotune: candidate %dx%d failed: %s", *pair, exc)
                failed.add(pair)
            if not keep_alive:  # one round: only the best so far (and the loaded default) stay open
                self._close_except(alive, {_choose(rates, default), default})
        foreign = meter.foreign_cores()
        busy = foreign is not None and foreign > BUSY_SHARE * usable_cores()
        batch_probe = None
        if probe and rates and not busy:
            batch_probe = self._probe_batch(alive[_choose(rates, default)], backend, probe, outputs, deadline, call_s)
        seconds = time.perf_counter() - started
        measured = tuple(Candidate(*p, rates.get(p)) for p in pairs)
        if not rates:
            self._close_except(alive, {default})
            return backend, TuneResult("skipped: nothing could be measured", *default, measured, seconds)
        chosen = _choose(rates, default)
        status = "tuned"
        if busy:
            chosen, status = default, f"skipped: host busy ({foreign:.1f} cores used by other programs)"
        self._close_except(alive, {chosen})
        if chosen != default:
            gc.collect()
            malloc_trim()  # the losers' arenas: else they count as this version's memory
        # Combining requests must not cost throughput: batches of `probe` rows measured slower (by MARGIN) than
        # batch-1 calls of the same config (the benchmark transformer on 2 cores: 331 vs 451 rows/s) are not formed.
        combine = batch_probe is None or batch_probe[1] * MARGIN >= rates[chosen]
        return alive[chosen], TuneResult(
            status, *chosen, measured, seconds, self.budget_s, batch_probe=batch_probe, combine=combine
        )

    @staticmethod
    def _probe_batch(
        candidate: Backend, like: Backend, batch: int, outputs: tuple[str, ...], deadline: float, call_s: float
    ) -> tuple[int, float] | None:
        """Rows/s of ``candidate`` on batches of ``batch`` (one caller: what the batcher would run), if there is
        time left for it; None otherwise."""
        window = min(deadline - time.perf_counter() - batch * call_s, max(WINDOW_S, WINDOW_CALLS * call_s * batch))
        if window < _MIN_CALLS * call_s * batch:
            return None
        feed = synthetic_feed(like.inputs, batched=True, batch=batch)
        try:
            candidate.run(feed, outputs)  # first call of a new shape allocates
            rate, _ = _closed_loop(functools.partial(candidate.run, feed, outputs), 1, time.perf_counter() + window)
        except Exception as exc:  # the model may not take this batch (a fixed dim hidden behind -1): no opinion
            log.warning("autotune: batch-%d probe failed: %s", batch, exc)
            return None
        return batch, rate * batch

    def apply(self, mv: ModelVersion) -> None:
        """Give a loaded version the batching the tune measured (before it starts serving)."""
        if mv.config.parameters.get(COMBINE) == "no":
            mv.policy = mv.batcher.policy = dataclasses.replace(mv.policy, max_batch_size=1)

    @staticmethod
    def _close_except(alive: dict[tuple[int, int], Backend], keep: set[tuple[int, int]]) -> None:
        for pair in [p for p in alive if p not in keep]:
            alive.pop(pair).close()

    def _report(self, name: str, version: int, result: TuneResult) -> None:
        if result.measured:
            log.info(
                "autotune model=%s version=%d chose instances=%d intra_op_threads=%d (%s) seconds=%.3f budget=%.1f "
                "candidates=%s",
                name,
                version,
                result.instances,
                result.threads,
                result.status,
                result.seconds,
                result.budget,
                ",".join(str(c) for c in result.measured),
            )
        else:
            log.info("autotune model=%s version=%d %s", name, version, result.status)
        if self._choice is not None and self._seconds is not None:
            self._choice.labels(name, str(version), "instances").set(result.instances)
            self._choice.labels(name, str(version), "intra_op_threads").set(result.threads)
            self._seconds.labels(name, str(version)).set(result.seconds)

    def forget(self, name: str, version: int) -> None:
        """Drop a version's series after its unload."""
        for gauge, labels in (
            (self._choice, (name, str(version), "instances")),
            (self._choice, (name, str(version), "intra_op_threads")),
            (self._seconds, (name, str(version))),
        ):
            if gauge is not None:
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
