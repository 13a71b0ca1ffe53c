"""Thin gRPC servicers: convert, call the :class:`DataPlane`, convert back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from lmaas.protos.errors import LMaaSError, Unimplemented
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.inference import grpc_service_pb2_grpc as pb_grpc
from lmaas.server.dataplane import DataPlane
from lmaas.server.logsettings import LogValue, log_settings
from lmaas.server.uploads import FILE_PREFIX, check_parameters

__all__ = ["InferenceServicer"]

log = logging.getLogger("lmaas.worker")

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


_NO_CUDA = "CUDA shared memory is not supported: this worker has no GPU backend (use system shared memory)"


def _deadline(context: Ctx) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


def _stream_error(
    request: pb.ModelInferRequest, message: str, code: grpc.StatusCode = grpc.StatusCode.INTERNAL
) -> pb.ModelStreamInferResponse:
    """An error for one request of a stream: ``error_message`` (the stream stays open), with its id and final flag.

    Triton's in-band error is a message only; the status name rides in the parameter ``error_code`` so a
    client (our SDK) raises the right class.
    """
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)
    response.parameters["triton_final_response"].bool_param = True
    response.parameters["error_code"].string_param = code.name
    return pb.ModelStreamInferResponse(error_message=message, infer_response=response)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Ctx) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dp.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Ctx) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dp.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Ctx) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.dp.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Ctx) -> pb.ServerMetadataResponse:
        return self.dp.server_metadata()

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Ctx) -> pb.ModelMetadataResponse:
        return self.dp.model_metadata(request.name, request.version)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Ctx) -> pb.ModelConfigResponse:
        return self.dp.model_config(request.name, request.version)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Ctx) -> pb.ModelInferResponse:
        return await self.dp.infer(request, _deadline(context))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Ctx
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Tensor requests run in order, one response each; generative ones run concurrently (Triton decoupled).

        Responses of several generations interleave on the stream, matched by ``id``. An error is an
        ``error_message`` and the stream stays open. The call ends once the client half-closed and every
        generation finished; a cancelled call (``stop_stream(cancel_requests=True)``) cancels them all, and the
        engine frees their sequences at its next step.
        """
        deadline = _deadline(context)
        out: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        generations: set[asyncio.Task[None]] = set()

        async def generate(request: pb.ModelInferRequest) -> None:
            try:
                async for response in self.dp.stream_decoupled(request):
                    out.put_nowait(pb.ModelStreamInferResponse(infer_response=response))
            except LMaaSError as exc:
                out.put_nowait(_stream_error(request, exc.message, exc.code))
            except Exception as exc:  # a bug must not leave the client waiting for a final response
                log.exception("generation failed model=%s", request.model_name)
                out.put_nowait(_stream_error(request, f"internal error: {exc}"))

        async def read() -> None:
            try:
                async for request in request_iterator:
                    if self.dp.is_decoupled(request):
                        task = asyncio.create_task(generate(request))
                        generations.add(task)
                        task.add_done_callback(generations.discard)
                        continue
                    try:
                        response = await self.dp.infer(request, deadline)
                    except LMaaSError as exc:
                        out.put_nowait(_stream_error(request, exc.message, exc.code))
                        continue
                    out.put_nowait(pb.ModelStreamInferResponse(infer_response=response))
                while generations:
                    await asyncio.wait(list(generations))
            finally:
                out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await out.get()) is not None:
                yield item
            await reader  # surfaces a failure of the request iterator itself
        finally:
            reader.cancel()
            for task in list(generations):
                task.cancel()

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Ctx) -> pb.ModelStatisticsResponse:
        return self.dp.statistics(request.name, request.version)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Ctx) -> pb.RepositoryIndexResponse:
        return self.dp.repository_index(request.ready)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Ctx
    ) -> pb.RepositoryModelLoadResponse:
        params = request.parameters
        check_parameters(list(params))
        config = params["config"].string_param if "config" in params else None
        files = {k: v.bytes_param for k, v in params.items() if k.startswith(FILE_PREFIX)}
        await self.dp.load_model(request.model_name, config, files)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Ctx
    ) -> pb.RepositoryModelUnloadResponse:
        await self.dp.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # ---- system shared memory (Triton extension); CUDA shared memory needs a GPU backend ----

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Ctx
    ) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for r in self.dp.shm.status(request.name):
            response.regions[r.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size
                )
            )
        return response

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Ctx
    ) -> pb.SystemSharedMemoryRegisterResponse:
        await asyncio.to_thread(self.dp.shm.register, request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Ctx
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.dp.shm.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request: Any, context: Ctx) -> Any:
        raise Unimplemented(_NO_CUDA)

    async def CudaSharedMemoryRegister(self, request: Any, context: Ctx) -> Any:
        raise Unimplemented(_NO_CUDA)

    async def CudaSharedMemoryUnregister(self, request: Any, context: Ctx) -> Any:
        raise Unimplemented(_NO_CUDA)

    # ---- logging and tracing (Triton extensions) ----

    async def LogSettings(self, request: pb.LogSettingsRequest, context: Ctx) -> pb.LogSettingsResponse:
        updates: dict[str, LogValue] = {}
        for key, value in request.settings.items():
            which = value.WhichOneof("parameter_choice")
            if which is not None:
                updates[key] = getattr(value, which)
        response = pb.LogSettingsResponse()
        for key, current in log_settings(updates).items():
            entry = response.settings[key]
            if isinstance(current, bool):
                entry.bool_param = current
            elif isinstance(current, int):
                entry.uint32_param = current
            else:
                entry.string_param = current
        return response

    async def TraceSetting(self, request: pb.TraceSettingRequest, context: Ctx) -> pb.TraceSettingResponse:
        updates = {key: list(value.value) for key, value in request.settings.items()}
        response = pb.TraceSettingResponse()
        for key, values in self.dp.tracer.settings(updates, request.model_name).items():
            response.settings[key].value.extend(values)
        return response
