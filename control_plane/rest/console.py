"""Routes the web console needs beyond the resources: who am I, version statistics, and text generation.

They are public, documented routes like every other (the console has no private endpoint), authorised through
the rows ``"VERB /path"`` of :data:`lmaas.control_plane.auth.METHODS`:

* ``GET /api/v1/whoami``: the caller's principal, role and permissions, so a client can hide what it may not do
  (the server still enforces every route).
* ``GET /api/v1/models/{name}/statistics``: per version, request rate, errors and mean latency over the last
  hour, from the control plane's own samples of each connected worker's OIP v2 ``ModelStatistics`` (cumulative
  counts and durations, polled over gRPC at the worker's ``inference_address`` when a client asks, at most every
  :data:`SAMPLE_EVERY` seconds). p50/p99 latency and, for LLMs, time to first token and tokens per second come
  from the control plane's own ring of the workers' cumulative histograms (sent in their sync Reports; see
  :mod:`lmaas.control_plane.metrics_aggregate`). When the control plane's settings name a Prometheus server
  (``prometheus_url``) that scrapes the workers, the same route answers from its range queries instead.
* ``POST /api/v1/models/{name}/generate``: streams a completion of a prompt (or the answer to chat messages,
  formatted by the version's chat template with the worker's own code) from an LLM version as server-sent
  events, through OIP v2 ``ModelStreamInfer`` on a worker that holds the version (so a browser on the control
  plane's origin reaches the data plane without a cross-origin call).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from fastapi.responses import StreamingResponse
from lmaas.control_plane.auth import GRANTS
from lmaas.control_plane.metrics_aggregate import LatencyAggregator
from lmaas.control_plane.rest.access import AuthorizedRoute, principal, route_options
from lmaas.control_plane.tokens import role_name
from lmaas.control_plane.workers import list_workers
from lmaas.protos.errors import FailedPrecondition, InvalidArgument, LMaaSError, Unavailable
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["PROMETHEUS_STEP", "SAMPLE_EVERY", "WINDOW_S", "StatisticsSampler",
           "prometheus_statistics", "router"]

log = logging.getLogger("lmaas.rest")
router = APIRouter(route_class=AuthorizedRoute)
ModelName = Annotated[str, Path(description="Model name.", examples=["demo"], max_length=128)]
SAMPLE_EVERY = 5.0  # seconds between samples of the workers' statistics
WINDOW_S = 3600.0  # the series cover the last hour
_POLL_TIMEOUT = 2.0


# -- whoami -------------------------------------------------------------------------------------------------


class WhoAmI(BaseModel):
    """The caller, as the control plane authenticated it."""

    model_config = ConfigDict(extra="forbid")

    principal: str = Field(description="token:<id>, cert:<CN> or anonymous (--no-auth).",
                           examples=["token:0123456789ab"])
    role: str = Field(description="reader, deployer, worker or admin.", examples=["deployer"])
    permissions: list[str] = Field(description="What the role may do: read, deploy, sync, admin.",
                                   examples=[["read", "deploy"]])


@router.get("/whoami", summary="The caller's principal and role", tags=["tokens"], response_model=WhoAmI,
            openapi_extra=route_options("GET /api/v1/whoami"))
async def whoami(request: Request) -> WhoAmI:
    """Who the bearer token is and what its role may do (the console shows only what it may do)."""
    who = principal(request)
    granted = sorted(p.value for p in GRANTS.get(who.role, frozenset()))
    return WhoAmI(principal=who.name, role=role_name(who.role), permissions=granted)


# -- statistics ---------------------------------------------------------------------------------------------


class StatisticsPoint(BaseModel):
    """One interval between two samples of a version's statistics, summed over the workers."""

    time_ms: int = Field(description="End of the interval (Unix epoch milliseconds).", examples=[1764586800000])
    requests_per_s: float = Field(description="Successful requests per second.", examples=[12.5])
    errors_per_s: float = Field(description="Failed requests per second.", examples=[0.0])
    mean_latency_ms: float = Field(description="Mean latency of the successful requests in the interval "
                                               "(0 without requests).", examples=[3.2])
    p50_latency_ms: float | None = Field(None, description="Median request latency over the minute before the "
                                         "point, from the workers' histograms (null: no request then).",
                                         examples=[2.9])
    p99_latency_ms: float | None = Field(None, description="99th percentile request latency, as p50_latency_ms.",
                                         examples=[9.5])
    ttft_p50_ms: float | None = Field(None, description="Median time to first token of an LLM, as p50_latency_ms.",
                                      examples=[41.0])
    tokens_per_s: float | None = Field(None, description="Tokens an LLM generated per second (over the minute "
                                       "before the point).", examples=[80.5])


