"""Prometheus metrics of a worker, on an injected registry.

Names follow Prometheus conventions (base units, ``_total`` counters,
``_seconds`` histograms). Each model version binds its label children once at
load time so the request path does no label lookups.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["FINISH_REASONS", "LLMMetrics", "ModelMetrics", "WorkerMetrics"]

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_MV = ("model", "version")
#: Why a request is rejected before execution (``lmaas_inference_rejected_total{reason}``).
REJECT_REASONS = ("queue_full", "deadline")
#: Why a generation ended (``lmaas_llm_requests_finished_total{reason}``), as OpenAI's finish_reason plus ours.
FINISH_REASONS = ("stop", "length", "cancelled", "error")
# Token-suited buckets: a first token takes 1 ms (cached) to a minute (long queue); a token gap 5 ms to 10 s.
_TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    60.0,
)
_ITL_BUCKETS = (
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
_E2E_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "lmaas_inference_requests", "Inference requests by gRPC status code.", (*_MV, "code"), registry=registry
        )
        self.inferences = Counter(
            "lmaas_inferences", "Inferences performed (a request of batch n counts n).", _MV, registry=registry
        )
        self.executions = Counter(
            "lmaas_inference_executions", "Model executions (a batch counts once).", _MV, registry=registry
        )
        self.request_duration = Histogram(
            "lmaas_inference_request_duration_seconds",
            "End-to-end request time in the worker.",
            _MV,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_duration = Histogram(
            "lmaas_inference_queue_duration_seconds",
            "Time a request waited for an execution.",
            _MV,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute_duration = Histogram(
            "lmaas_inference_compute_duration_seconds",
            "Model execution time per batch.",
            _MV,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "lmaas_inference_batch_size",
            "Batch size of each execution.",
            _MV,
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.pending = Gauge(
            "lmaas_inference_pending_requests",
            "Requests queued and not yet executing.",
            _MV,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "lmaas_inference_rejected", "Requests rejected before execution.", (*_MV, "reason"), registry=registry
        )
        self.lazy_loads = Counter(
            "lmaas_model_lazy_loads", "Lazy versions (deploy --lazy) loaded on a request's demand.", _MV,
            registry=registry,
        )
        self.evictions = Counter(
            "lmaas_model_evictions", "Idle lazy versions unloaded to make room for another under the memory limit.",
            _MV, registry=registry,
        )
        self.loaded = Gauge(
            "lmaas_model_loaded",
            "1 while a model version is loaded and ready.",
            _MV,
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.load_duration = Histogram(
            "lmaas_model_load_duration_seconds",
            "Time to load and warm a model version.",
            ("model",),
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )
        # The HTTP transport's answers by route pattern: with lmaas_inference_requests_total (both transports)
        # a dashboard splits inference traffic into HTTP and gRPC.
        self.http_requests = Counter(
            "lmaas_http_requests",
            "HTTP requests answered, by route pattern, method and status.",
            ("route", "method", "status"),
            registry=registry,
        )
        self.snapshot_revision = Gauge(
            "lmaas_worker_snapshot_revision",
            "Last control-plane snapshot revision this worker ACKed.",
            registry=registry,
            multiprocess_mode="livemin",
        )

        self._llm(registry)

    def _llm(self, registry: CollectorRegistry) -> None:
        """Generative models (``lmaas_llm_*``), recorded by the engine thread (prometheus_client is thread-safe)."""
        self.llm_ttft = Histogram(
            "lmaas_llm_time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
            _MV,
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.llm_itl = Histogram(
            "lmaas_llm_inter_token_latency_seconds",
            "Time between two generated tokens of one sequence.",
            _MV,
            buckets=_ITL_BUCKETS,
            registry=registry,
        )
        self.llm_e2e = Histogram(
            "lmaas_llm_request_duration_seconds",
            "Arrival to last token of a generation.",
            _MV,
            buckets=_E2E_BUCKETS,
            registry=registry,
        )
        self.llm_queue = Histogram(
            "lmaas_llm_queue_duration_seconds",
            "Time a generation waited for KV-cache room.",
            _MV,
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.llm_prompt_tokens = Counter("lmaas_llm_prompt_tokens", "Prompt tokens prefilled.", _MV, registry=registry)
        self.llm_generation_tokens = Counter("lmaas_llm_generation_tokens", "Tokens generated.", _MV, registry=registry)
        self.llm_running = Gauge(
            "lmaas_llm_running_sequences",
            "Sequences in the running batch.",
            _MV,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.llm_waiting = Gauge(
            "lmaas_llm_waiting_sequences",
            "Sequences waiting for KV-cache room.",
            _MV,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.llm_kv_usage = Gauge(
            "lmaas_llm_kv_cache_usage_ratio",
            "Reserved share of the KV-cache budget (0-1).",
            _MV,
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.llm_finished = Counter(
            "lmaas_llm_requests_finished", "Generations by how they ended.", (*_MV, "reason"), registry=registry
        )
        self.llm_streams_cut = Counter(
            "lmaas_llm_streams_cut",
            "Streams still open when an unloading version's drain timeout ran out.",
            _MV,
            registry=registry,
        )

    def for_model(self, name: str, version: int) -> ModelMetrics:
        return ModelMetrics(self, name, str(version))

    def for_llm(self, name: str, version: int) -> LLMMetrics:
        return LLMMetrics(self, name, str(version))


class ModelMetrics:
    """The label children of one model version."""

    def __init__(self, m: WorkerMetrics, model: str, version: str) -> None:
        self._m, self._labels = m, (model, version)
        self.ok = m.requests.labels(model, version, "OK")
        self.inferences = m.inferences.labels(model, version)
        self.executions = m.executions.labels(model, version)
        self.request_duration = m.request_duration.labels(model, version)
        self.queue_duration = m.queue_duration.labels(model, version)
        self.compute_duration = m.compute_duration.labels(model, version)
        self.batch_size = m.batch_size.labels(model, version)
        self.pending = m.pending.labels(model, version)
        self.loaded = m.loaded.labels(model, version)
        # Bound now, so the series exist (at 0) before the first rejection: rate() misses a series' first value.
        self._rejected = {reason: m.rejected.labels(model, version, reason) for reason in REJECT_REASONS}

    def failed(self, code: str) -> None:
        self._m.requests.labels(*self._labels, code).inc()

    def rejected(self, reason: str) -> None:
        child = self._rejected.get(reason) or self._m.rejected.labels(*self._labels, reason)
        child.inc()

    def forget(self) -> None:
        """Drop the per-version series after an unload (keeps /metrics bounded across deploys)."""
        self.loaded.set(0)
        for metric in (
            self._m.inferences,
            self._m.executions,
            self._m.request_duration,
            self._m.queue_duration,
            self._m.compute_duration,
            self._m.batch_size,
            self._m.pending,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(*self._labels)


class LLMMetrics:
    """The ``lmaas_llm_*`` label children of one generative version (bound once: the engine loop does no lookups)."""

    def __init__(self, m: WorkerMetrics, model: str, version: str) -> None:
        self._m, self._labels = m, (model, version)
        self.ttft = m.llm_ttft.labels(model, version)
        self.itl = m.llm_itl.labels(model, version)
        self.e2e = m.llm_e2e.labels(model, version)
        self.queue = m.llm_queue.labels(model, version)
        self.prompt_tokens = m.llm_prompt_tokens.labels(model, version)
        self.generation_tokens = m.llm_generation_tokens.labels(model, version)
        self.running = m.llm_running.labels(model, version)
        self.waiting = m.llm_waiting.labels(model, version)
        self.kv_usage = m.llm_kv_usage.labels(model, version)
        self.streams_cut = m.llm_streams_cut.labels(model, version)
        self.finished = {reason: m.llm_finished.labels(model, version, reason) for reason in FINISH_REASONS}

    def forget(self) -> None:
        for metric in (
            self._m.llm_ttft,
            self._m.llm_itl,
            self._m.llm_e2e,
            self._m.llm_queue,
            self._m.llm_running,
            self._m.llm_waiting,
            self._m.llm_kv_usage,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(*self._labels)
