"""LLM rollouts under load: deploy v1 → v2 → rollback cycles while N OpenAI streams are always open.

Every stream is a real ``openai`` streaming completion on the worker's HTTP port, restarted as it ends. Per cycle
it reports the time from the Deploy / Rollback call to the rollout's final state (the worker's ACK), streams
served, streams cut (ended other than by ``length``) and errors; each stream's ``system_fingerprint`` must name
one version for its whole life, and a stream that starts after a rollout ACKed must name the deployed version.

    python -m benchmarks.llm_rollouts --control-plane HOST:PORT --worker-http http://HOST:PORT [--cycles 20]

(the model — default ``smollm2`` — must have versions 1 and 2 pushed; ``tests/server/llm/test_rollouts_live.py``
sets that up with real processes and runs this driver.)
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field

import openai
from lmaas.client.control import ControlPlaneClient
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

__all__ = ["Cycle", "RolloutRun", "Streams", "run_cycles"]

PROMPT = "Once upon a time"


@dataclass
class Cycle:
    deploy_ack_s: float
    rollback_ack_s: float
    streams: int = 0
    cut: int = 0
    errors: int = 0


@dataclass
class RolloutRun:
    cycles: list[Cycle] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # every cut, error or wrong fingerprint, described
    streams: int = 0


class Streams:
    """N threads, each keeping one stream open; ``expected`` is the version new streams must get (None: in flux)."""

    def __init__(self, base_url: str, model: str, concurrency: int, max_tokens: int) -> None:
        self.client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
        self.model, self.max_tokens = model, max_tokens
        self.lock = threading.Lock()
        self.expected: int | None = None
        self.served = self.cut = self.errors = 0
        self.problems: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(concurrency)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)

    def _problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def _loop(self) -> None:
        while not self.stop.is_set():
            expected = self.expected
            fingerprints: set[str] = set()
            finish = None
            try:
                stream = self.client.completions.create(
                    model=self.model, prompt=PROMPT, max_tokens=self.max_tokens, temperature=0, stream=True,
                    extra_body={"ignore_eos": True},
                )
                for chunk in stream:
                    if chunk.system_fingerprint:
                        fingerprints.add(chunk.system_fingerprint)
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finish = chunk.choices[0].finish_reason
            except Exception as exc:  # an error is what we count; the stream restarts
                with self.lock:
                    self.errors += 1
                self._problem(f"error: {type(exc).__name__}: {exc}")
                continue
            with self.lock:
                self.served += 1
                if finish != "length":
                    self.cut += 1
            if finish != "length":
                self._problem(f"stream ended with finish_reason={finish!r}")
            if len(fingerprints) != 1:
                self._problem(f"a stream answered by {sorted(fingerprints)}")
            elif expected is not None and f"-v{expected}-" not in next(iter(fingerprints)):
                self._problem(f"a stream started after v{expected} ACKed got {fingerprints}")


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
    """``cycles`` times (deploy v2, rollback to v1) with ``concurrency`` streams always open; v1 must be deployed."""
    run = RolloutRun()
    streams = Streams(worker_http, model, concurrency, max_tokens)
    with ControlPlaneClient(control_plane, token=token) as client:
        streams.expected = 1
        streams.start()
        try:
            for number in range(1, cycles + 1):
                before = (streams.served, streams.cut, streams.errors)
                time.sleep(0.5)  # streams are mid-flight on v1 when the flip comes
                streams.expected = None
                deploy = _flip(client, model, "deploy", 2)
                streams.expected = 2
                time.sleep(0.5)
                streams.expected = None
                rollback = _flip(client, model, "rollback", 1)
                streams.expected = 1
                cycle = Cycle(deploy, rollback, streams.served - before[0], streams.cut - before[1],
                              streams.errors - before[2])
                run.cycles.append(cycle)
                if report:
                    print(f"cycle {number:2d}: deploy→ACK {deploy * 1000:7.1f} ms  rollback→ACK "
                          f"{rollback * 1000:7.1f} ms  streams {cycle.streams:3d}  cut {cycle.cut}  "
                          f"errors {cycle.errors}", flush=True)
        finally:
            streams.close()
    run.streams, run.problems = streams.served, streams.problems
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
    acks = sorted(c.rollback_ack_s for c in run.cycles)
    print(f"{len(run.cycles)} cycles, {run.streams} streams, cut {sum(c.cut for c in run.cycles)}, errors "
          f"{sum(c.errors for c in run.cycles)}; rollback→ACK p50 {acks[len(acks) // 2] * 1000:.1f} ms "
          f"max {acks[-1] * 1000:.1f} ms")
    for problem in run.problems[:20]:
        print("  ", problem)


if __name__ == "__main__":
    main()