class VersionStatistics(BaseModel):
    """A version's series and totals."""

    version: int = Field(description="The version.", examples=[2])
    requests: int = Field(description="Successful requests since the workers loaded it (summed).", examples=[1200])
    errors: int = Field(description="Failed requests since the workers loaded it (summed).", examples=[3])
    points: list[StatisticsPoint] = Field(description="Oldest first, over the last hour.")


class ModelStatistics(BaseModel):
    """Per version: request rate, errors, mean and p50/p99 latency (TTFT and tokens per second for LLMs)."""

    model: str = Field(description="The model.", examples=["demo"])
    source: Literal["workers", "prometheus"] = Field(
        description="workers: the control plane's samples of the workers' OIP statistics and its aggregation of "
                    "the latency histograms they report; prometheus: range queries of the configured Prometheus "
                    "server.", examples=["workers"])
    sample_every_s: float = Field(description="Seconds between the control plane's samples (the query step with "
                                              "Prometheus).", examples=[5.0])
    versions: list[VersionStatistics] = Field(description="Versions some worker reported, sorted.")
    unreachable: list[str] = Field(description="Workers whose statistics could not be read this time.",
                                   examples=[[]])


@dataclass
class _Totals:
    success: int = 0
    success_ns: int = 0
    fail: int = 0


@dataclass
class _Series:
    """Samples of one model: (monotonic time, wall ms, {(worker, version): totals})."""

    samples: deque[tuple[float, int, dict[tuple[str, int], _Totals]]] = field(default_factory=deque)
    unreachable: list[str] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class StatisticsSampler:
    """Samples the workers' statistics of a model on demand (one replica's memory; nothing is stored)."""

    def __init__(self, sample_every: float = SAMPLE_EVERY) -> None:
        self.sample_every = sample_every
        self._series: dict[str, _Series] = {}

    async def read(self, store: Any, model: str) -> ModelStatistics:
        series = self._series.setdefault(model, _Series())
        async with series.lock:
            now = time.monotonic()
            if not series.samples or now - series.samples[-1][0] >= self.sample_every:
                totals, series.unreachable = await _poll(store, model)
                series.samples.append((now, int(time.time() * 1000), totals))
                while series.samples and now - series.samples[0][0] > WINDOW_S:
                    series.samples.popleft()
            return _statistics(model, series, self.sample_every)


async def _poll(store: Any, model: str) -> tuple[dict[tuple[str, int], _Totals], list[str]]:
    from lmaas.client.inference import AsyncInferenceClient  # the SDK's client: grpc only when asked

    workers, _ = await list_workers(store, "")
    holding = [w for w in workers if any(h.model == model for h in w.held)]

    async def one(w: pb.WorkerInfo) -> dict[tuple[str, int], _Totals] | None:
        try:
            async with AsyncInferenceClient(w.inference_address) as client:
                answer = await client.statistics(model, timeout=_POLL_TIMEOUT)
        except (LMaaSError, OSError, TimeoutError) as exc:
            log.debug("statistics of %s from %s: %s", model, w.worker_id, exc)
            return None
        found: dict[tuple[str, int], _Totals] = {}
        for s in answer.model_stats:
            if s.version.isdigit():
                stats = s.inference_stats
                found[w.worker_id, int(s.version)] = _Totals(stats.success.count, stats.success.ns, stats.fail.count)
        return found

    results = await asyncio.gather(*(one(w) for w in holding))
    totals: dict[tuple[str, int], _Totals] = {}
    unreachable: list[str] = []
    for w, result in zip(holding, results, strict=True):
        if result is None:
            unreachable.append(w.worker_id)
        else:
            totals.update(result)
    return totals, sorted(unreachable)


