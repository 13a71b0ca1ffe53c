"""The transport-agnostic core of a worker: what each inference RPC does.

Servicers convert messages and call this; a REST transport would do the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

from lmaas import __version__
from lmaas.protos.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LMaaSError,
    NotFound,
    Unavailable,
)
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.server.batching import expired
from lmaas.server.inference import decode_request, encode_response
from lmaas.server.llm import oip
from lmaas.server.llm.types import GenerationChunk, LLMModel
from lmaas.server.manager import ModelManager, UnknownModel
from lmaas.server.models import LLMVersion, ModelVersion
from lmaas.server.sequences.scheduler import sequence_flags
from lmaas.server.shm import SharedMemory
from lmaas.server.tracing import Tracer

__all__ = ["EXTENSIONS", "DataPlane"]

# One list for both transports, as Triton: binary_tensor_data is the HTTP port's (every worker binds one).
EXTENSIONS = (
    "model_repository",
    "model_configuration",
    "statistics",
    "binary_tensor_data",
    "parameters",
    "system_shared_memory",
    "logging",
    "trace",
    "sequence",  # sequence_id / sequence_start / sequence_end on models with sequence_batching
)


class DataPlane:
    def __init__(
        self,
        manager: ModelManager,
        *,
        max_elements: int = 1 << 28,
        repository_rpcs: bool = True,
        trace_file: Path | None = None,
    ) -> None:
        self.manager = manager
        self.tracer = Tracer(trace_file)  # TraceSetting; sampled tensor requests write timestamp records
        self.max_elements = max_elements
        self.repository_rpcs = repository_rpcs
        self.draining = False
        self.shm = SharedMemory()  # system shared-memory regions, shared by the gRPC and HTTP transports

    # ---- health and metadata ----

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not self.draining

    def model_ready(self, name: str, version: str) -> bool:
        return not self.draining and self.manager.ready(name, version)

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="lmaas", version=__version__, extensions=EXTENSIONS)

    def model_metadata(self, name: str, version: str) -> pb.ModelMetadataResponse:
        mv = self.manager.get(name, version)
        T = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=name,
            versions=[str(v.version) for v in self.manager.loaded() if v.name == name],
            platform=mv.backend.platform,
            inputs=[T(name=s.name, datatype=s.datatype, shape=s.shape) for s in mv.inputs.values()],
            outputs=[T(name=s.name, datatype=s.datatype, shape=s.shape) for s in mv.outputs.values()],
        )

    def model_config(self, name: str, version: str) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self.manager.get(name, version).config_pb())

    # ---- inference ----

    async def infer(self, request: pb.ModelInferRequest, deadline: float | None) -> pb.ModelInferResponse:
        """Run one request; ``deadline`` is in event-loop time."""
        if self.draining:
            raise Unavailable("worker is shutting down")
        if self.manager.has_lazy:  # a lazy version loads on its first request (waits a bound, then UNAVAILABLE)
            await self.manager.wake(request.model_name, request.model_version)
        mv = self.manager.get(request.model_name, request.model_version)
        started = time.perf_counter()
        if isinstance(mv, LLMVersion):
            try:
                response = await self._infer_llm(mv, request)
            except LMaaSError as exc:
                mv.metrics.failed(exc.code.name)
                raise
            mv.metrics.ok.inc()
            mv.metrics.request_duration.observe(time.perf_counter() - started)
            return response
        if mv.decoupled:  # Triton's wording
            raise InvalidArgument(
                f"ModelInfer RPC doesn't support models with decoupled transaction policy: stream to "
                f"'{mv.name}' with ModelStreamInfer"
            )
        trace = self.tracer.start(mv.name, request.id)
        mv.enter()
        try:
            targets = self.shm.output_targets(request) if request.outputs else {}
            self.shm.resolve_inputs(request)
            decoded = decode_request(mv, request, self.max_elements)
            if trace is not None:
                trace.version = mv.version
                trace.stamp("QUEUE_START")
            if mv.sequences is not None:  # stateful: the sequence batcher keeps order, slot and state
                flags = sequence_flags(request, mv.name)
                outputs = await mv.sequences.submit(flags, decoded.inputs, decoded.batch, deadline, trace)
            else:
                outputs = await mv.batcher.submit(decoded.inputs, decoded.batch, deadline, trace)
            response = encode_response(mv, request, outputs, decoded.outputs)
            if targets:
                self.shm.write_outputs(response, targets)
        except LMaaSError as exc:
            mv.metrics.failed(exc.code.name)
            raise
        except asyncio.CancelledError:  # gRPC cancels a call whose deadline passed: count what the client sees
            now = asyncio.get_running_loop().time()
            mv.metrics.failed("DEADLINE_EXCEEDED" if expired(deadline, now) else "CANCELLED")
            raise
        except Exception:
            mv.metrics.failed("INTERNAL")
            raise
        finally:
            mv.leave()
            if trace is not None:
                trace.finish()
        mv.metrics.ok.inc()
        mv.metrics.request_duration.observe(time.perf_counter() - started)
        return response

    # ---- generative models ----

    def llm(self, name: str, version: str = "", *, key: str = "") -> LLMModel:
        """The generative version that answers (named, or routed; sticky by conversation ``key`` in a canary).

        Every ``generate()`` stream of it holds the version's in-flight count until it ends, so a rollout or an
        unload drains it rather than cutting it.
        """
        if self.draining:
            raise Unavailable("worker is shutting down")
        mv = self.manager.get(name, version, key=key)
        if not isinstance(mv, LLMVersion):
            raise InvalidArgument(f"model '{name}' is not a generative model")
        return mv

    def is_decoupled(self, request: pb.ModelInferRequest) -> bool:
        """Whether a stream request gets 0..N responses (generative or decoupled tensor model), run concurrently."""
        try:
            mv = self.manager.get(request.model_name, request.model_version)
        except (NotFound, InvalidArgument, Unavailable):  # Unavailable: a lazy version loading; infer() waits
            return False
        return isinstance(mv, LLMVersion) or mv.decoupled

    async def stream_decoupled(self, request: pb.ModelInferRequest) -> AsyncIterator[pb.ModelInferResponse]:
        """Responses of a decoupled request in Triton's shape: ``triton_final_response`` on the last one, or on
        an extra empty response when the request sets ``triton_enable_empty_final_response`` (always when 0)."""
        mv = self.manager.get(request.model_name, request.model_version)
        if isinstance(mv, LLMVersion):
            async for response in self.stream_llm(request):
                yield response
            return
        if self.draining:
            raise Unavailable("worker is shutting down")
        started = time.perf_counter()
        mv.enter()
        try:
            decoded = decode_request(mv, request, self.max_elements)
            outputs = await mv.batcher.submit(decoded.inputs, decoded.batch, None)
            counts = {name: (array.shape[0] if array.ndim else -1) for name, array in outputs.items()}
            if len(set(counts.values())) != 1 or -1 in counts.values():
                raise Internal(
                    f"decoupled model '{mv.name}' returned outputs without one leading response dim: {counts}"
                )
            n = next(iter(counts.values()))
        except LMaaSError as exc:
            mv.metrics.failed(exc.code.name)
            raise
        finally:
            mv.leave()
        mv.metrics.ok.inc()
        mv.metrics.request_duration.observe(time.perf_counter() - started)
        empty = request.parameters.get("triton_enable_empty_final_response")
        empty_final = n == 0 or bool(empty is not None and empty.bool_param)
        for i in range(n):
            response = encode_response(mv, request, {k: v[i] for k, v in outputs.items()}, decoded.outputs)
            response.parameters["triton_final_response"].bool_param = i == n - 1 and not empty_final
            yield response
        if empty_final:
            final = pb.ModelInferResponse(model_name=mv.name, model_version=str(mv.version), id=request.id)
            final.parameters["triton_final_response"].bool_param = True
            yield final

    def is_llm(self, request: pb.ModelInferRequest) -> bool:
        try:
            return isinstance(self.manager.get(request.model_name, request.model_version), LLMVersion)
        except (NotFound, InvalidArgument):
            return False

    async def stream_llm(self, request: pb.ModelInferRequest) -> AsyncIterator[pb.ModelInferResponse]:
        """A decoupled generation: one response per text chunk (``stream`` true) or one in all; then final."""
        llm = self.llm(request.model_name, request.model_version)
        req = oip.parse_request(request)
        name, version = llm.name, llm.version
        stream = llm.generate(req.prompt, req.params, req.id)
        try:
            if not req.stream:
                text, last = await _complete(stream)
                yield oip.response(
                    name, version, req, _whole(req, text), last.completion_tokens, last, not req.empty_final
                )
            else:
                async for chunk in stream:
                    if chunk.finish_reason == "error":
                        raise Internal(chunk.error or "generation failed")
                    end = chunk if chunk.finish_reason is not None else None
                    if chunk.text or end is not None:
                        yield oip.response(
                            name,
                            version,
                            req,
                            chunk.text,
                            len(chunk.token_ids),
                            end,
                            end is not None and not req.empty_final,
                        )
            if req.empty_final:
                yield oip.final_response(name, version, req)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def _infer_llm(self, mv: LLMVersion, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """Unary ModelInfer on a generative model: the whole completion in one response."""
        req = oip.parse_request(request)
        text, last = await _complete(mv.generate(req.prompt, req.params, req.id))
        return oip.response(mv.name, mv.version, req, _whole(req, text), last.completion_tokens, last, True)

    # ---- statistics ----

    def statistics(self, name: str, version: str) -> pb.ModelStatisticsResponse:
        if name:
            versions = (
                [self.manager.get(name, version)]
                if version
                else [mv for mv in self.manager.loaded() if mv.name == name]
            )
            if not versions:
                raise UnknownModel(name)
        else:
            versions = self.manager.loaded()
        return pb.ModelStatisticsResponse(model_stats=[self._stats(mv) for mv in versions])

    def _stats(self, mv: ModelVersion) -> pb.ModelStatistics:
        reg = self.manager.metrics.registry
        labels = {"model": mv.name, "version": str(mv.version)}

        def value(metric: str, **extra: str) -> float:
            return reg.get_sample_value(metric, {**labels, **extra}) or 0.0

        def duration(metric: str) -> pb.StatisticDuration:
            return pb.StatisticDuration(count=int(value(f"{metric}_count")), ns=int(value(f"{metric}_sum") * 1e9))

        failed = sum(
            s.value
            for m in self.manager.metrics.requests.collect()
            for s in m.samples
            if s.name.endswith("_total")
            and s.labels.get("model") == mv.name
            and s.labels.get("version") == str(mv.version)
            and s.labels.get("code") != "OK"
        )
        success = duration("lmaas_inference_request_duration_seconds")
        compute = duration("lmaas_inference_compute_duration_seconds")
        # Input/output conversion is not timed apart from the request; perf_analyzer wants equal counts.
        untimed = pb.StatisticDuration(count=compute.count)
        return pb.ModelStatistics(
            name=mv.name,
            version=str(mv.version),
            last_inference=mv.last_inference_ms,
            inference_count=int(value("lmaas_inferences_total")),
            execution_count=int(value("lmaas_inference_executions_total")),
            inference_stats=pb.InferStatistics(
                success=success,
                fail=pb.StatisticDuration(count=int(failed)),
                queue=duration("lmaas_inference_queue_duration_seconds"),
                compute_input=untimed,
                compute_infer=compute,
                compute_output=untimed,
            ),
        )

    # ---- the model repository ----

    def repository_index(self, ready_only: bool) -> pb.RepositoryIndexResponse:
        rows = []
        loaded_names = {n for n, _, _ in self.manager.index()}
        for name, version, state in self.manager.index():
            if ready_only and state.state != "READY":
                continue
            rows.append(
                pb.RepositoryIndexResponse.ModelIndex(
                    name=name, version=str(version), state=state.state, reason=state.reason
                )
            )
        if not ready_only:
            for name in self.manager.repository_models():
                if name not in loaded_names:
                    rows.append(
                        pb.RepositoryIndexResponse.ModelIndex(name=name, state="UNAVAILABLE", reason="not loaded")
                    )
        return pb.RepositoryIndexResponse(models=rows)

    def _check_repository_rpcs(self) -> None:
        if not self.repository_rpcs:
            raise FailedPrecondition("model control is managed by the control plane; repository RPCs are disabled")

    async def load_model(self, name: str, config_json: str | None, files: dict[str, bytes] | None = None) -> None:
        """RepositoryModelLoad: from the repository, or from ``files`` sent by the client (``file:<path>``)."""
        self._check_repository_rpcs()
        await self.manager.load_from_repository(name, config_json, files)

    async def unload_model(self, name: str) -> None:
        self._check_repository_rpcs()
        if not any(mv.name == name for mv in self.manager.loaded()):
            raise UnknownModel(name)
        await self.manager.unload(name)


async def _complete(stream: AsyncIterator[GenerationChunk]) -> tuple[str, GenerationChunk]:
    parts: list[str] = []
    try:
        async for chunk in stream:
            if chunk.finish_reason == "error":
                raise Internal(chunk.error or "generation failed")
            parts.append(chunk.text)
            if chunk.finish_reason is not None:
                return "".join(parts), chunk
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    raise Internal("the generation ended without a final chunk")


def _whole(req: oip.LLMRequest, text: str) -> str:
    """A non-streamed answer repeats the prompt unless exclude_input_in_output (the vLLM backend's default)."""
    return text if req.exclude_input else req.prompt + text
