"""A loaded model version: backend, signature, batcher and bookkeeping."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
from google.protobuf import json_format
from lmaas.protos.inference import model_config_pb2 as mc
from lmaas.protos.tensors import DTYPES
from lmaas.server.backends import Backend, BackendError, Signature
from lmaas.server.batching import Batcher, BatchPolicy
from lmaas.server.config import ModelConfig, WarmupInput, WarmupSpec
from lmaas.server.llm.types import ChatMessage, GenerationChunk, SamplingParams
from lmaas.server.metrics import LLMMetrics, ModelMetrics
from lmaas.server.sequences.scheduler import SequenceScheduler

if TYPE_CHECKING:  # the engine imports torch: only a worker that loads an LLM pays for it
    from lmaas.server.llm.engine import LLMEngine

__all__ = ["LLMVersion", "ModelVersion", "effective_max_batch_size"]

log = logging.getLogger("lmaas.worker")

DEFAULT_MAX_BATCH_SIZE = 64
_CONFIG_TYPES = {name: getattr(mc, "TYPE_STRING" if name == "BYTES" else f"TYPE_{name}") for name in DTYPES}


def effective_max_batch_size(config: ModelConfig, backend: Backend) -> int:
    """The config's value, else batching when every input's first dimension is dynamic (never when decoupled)."""
    if config.model_transaction_policy is not None and config.model_transaction_policy.decoupled:
        if config.max_batch_size:
            raise BackendError("a decoupled model does not batch: set max_batch_size 0 or leave it out")
        return 0
    if config.max_batch_size is not None:
        return config.max_batch_size
    if backend.inputs and all(s.shape and s.shape[0] == -1 for s in backend.inputs):
        return DEFAULT_MAX_BATCH_SIZE
    return 0


def _warmup_array(datatype: str, shape: list[int], given: WarmupInput, rng: np.random.Generator) -> Any:
    if given.data is not None:
        values = np.array(
            [str(v).encode() for v in given.data] if datatype == "BYTES" else given.data,
            dtype=object if datatype == "BYTES" else DTYPES[datatype],
        )
        if values.size != int(np.prod(shape)):
            raise ValueError(f"warm-up data has {values.size} values for shape {shape}")
        return values.reshape(shape)
    if datatype == "BYTES":
        fill = [str(v).encode() for v in rng.integers(0, 100, int(np.prod(shape)))] if given.random_data else None
        return np.array(fill, dtype=object).reshape(shape) if fill else np.full(shape, b"", dtype=object)
    dtype = DTYPES[datatype]
    if not given.random_data:
        return np.zeros(shape, dtype)
    if np.issubdtype(dtype, np.floating) or datatype == "BF16":
        return rng.standard_normal(shape).astype(dtype)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(1, 100, shape).astype(dtype)  # from 1: a random integer input never divides by zero


def _timed(fn: Any, arg: Any) -> float:
    started = time.perf_counter()
    fn(arg)
    return time.perf_counter() - started


class _Retirable:
    """In-flight count, drain and revival of a version: shared by tensor and generative versions.

    A retired (unloaded) version drains in the background; a re-deploy of it before it closes takes it back
    (:meth:`revive`). The check that it is idle and the decision to close happen in one event-loop step, so a
    version is never closed while a request holds it, nor after it was revived.
    """

    inflight: int
    _idle: asyncio.Event
    _revived: asyncio.Event
    _closing: bool
    last_inference_ms: int

    def _init_drain(self) -> None:
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._revived = asyncio.Event()
        self._closing = False
        self.last_inference_ms = 0

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        self.last_inference_ms = int(time.time() * 1000)
        if self.inflight == 0:
            self._idle.set()

    def revive(self) -> bool:
        """Stop a drain in progress and keep serving; False once the version started closing (load it anew)."""
        if self._closing:
            return False
        self._revived.set()
        return True

    async def _drained(self, timeout: float) -> bool:
        """Wait until nothing is in flight or ``timeout`` passed (True: close now), or a revival (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._revived.is_set():
            remaining = deadline - loop.time()
            if self.inflight == 0 or remaining <= 0:
                self._closing = True  # same loop step as the check: no request or revival can slip in between
                return True
            waiters = {asyncio.ensure_future(self._idle.wait()), asyncio.ensure_future(self._revived.wait())}
            await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        self._revived.clear()  # consumed here, not at the start: a revival may come before the drain task runs
        return False


class ModelVersion(_Retirable):
    """One version of one model, ready to serve once :meth:`start` ran."""

    def __init__(
        self, name: str, version: int, backend: Backend, config: ModelConfig, metrics: ModelMetrics, digest: str = ""
    ) -> None:
        self.name, self.version, self.backend, self.config = name, version, backend, config
        self.digest = digest
        self.metrics = metrics
        self.max_batch_size = effective_max_batch_size(config, backend)
        self.inputs: dict[str, Signature] = {s.name: s for s in backend.inputs}
        self.outputs: dict[str, Signature] = {s.name: s for s in backend.outputs}
        self.output_names = tuple(self.outputs)
        batching = config.dynamic_batching
        self.policy = BatchPolicy(
            max_batch_size=self.max_batch_size,
            max_delay=(batching.max_queue_delay_microseconds / 1e6) if batching else 0.0,
            preferred_sizes=batching.preferred_batch_sizes if batching else (),
            max_queue_size=batching.max_queue_size if batching else 0,
            instances=config.instance_count,
        )
        self._executor = ThreadPoolExecutor(config.instance_count, thread_name_prefix=f"{name}-v{version}")
        self.batcher = Batcher(self._run, self.policy, self._executor, metrics)
        self.sequences: SequenceScheduler | None = None  # stateful model: requests go here, not to the batcher
        if config.sequence_batching is not None:
            if config.model_transaction_policy is not None and config.model_transaction_policy.decoupled:
                raise BackendError("a sequence-batched model cannot be decoupled")
            self.sequences = SequenceScheduler(
                name, config.sequence_batching, backend, max_batch_size=self.max_batch_size,
                instances=config.instance_count, outputs=self.output_names, executor=self._executor, metrics=metrics,
            )
            # Control and state tensors are the worker's to fill: clients neither send nor see them.
            self.inputs = {k: v for k, v in self.inputs.items() if k not in self.sequences.hidden_inputs}
            self.outputs = {k: v for k, v in self.outputs.items() if k not in self.sequences.hidden_outputs}
            self.output_names = tuple(self.outputs)
        self._init_drain()
        self.warmup = "not run"  # what warm() did: ModelConfig parameters["warmup"]
        policy = config.model_transaction_policy
        self.decoupled = policy is not None and policy.decoupled  # 0..N responses, streamed

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"

    def _run(self, inputs: Any) -> dict[str, Any]:
        return self.backend.run(inputs, self.output_names)

    def warm(self) -> None:
        """Warm up at load (thread): the configured ``model_warmup`` (a failure fails the load), else one
        synthetic request on zeros whose failure is only a warning (zeros are not valid input for every model).
        """
        if self.config.model_warmup:
            runs = 0
            for spec in self.config.model_warmup:
                feed = self._warmup_feed(spec)
                for _ in range(spec.count):
                    try:
                        seconds = _timed(self._run, feed)
                    except Exception as exc:
                        raise ValueError(f"configured warm-up '{spec.name or runs}' failed: {exc}") from exc
                    runs += 1
            self.batcher.estimate(seconds)
            self.warmup = f"configured: {runs} request(s) of {len(self.config.model_warmup)} sample(s) ran"
            return
        feed = self._warmup_feed(WarmupSpec())
        try:
            self._run(feed)
        except Exception as exc:
            self.warmup = f"synthetic zeros rejected by the model, loaded without warm-up: {exc}"[:500]
            log.warning("model %s: %s", self.label, self.warmup)
            return
        self.batcher.estimate(min(_timed(self._run, feed) for _ in range(3)))
        self.warmup = "synthetic: zeros, batch 1"

    def _warmup_feed(self, spec: WarmupSpec) -> dict[str, Any]:
        unknown = set(spec.inputs) - set(self.inputs)
        if unknown:
            raise ValueError(f"warm-up names unknown input(s) {sorted(unknown)}")
        rng = np.random.default_rng(0)
        feed = {}
        for sig in self.backend.inputs:  # all of them: a sequence model's control and state inputs too
            name = sig.name
            given = spec.inputs.get(name, WarmupInput())
            if given.dims is not None:
                shape = [*([spec.batch_size] if self.max_batch_size else []), *given.dims]
            else:
                shape = [1 if d == -1 else d for d in sig.shape]
                if self.max_batch_size and spec.batch_size:
                    shape[0] = spec.batch_size
            feed[name] = _warmup_array(sig.datatype, shape, given, rng)
        return feed

    def start(self) -> None:
        self.batcher.start()
        if self.sequences is not None:
            self.sequences.start()
        self.metrics.loaded.set(1)

    async def drain_and_close(self, timeout: float) -> bool:
        """Let in-flight requests finish (up to ``timeout``), then free the model; False if revived meanwhile."""
        self.metrics.loaded.set(0)
        if not await self._drained(timeout):
            self.metrics.loaded.set(1)
            return False
        await self.batcher.stop()
        if self.sequences is not None:
            await self.sequences.stop()
        self._executor.shutdown(wait=True)
        self.backend.close()
        self.metrics.forget()
        return True

    def config_pb(self) -> mc.ModelConfig:
        """The Triton-compatible configuration (what perf_analyzer and tritonclient read)."""
        strip = 1 if self.max_batch_size else 0
        cfg = mc.ModelConfig(
            name=self.name,
            platform=self.backend.platform,
            backend="onnxruntime" if self.backend.platform.startswith("onnx") else "pytorch",
            max_batch_size=self.max_batch_size,
            input=[
                mc.ModelInput(name=s.name, data_type=_CONFIG_TYPES[s.datatype], dims=s.shape[strip:])
                for s in self.inputs.values()
            ],
            output=[
                mc.ModelOutput(name=s.name, data_type=_CONFIG_TYPES[s.datatype], dims=s.shape[strip:])
                for s in self.outputs.values()
            ],
            instance_group=[
                mc.ModelInstanceGroup(count=self.config.instance_count, kind=mc.ModelInstanceGroup.KIND_CPU)
            ],
        )
        if self.sequences is not None:  # Triton's field names: the same message perf_analyzer reads
            json_format.ParseDict(self.sequences.config.model_dump(mode="json", exclude_none=True),
                                  cfg.sequence_batching)
        elif self.max_batch_size:
            cfg.dynamic_batching.CopyFrom(
                mc.ModelDynamicBatching(
                    preferred_batch_size=self.policy.preferred_sizes,
                    max_queue_delay_microseconds=int(self.policy.max_delay * 1e6),
                    default_queue_policy=mc.ModelQueuePolicy(max_queue_size=self.policy.max_queue_size),
                )
            )
        for key, value in self.config.parameters.items():
            cfg.parameters[key].string_value = str(value)
        if self.decoupled:
            cfg.model_transaction_policy.decoupled = True
        for spec in self.config.model_warmup:
            w = cfg.model_warmup.add(name=spec.name, batch_size=spec.batch_size if self.max_batch_size else 0)
            w.count = spec.count
            for name, given in spec.inputs.items():
                sig = self.inputs[name]
                entry = w.inputs[name]
                entry.data_type = _CONFIG_TYPES[sig.datatype]
                entry.dims.extend(given.dims if given.dims is not None else sig.shape[strip:])
                if given.random_data:
                    entry.random_data = True
                elif given.data is None:
                    entry.zero_data = True
        cfg.parameters["warmup"].string_value = self.warmup
        return cfg


class _LLMBackend:
    """What the manager and the metadata RPCs read of a backend (``platform``, signatures, ``close``)."""

    platform = "lmaas_llm"

    def __init__(self, engine: LLMEngine) -> None:
        from lmaas.server.llm.oip import INPUTS, OUTPUTS

        self.engine, self.inputs, self.outputs = engine, INPUTS, OUTPUTS

    def close(self) -> None:
        self.engine.close()


class _Held:
    """A generation that holds its version's in-flight count from creation until it ends, fails or is closed.

    Held from the call (not the first ``__anext__``), so a version looked up just before a rollout flip cannot
    be drained and closed under a stream that was already handed out.
    """

    def __init__(self, mv: LLMVersion, inner: AsyncIterator[GenerationChunk]) -> None:
        self._mv, self._inner, self._held = mv, inner, True
        mv.enter()

    def __aiter__(self) -> _Held:
        return self

    async def __anext__(self) -> GenerationChunk:
        try:
            return await self._inner.__anext__()
        except BaseException:  # end, error or cancellation: the stream is over
            self._release()
            raise

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()  # type: ignore[attr-defined]
        finally:
            self._release()

    def _release(self) -> None:
        if self._held:
            self._held = False
            self._mv.leave()

    def __del__(self) -> None:  # handed out but never iterated nor closed
        self._release()


class LLMVersion(_Retirable):
    """A loaded generative version: the manager's bookkeeping around an engine; what ``DataPlane.llm`` returns.

    Implements :class:`lmaas.server.llm.types.LLMModel`; every stream holds the in-flight count, so an unload
    or a rollout drains streams to their end (or to the drain timeout, counted in ``lmaas_llm_streams_cut_total``).
    """

    max_batch_size = 0

    def __init__(
        self,
        name: str,
        version: int,
        engine: LLMEngine,
        config: ModelConfig,
        metrics: ModelMetrics,
        llm_metrics: LLMMetrics,
        digest: str = "",
    ) -> None:
        self.name, self.version, self.engine, self.config, self.digest = name, version, engine, config, digest
        self.metrics, self.llm_metrics = metrics, llm_metrics
        self.backend = _LLMBackend(engine)
        self.inputs: dict[str, Signature] = {s.name: s for s in self.backend.inputs}
        self.outputs: dict[str, Signature] = {s.name: s for s in self.backend.outputs}
        self.output_names = tuple(self.outputs)
        self.context_length = engine.context_length
        self.max_new_tokens = engine.max_new_tokens
        self._init_drain()

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"

    # ---- LLMModel ----

    def chat_prompt(self, messages: Sequence[ChatMessage]) -> str:
        return self.engine.chat_prompt(messages)

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def generate(self, prompt: str, params: SamplingParams, request_id: str = "") -> AsyncIterator[GenerationChunk]:
        return _Held(self, self.engine.generate(prompt, params, request_id))

    # ---- the manager's side ----

    def warm(self) -> None:
        """One forward on a single token (load thread): lazy initialisation paid now, and weights checked finite."""
        import torch
        from lmaas.server.llm.model import SeqInput

        model = self.engine.model
        (logits,) = model.forward([SeqInput([0], model.new_cache(1), True)])
        if logits is None or not bool(torch.isfinite(logits).all()):
            raise ValueError("the weights produce non-finite logits")

    def start(self) -> None:
        self.metrics.loaded.set(1)

    async def drain_and_close(self, timeout: float) -> bool:
        """Let open streams finish (up to ``timeout``); streams still open then are cut (counted), then free it.

        False if the version was revived meanwhile (it serves on)."""
        self.metrics.loaded.set(0)
        if not await self._drained(timeout):
            self.metrics.loaded.set(1)
            return False
        if self.inflight:
            self.llm_metrics.streams_cut.inc(self.inflight)
        await asyncio.to_thread(self.engine.close)
        self.metrics.forget()
        return True

    def config_pb(self) -> mc.ModelConfig:
        cfg = mc.ModelConfig(
            name=self.name,
            platform=self.backend.platform,
            backend="llm",
            max_batch_size=0,
            input=[
                mc.ModelInput(name=s.name, data_type=_CONFIG_TYPES[s.datatype], dims=s.shape)
                for s in self.inputs.values()
            ],
            output=[
                mc.ModelOutput(name=s.name, data_type=_CONFIG_TYPES[s.datatype], dims=s.shape)
                for s in self.outputs.values()
            ],
            instance_group=[mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)],
        )
        cfg.model_transaction_policy.decoupled = True
        for key, value in self.config.parameters.items():
            cfg.parameters[key].string_value = str(value)
        cfg.parameters["context_length"].string_value = str(self.context_length)
        cfg.parameters["max_new_tokens"].string_value = str(self.max_new_tokens)
        return cfg