def _statistics(model: str, series: _Series, every: float) -> ModelStatistics:
    samples = list(series.samples)
    versions = sorted({v for _, _, totals in samples for _, v in totals})
    out: list[VersionStatistics] = []
    for version in versions:
        points: list[StatisticsPoint] = []
        for (t0, _, before), (t1, wall, after) in itertools.pairwise(samples):
            seconds = max(t1 - t0, 1e-9)
            ok = ns = fail = 0
            for key, now in after.items():
                if key[1] != version:
                    continue
                then = before.get(key, _Totals())
                if now.success < then.success:  # the worker reloaded it: counters restarted
                    then = _Totals()
                ok += now.success - then.success
                ns += now.success_ns - then.success_ns
                fail += max(0, now.fail - then.fail)
            points.append(StatisticsPoint(time_ms=wall, requests_per_s=ok / seconds, errors_per_s=fail / seconds,
                                          mean_latency_ms=(ns / ok / 1e6) if ok else 0.0))
        last = samples[-1][2] if samples else {}
        out.append(VersionStatistics(
            version=version, requests=sum(t.success for k, t in last.items() if k[1] == version),
            errors=sum(t.fail for k, t in last.items() if k[1] == version), points=points,
        ))
    return ModelStatistics(model=model, source="workers", sample_every_s=every, versions=out,
                           unreachable=series.unreachable)


PROMETHEUS_STEP = 15.0  # seconds between the points of a Prometheus range query
_RATE = "1m"
_QUERIES = {  # {m}: the model name (validated: letters, digits, _ . - only), {w}: the rate window
    "requests_per_s": 'sum by (version) (rate(lmaas_inference_requests_total{{model="{m}",code="OK"}}[{w}]))',
    "errors_per_s": 'sum by (version) (rate(lmaas_inference_requests_total{{model="{m}",code!="OK"}}[{w}]))',
    "mean_latency_ms": '1000 * sum by (version) '
                       '(rate(lmaas_inference_request_duration_seconds_sum{{model="{m}"}}[{w}])) / sum by (version) '
                       '(rate(lmaas_inference_request_duration_seconds_count{{model="{m}"}}[{w}]))',
    "p50_latency_ms": '1000 * histogram_quantile(0.5, sum by (version, le) '
                      '(rate(lmaas_inference_request_duration_seconds_bucket{{model="{m}"}}[{w}])))',
    "p99_latency_ms": '1000 * histogram_quantile(0.99, sum by (version, le) '
                      '(rate(lmaas_inference_request_duration_seconds_bucket{{model="{m}"}}[{w}])))',
    "ttft_p50_ms": '1000 * histogram_quantile(0.5, sum by (version, le) '
                   '(rate(lmaas_llm_time_to_first_token_seconds_bucket{{model="{m}"}}[{w}])))',
    "tokens_per_s": 'sum by (version) (rate(lmaas_llm_generation_tokens_total{{model="{m}"}}[{w}]))',
}
_TOTALS = {
    "requests": 'sum by (version) (lmaas_inference_requests_total{{model="{m}",code="OK"}})',
    "errors": 'sum by (version) (lmaas_inference_requests_total{{model="{m}",code!="OK"}})',
}


