"""LLM rollouts under load: deploy v1 → v2 → rollback cycles while N OpenAI streams are always open.

Every stream is a real ``openai`` streaming completion on the worker's HTTP port (``ignore_eos``, so each must end
with ``finish_reason="length"``), restarted as it ends. A flip (Deploy v2 or Rollback) is started only when all N
streams are open on the serving version (sent after the previous rollout ACKed, not yet finished) and have had
their first chunk: every flip therefore has N streams in flight across it whose starting version is known, and
they must run to their end on it. Per
cycle it reports the time from the Deploy / Rollback call to the rollout's final state (the worker's ACK),
streams served, streams open across a flip, streams cut (ended other than by ``length``) and errors. The three
verdicts the issue names:

* **0 streams cut** and **0 errors**;
* **every stream's ``system_fingerprint`` names the version it started on**: one fingerprint for the whole stream,
  and a stream whose first chunk came while a version was known to serve (after its rollout ACKed, before the
  next flip began, with no flip between the request and that chunk) names that version.

    python -m benchmarks.llm_rollouts --control-plane HOST:PORT --worker-http http://HOST:PORT [--cycles 20]

(the model — default ``smollm2`` — must have versions 1 and 2 pushed and v1 deployed;
``tests/control_plane/test_llm_rollouts_live.py`` sets that up with real processes and runs this driver:
``pytest -m soak tests/control_plane/test_llm_rollouts_live.py -s`` runs the issue's 20 cycles.)
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field

import openai
from lmaas.client.control import ControlPlaneClient
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

__all__ = ["Cycle", "RolloutRun", "Streams", "run_cycles", "summary"]

PROMPT = "Once upon a time"


@dataclass
class Cycle:
    deploy_ack_s: float
    rollback_ack_s: float
    streams: int = 0
    cut: int = 0
    errors: int = 0
    across_flips: int = 0  # streams open when a flip began (N per flip by construction)


@dataclass
class RolloutRun:
    cycles: list[Cycle] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # every cut, error or wrong fingerprint, described
    streams: int = 0
    checked: int = 0  # streams whose version was known when they started, checked against their fingerprint
    across_flips: int = 0
    flips_not_all_known: int = 0
    wall_s: float = 0.0


@dataclass
class _Open:
    """One thread's stream in flight: the epoch and version when it was sent; ``known`` once its first chunk came
    in that same epoch (the version it started on is then ``version``)."""

    epoch: int
    version: int | None
    known: bool = False


class Streams:
    """N threads, each keeping one stream open. ``expected`` is the version new streams must get (None while a
    rollout is in flux); every change of it starts a new epoch, so a stream knows whether a flip came between its
    request and its first chunk."""

    def __init__(self, base_url: str, model: str, concurrency: int, max_tokens: int) -> None:
        self.client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
        self.model, self.max_tokens = model, max_tokens
        self.changed = threading.Condition()  # guards everything below; notified when a stream opens or ends
        self._expected: int | None = None
        self.epoch = 0
        self.served = self.cut = self.errors = self.checked = self.across_flips = 0
        self.ended_in_epoch = 0  # streams sent in the current epoch that have ended
        self.flips_not_all_known = 0  # flips begun on the patience rule (some open stream still in its prefill)
        self.problems: list[str] = []
        self.open: dict[int, _Open] = {}  # thread index -> its stream in flight
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(concurrency)]

    @property
    def expected(self) -> int | None:
        return self._expected

    @expected.setter
    def expected(self, version: int | None) -> None:
        with self.changed:
            self._set(version)

    def _set(self, version: int | None) -> None:
        if version is None:  # a flip begins: every stream open now runs across it
            self.across_flips += len(self.open)
        self._expected = version
        self.epoch += 1
        self.ended_in_epoch = 0

    def begin_flip_when_all_open(self, timeout: float = 300) -> int:
        """Wait until all N streams are open on the current version (sent in this epoch, not finished) and past
        their first chunk, then begin a flip (``expected = None``) atomically with that check; returns how many
        streams were open across it (N). So every flip has N streams in flight across it whose starting version
        is known. Should the streams' staggering keep one of them in its prefill at every moment, N streams of
        this epoch ending first is enough patience: then one known stream suffices (a count, never a clock)."""
        with self.changed:
            if not self.changed.wait_for(self._all_open, timeout):
                raise RuntimeError(f"the {len(self.threads)} streams were not all open within {timeout:.0f} s "
                                   f"({len(self.open)} open; problems: {self.problems[:3]})")
            open_now = len(self.open)
            self.flips_not_all_known += not all(o.known for o in self.open.values())
            self._set(None)
            return open_now

    def _all_open(self) -> bool:
        mine = [o for o in self.open.values() if o.epoch == self.epoch]
        if len(mine) != len(self.threads):
            return False
        return all(o.known for o in mine) or (self.ended_in_epoch >= len(self.threads) and any(o.known for o in mine))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)

    def _problem(self, text: str) -> None:
        with self.changed:
            self.problems.append(text)

    def _loop(self, index: int) -> None:
        while not self.stop.is_set():
            with self.changed:
                started = _Open(self.epoch, self._expected)
                self.open[index] = started
                self.changed.notify_all()
            fingerprints: list[str] = []
            first = True
            finish = None
            try:
                stream = self.client.completions.create(
                    model=self.model, prompt=PROMPT, max_tokens=self.max_tokens, temperature=0, stream=True,
                    extra_body={"ignore_eos": True},
                )
                for chunk in stream:
                    if first:  # no flip since the request: the server chose the version serving then
                        first = False
                        with self.changed:
                            started.known = self.epoch == started.epoch and started.version is not None
                            self.changed.notify_all()
                    if chunk.system_fingerprint and chunk.system_fingerprint not in fingerprints:
                        fingerprints.append(chunk.system_fingerprint)
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finish = chunk.choices[0].finish_reason
            except Exception as exc:  # an error is what we count; the stream restarts
                with self.changed:
                    self.errors += 1
                    del self.open[index]
                    self.ended_in_epoch += started.epoch == self.epoch
                    self.changed.notify_all()
                self._problem(f"error: {type(exc).__name__}: {exc}")
                continue
            with self.changed:
                del self.open[index]
                self.ended_in_epoch += started.epoch == self.epoch
                self.served += 1
                if finish != "length":
                    self.cut += 1
                if started.known:
                    self.checked += 1
                self.changed.notify_all()
            if finish != "length":
                self._problem(f"stream ended with finish_reason={finish!r}")
            if len(fingerprints) != 1:
                self._problem(f"a stream answered by {fingerprints}")
            elif started.known and f"-v{started.version}-" not in fingerprints[0]:
                self._problem(f"a stream that started while v{started.version} served got {fingerprints[0]}")


def _flip(client: ControlPlaneClient, model: str, call: str, version: int) -> float:
    started = time.perf_counter()
    generation = (client.deploy(model, version) if call == "deploy" else client.rollback(model)).rollout.generation
    final = client.wait_rollout(model, generation, timeout=300)
    elapsed = time.perf_counter() - started
    if final.phase != pb.ROLLOUT_PHASE_SUCCEEDED:
        raise RuntimeError(f"{call} of {model} v{version}: {pb.RolloutPhase.Name(final.phase)} {final.message}")
    return elapsed


def run_cycles(
    control_plane: str, worker_http: str, *, model: str = "smollm2", cycles: int = 3, concurrency: int = 8,
    max_tokens: int = 24, token: str | None = None, report: bool = False,
) -> RolloutRun:
    """``cycles`` times (deploy v2, rollback to v1) with ``concurrency`` streams always open; v1 must be deployed.
    Each flip begins once all the streams are open on the serving version (a condition, not a sleep)."""
    run = RolloutRun()
    began = time.perf_counter()
    streams = Streams(worker_http, model, concurrency, max_tokens)
    with ControlPlaneClient(control_plane, token=token) as client:
        streams.expected = 1
        streams.start()
        try:
            for number in range(1, cycles + 1):
                before = (streams.served, streams.cut, streams.errors)
                across = streams.begin_flip_when_all_open()
                deploy = _flip(client, model, "deploy", 2)
                streams.expected = 2
                across += streams.begin_flip_when_all_open()
                rollback = _flip(client, model, "rollback", 1)
                streams.expected = 1
                cycle = Cycle(deploy, rollback, streams.served - before[0], streams.cut - before[1],
                              streams.errors - before[2], across)
                run.cycles.append(cycle)
                if report:
                    print(f"cycle {number:2d}: deploy→ACK {deploy * 1000:7.1f} ms  rollback→ACK "
                          f"{rollback * 1000:7.1f} ms  streams {cycle.streams:3d}  open across flips "
                          f"{cycle.across_flips:2d}  cut {cycle.cut}  errors {cycle.errors}", flush=True)
        finally:
            streams.close()
    run.streams, run.problems, run.checked = streams.served, streams.problems, streams.checked
    run.across_flips = sum(c.across_flips for c in run.cycles)
    run.flips_not_all_known = streams.flips_not_all_known
    run.wall_s = time.perf_counter() - began
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--control-plane", required=True)
    parser.add_argument("--worker-http", required=True, help="http://HOST:PORT of the worker")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--token", default=None)
    a = parser.parse_args()
    run = run_cycles(a.control_plane, a.worker_http, model=a.model, cycles=a.cycles, concurrency=a.concurrency,
                     max_tokens=a.max_tokens, token=a.token, report=True)
    print(summary(run))
    for problem in run.problems[:20]:
        print("  ", problem)
    raise SystemExit(1 if run.problems else 0)


def summary(run: RolloutRun) -> str:
    """One line: the counts the three verdicts rest on, the ACK times and the wall time."""
    deploys = sorted(c.deploy_ack_s for c in run.cycles)
    acks = sorted(c.rollback_ack_s for c in run.cycles)
    fingerprints = sum(p.startswith(("a stream answered", "a stream that started")) for p in run.problems)
    return (f"{len(run.cycles)} cycles in {run.wall_s:.0f} s: {run.streams} streams ({run.across_flips} open across "
            f"a flip, {run.checked} checked against the version serving when they started; "
            f"{run.flips_not_all_known} flips began before all open streams had their first chunk), cut "
            f"{sum(c.cut for c in run.cycles)}, errors {sum(c.errors for c in run.cycles)}, wrong fingerprints "
            f"{fingerprints}; deploy→ACK p50 {_ms(deploys, 50)} max {_ms(deploys, 100)}, rollback→ACK p50 "
            f"{_ms(acks, 50)} max {_ms(acks, 100)}")


def _ms(values: list[float], p: int) -> str:
    return f"{values[(len(values) - 1) * p // 100] * 1000:.0f} ms" if values else "-"


if __name__ == "__main__":
    main()