async def prometheus_statistics(url: str, model: str, *, step: float = PROMETHEUS_STEP) -> ModelStatistics:
    """The statistics of ``model`` over the last hour from Prometheus's HTTP API (query_range), per version."""
    import httpx

    end = time.time()
    base = url.rstrip("/") + "/api/v1/"
    points: dict[int, dict[float, dict[str, float]]] = {}
    totals: dict[int, dict[str, int]] = {}
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            async def query(path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
                answer = await client.get(base + path, params=params)
                body = answer.json()
                if answer.status_code != 200 or body.get("status") != "success":
                    raise Unavailable(f"Prometheus at {url} refused {params['query']!r}: {body.get('error', '')}")
                result: list[dict[str, Any]] = body["data"]["result"]
                return result

            ranges = await asyncio.gather(*(
                query("query_range", {"query": q.format(m=model, w=_RATE), "start": end - WINDOW_S, "end": end,
                                      "step": step}) for q in _QUERIES.values()))
            instants = await asyncio.gather(*(query("query", {"query": q.format(m=model), "time": end})
                                              for q in _TOTALS.values()))
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise Unavailable(f"Prometheus at {url} did not answer: {exc}") from exc
    for key, series in zip(_QUERIES, ranges, strict=True):
        for s in series:
            version = s.get("metric", {}).get("version", "")
            if not version.isdigit():
                continue
            for t, value in s.get("values", []):
                number = float(value)
                if number == number and number not in (float("inf"), float("-inf")):  # NaN: no data there
                    points.setdefault(int(version), {}).setdefault(float(t), {})[key] = number
    for key, series in zip(_TOTALS, instants, strict=True):
        for s in series:
            version = s.get("metric", {}).get("version", "")
            if version.isdigit():
                totals.setdefault(int(version), {})[key] = int(float(s["value"][1]))
    versions = []
    for version in sorted(set(points) | set(totals)):
        by_time = points.get(version, {})
        versions.append(VersionStatistics(
            version=version, requests=totals.get(version, {}).get("requests", 0),
            errors=totals.get(version, {}).get("errors", 0),
            points=[StatisticsPoint(time_ms=int(t * 1000), requests_per_s=v.get("requests_per_s", 0.0),
                                    errors_per_s=v.get("errors_per_s", 0.0),
                                    mean_latency_ms=v.get("mean_latency_ms", 0.0),
                                    p50_latency_ms=v.get("p50_latency_ms"), p99_latency_ms=v.get("p99_latency_ms"),
                                    ttft_p50_ms=v.get("ttft_p50_ms"), tokens_per_s=v.get("tokens_per_s"))
                    for t, v in sorted(by_time.items())],
        ))
    return ModelStatistics(model=model, source="prometheus", sample_every_s=step, versions=versions, unreachable=[])


@router.get("/models/{name}/statistics", summary="Request rate, errors and latency per version",
            tags=["models"], response_model=ModelStatistics,
            openapi_extra=route_options("GET /api/v1/models/{name}/statistics"))
async def statistics(name: ModelName, request: Request) -> ModelStatistics:
    """Per version, over the last hour: successful and failed requests per second and mean latency, from the
    control plane's samples (every `sample_every_s` seconds, while someone asks) of the OIP v2 ModelStatistics
    of each connected worker holding the model; p50/p99 latency (TTFT and tokens per second for LLMs) from the
    control plane's own aggregation of the latency histograms the workers report. Workers that do not answer
    are listed in `unreachable`. With a Prometheus URL configured, everything comes from Prometheus."""
    plane = request.app.state.plane
    await plane.models.get_model(name)  # 404 for an unknown model
    prometheus = plane.settings.prometheus_url or None
    if prometheus:
        return await prometheus_statistics(str(prometheus), name)
    sampler: StatisticsSampler | None = getattr(request.app.state, "statistics", None)
    if sampler is None:
        sampler = request.app.state.statistics = StatisticsSampler()
    aggregator: LatencyAggregator | None = getattr(request.app.state, "latency", None)
    if aggregator is None:
        aggregator = request.app.state.latency = LatencyAggregator(plane.store)
    await aggregator.read()  # first: its snapshot is then no younger than the sampler's newest point
    return with_percentiles(await sampler.read(plane.store, name), aggregator)


def with_percentiles(stats: ModelStatistics, aggregator: LatencyAggregator) -> ModelStatistics:
    """Fill each point's p50 / p99 (and TTFT, tokens per second) from the control plane's own ring of the
    workers' histograms: the minute before the point (None where no request finished in it)."""
    for v in stats.versions:
        for point in v.points:
            window = aggregator.window(stats.model, v.version, point.time_ms)
            if window is None:
                continue
            point.p50_latency_ms = window.percentile_ms(0.5)
            point.p99_latency_ms = window.percentile_ms(0.99)
            point.ttft_p50_ms = window.percentile_ms(0.5, "ttft")
            point.tokens_per_s = window.tokens_per_s
    return stats


# -- generation ---------------------------------------------------------------------------------------------


class ChatTurn(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"] = Field(description="Who says it.", examples=["user"])
    content: str = Field(max_length=32768, description="What is said.", examples=["What is the capital of France?"])


class Generate(BaseModel):
    """A prompt to complete, or a conversation to answer: exactly one of `prompt` and `messages`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16},
        {"prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}]})

    prompt: str | None = Field(None, min_length=1, max_length=32768,
                               description="Text to complete as it is (no chat template).",
                               examples=["The capital of France is"])
    messages: list[ChatTurn] | None = Field(
        None, min_length=1, max_length=64,
        description="A conversation, formatted with the version's chat template (tokenizer_config.json), as the "
                    "worker's /v1/chat/completions does; with version 0, the stable version's template.",
        examples=[[{"role": "user", "content": "What is the capital of France?"}]])
    version: int = Field(0, ge=0, description="The version; 0 = as the deployment routes (stable or canary).",
                         examples=[0])
    max_tokens: int = Field(64, ge=1, le=4096, description="At most this many new tokens.", examples=[16])
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy.", examples=[0.0])

    @model_validator(mode="after")
    def _one_input(self) -> Generate:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of prompt and messages")
        return self


_GENERATE_EVENTS = {
    200: {
        "description": "`text/event-stream`: `event: token` with `data: {\"text\": ...}` per chunk, then "
                       "`event: done` with the finish reason, the version that answered, the worker, the number of "
                       "chunks, time to first token, tokens per second and the number of chat messages received "
                       "(0 for a prompt), or `event: error` with a problem.",
        "content": {"text/event-stream": {
            "schema": {"type": "string"},
            "example": 'event: token\ndata: {"text": " Paris"}\n\nevent: done\ndata: {"finish_reason": "length", '
                       '"version": "1", "worker": "up-worker", "tokens": 16, "ttft_ms": 41.0, '
                       '"tokens_per_s": 80.2, "messages": 1}\n\n',
        }},
    },
}


@router.post("/models/{name}/generate", summary="Stream a completion from an LLM version (server-sent events)",
             tags=["models"], response_class=StreamingResponse, responses=_GENERATE_EVENTS,  # type: ignore[arg-type]
             openapi_extra=route_options("POST /api/v1/models/{name}/generate"))
async def generate(name: ModelName, body: Generate, request: Request) -> StreamingResponse:
    """Complete `prompt` on a connected worker that holds the model (and `version`, when given), over OIP v2
    ModelStreamInfer; each chunk is an event as the model produces it. 409 FAILED_PRECONDITION when no
    connected worker holds it. Closing the stream cancels the generation."""
    from lmaas.client.llm import AsyncLLMClient

    plane = request.app.state.plane
    await plane.models.get_model(name)
    workers, _ = await list_workers(plane.store, "")
    holding = [w for w in workers
               if any(h.model == name and (body.version == 0 or h.version == body.version) for h in w.held)]
    if not holding:
        which = f"{name} v{body.version}" if body.version else name
        raise FailedPrecondition(f"no connected worker holds {which}: deploy it first")
    target = holding[0]
    prompt = body.prompt if body.messages is None else await _chat_prompt(request, name, body.version, body.messages)
    assert prompt is not None  # Generate admits exactly one of prompt and messages
    client = AsyncLLMClient(target.inference_address)
    stream = client.stream(name, prompt, version=body.version or "", max_tokens=body.max_tokens,
                           temperature=body.temperature)

    async def events() -> AsyncIterator[bytes]:
        started = time.perf_counter()
        first: float | None = None
        chunks, total, finish, answered = 0, 0, "", ""
        try:
            async for chunk in stream:
                if chunk.text:
                    first = first if first is not None else time.perf_counter()
                    chunks += 1
                    yield _event("token", {"text": chunk.text})
                if chunk.final and chunk.num_output_tokens:  # the final response counts the whole completion
                    total = chunk.num_output_tokens
                finish = chunk.finish_reason or finish
                answered = chunk.model_version or answered
            tokens = total or chunks
            end = time.perf_counter()
            decode = end - first if first is not None else 0.0
            yield _event("done", {
                "finish_reason": finish, "version": answered, "worker": target.worker_id, "tokens": tokens,
                "ttft_ms": round((first - started) * 1000, 1) if first is not None else None,
                "tokens_per_s": round((tokens - 1) / decode, 1) if decode > 0 and tokens > 1 else None,
                "messages": len(body.messages) if body.messages else 0,
            })
        except LMaaSError as exc:
            yield _event("error", {"code": exc.code.name, "detail": exc.message})
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
            await client.close()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _chat_prompt(request: Request, name: str, version: int, messages: list[ChatTurn]) -> str:
    """The conversation as the version's chat template formats it: the worker's own TextCodec, over the version's
    tokenizer files linked from the artifact store into a scratch folder (the codec is kept per digest)."""
    from lmaas.protos.manifests import Manifest
    from lmaas.server.llm.text import TextCodec
    from lmaas.server.llm.types import ChatMessage

    plane = request.app.state.plane
    if not version:
        deployment, _, _ = await plane.deployments.get(name)
        version = deployment.spec.stable_version
    v, _ = await plane.models.get_version(name, version)
    if v.format != "llm":
        raise FailedPrecondition(f"{name} v{version} is {v.format}, not an LLM: send a prompt")
    codecs: dict[str, TextCodec] | None = getattr(request.app.state, "chat_codecs", None)
    if codecs is None:
        codecs = request.app.state.chat_codecs = {}
    codec = codecs.get(v.digest)
    if codec is None:
        manifest = Manifest.parse(plane.artifacts.path(v.digest).read_bytes())
        files = {f.path: plane.artifacts.path(f.sha256) for f in manifest.files
                 if f.path in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")}

        def load() -> TextCodec:
            with tempfile.TemporaryDirectory(prefix="lmaas-chat-") as folder:  # read at once, then removed
                for path, blob in files.items():
                    (FilePath(folder) / path).symlink_to(blob)
                return TextCodec(FilePath(folder))

        try:
            codec = await asyncio.to_thread(load)
        except (ValueError, OSError) as exc:
            raise FailedPrecondition(f"{name} v{version} has no usable tokenizer: {exc}") from exc
        if len(codecs) >= 16:
            codecs.clear()
        codecs[v.digest] = codec
    try:
        text: str = codec.chat_prompt([ChatMessage(m.role, m.content) for m in messages])
    except Exception as exc:  # the template's own raise_exception (e.g. roles out of order)
        raise InvalidArgument(f"the chat template of {name} v{version} refused the messages: {exc}") from exc
    return text


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
