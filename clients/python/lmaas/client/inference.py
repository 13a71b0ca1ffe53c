"""Inference clients for the Open Inference Protocol v2 (``inference.GRPCInferenceService``).

:class:`InferenceClient` (blocking) and :class:`AsyncInferenceClient` (asyncio)
have the same methods. They speak to an LMaaS worker, or to any server of the
same protocol (Triton, MLServer, KServe runtimes)::

    with InferenceClient("127.0.0.1:8001") as client:
        result = client.infer("mlp", {"x": np.ones((2, 4), np.float32)})
        y = result["y"]

Inputs are numpy arrays (or anything ``numpy.asarray`` takes), sent as raw
contents; outputs come back as numpy arrays. BYTES tensors are object arrays of
``bytes``; BF16 uses ``ml_dtypes.bfloat16``. Every call retries UNAVAILABLE
with backoff (all calls here are idempotent: inference has no side effects,
load and unload converge to a state), honours ``timeout`` (seconds, for the
whole call including retries) and raises the :mod:`lmaas.protos.errors` class
of a failed status, e.g. ``NotFound`` for an unknown model and
``InvalidArgument`` for a bad shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from lmaas.client._grpc import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ChannelConfig,
    Metadata,
    RetryPolicy,
    acall,
    call,
    create_aio_channel,
    create_channel,
)
from lmaas.client._tensors import decode_output, encode
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.inference import grpc_service_pb2_grpc as pb_grpc
from lmaas.protos.inference import model_config_pb2

__all__ = ["AsyncInferenceClient", "InferResult", "InferenceClient", "ParameterValue", "infer_request"]

ParameterValue = bool | int | float | str
Array = np.ndarray[Any, Any]
_INT64_MAX = (1 << 63) - 1


def _parameter(value: ParameterValue) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value) if value <= _INT64_MAX else pb.InferParameter(uint64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=value)


def _parameter_values(params: Mapping[str, pb.InferParameter]) -> dict[str, ParameterValue]:
    out: dict[str, ParameterValue] = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(param, which)
    return out


@dataclass(frozen=True)
class InferResult:
    """The answer to one inference request: outputs by name, as numpy arrays.

    Arrays are read-only views of the response buffer; ``.copy()`` one to modify it.
    ``response`` is the protocol message itself.
    """

    model_name: str
    model_version: str
    id: str
    outputs: dict[str, Array]
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    response: pb.ModelInferResponse = field(default_factory=pb.ModelInferResponse, repr=False)

    @classmethod
    def from_response(cls, response: pb.ModelInferResponse) -> InferResult:
        raw = list(response.raw_output_contents)
        outputs = {
            tensor.name: decode_output(tensor, raw[i] if i < len(raw) else None)
            for i, tensor in enumerate(response.outputs)
        }
        return cls(response.model_name, response.model_version, response.id, outputs,
                   _parameter_values(response.parameters), response)

    def as_numpy(self, name: str) -> Array:
        """The output ``name``; KeyError naming the outputs there are when it is missing."""
        try:
            return self.outputs[name]
        except KeyError:
            raise KeyError(f"no output {name!r}; the response has {sorted(self.outputs)}") from None

    __getitem__ = as_numpy


def infer_request(model: str, inputs: Mapping[str, Any], *, version: str | int = "",
                  outputs: Sequence[str] | None = None, request_id: str = "",
                  parameters: Mapping[str, ParameterValue] | None = None) -> pb.ModelInferRequest:
    """The ``ModelInferRequest`` that :meth:`InferenceClient.infer` sends (raw contents, inputs in order)."""
    request = pb.ModelInferRequest(model_name=model, model_version=str(version), id=request_id)
    for name, value in inputs.items():
        tensor, raw = encode(name, value)
        request.inputs.append(tensor)
        request.raw_input_contents.append(raw)
    for name in outputs or ():
        request.outputs.add(name=name)
    for key, value in (parameters or {}).items():
        request.parameters[key].CopyFrom(_parameter(value))
    return request


def _load_request(name: str, config: str | Mapping[str, Any] | None) -> pb.RepositoryModelLoadRequest:
    request = pb.RepositoryModelLoadRequest(model_name=name)
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        request.parameters["config"].string_param = text
    return request


class _Base:
    def __init__(self, url: str = "127.0.0.1:8001", *, tls: bool = False, root_certificates: bytes | None = None,
                 private_key: bytes | None = None, certificate_chain: bytes | None = None,
                 server_name: str | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 timeout: float | None = None, retry: RetryPolicy | None = None, metadata: Metadata = (),
                 api_key: str | None = None) -> None:
        self.channel_config = ChannelConfig(url, tls=tls, root_certificates=root_certificates, private_key=private_key,
                                    certificate_chain=certificate_chain, server_name=server_name,
                                    max_message_bytes=max_message_bytes)
        self.default_timeout = timeout
        self.retry_policy = RetryPolicy() if retry is None else retry
        auth = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.default_metadata: tuple[tuple[str, str], ...] = (*auth, *metadata)
        self._channel = self._create_channel(self.channel_config)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    @staticmethod
    def _create_channel(config: ChannelConfig) -> Any:  # each flavour names its channel factory
        raise NotImplementedError

    def _timeout(self, timeout: float | None) -> float | None:
        return self.default_timeout if timeout is None else timeout

    def _metadata(self, extra: Metadata) -> tuple[tuple[str, str], ...]:
        return (*self.default_metadata, *extra)


class InferenceClient(_Base):
    """Blocking client of one inference endpoint (``host:port``).

    ``timeout`` is the default deadline of every call in seconds (None: no
    deadline; each method also takes its own). ``retry`` governs retries of
    UNAVAILABLE (``RetryPolicy.none()`` disables them). ``metadata`` is sent
    with every call; ``api_key`` adds ``authorization: Bearer KEY`` (a worker
    started with ``--require-api-key``). TLS: ``tls=True`` with system roots,
    or PEM ``root_certificates`` (and ``private_key`` + ``certificate_chain``
    for mutual TLS). Use as a context manager or call :meth:`close`.
    """

    _create_channel = staticmethod(create_channel)

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None, metadata: Metadata = ()) -> Any:
        return call(method, request, timeout=self._timeout(timeout), policy=self.retry_policy,
                    metadata=self._metadata(metadata))

    def live(self, *, timeout: float | None = None) -> bool:
        """Whether the server process is up."""
        response: pb.ServerLiveResponse = self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout)
        return bool(response.live)

    def ready(self, *, timeout: float | None = None) -> bool:
        """Whether the server accepts inference."""
        response: pb.ServerReadyResponse = self._call(self._stub.ServerReady, pb.ServerReadyRequest(), timeout)
        return bool(response.ready)

    def model_ready(self, name: str, version: str | int = "", *, timeout: float | None = None) -> bool:
        """Whether a model (version) is loaded and ready; False for a model the server does not know."""
        request = pb.ModelReadyRequest(name=name, version=str(version))
        response: pb.ModelReadyResponse = self._call(self._stub.ModelReady, request, timeout)
        return bool(response.ready)

    def server_metadata(self, *, timeout: float | None = None) -> pb.ServerMetadataResponse:
        """Server name, version and protocol extensions."""
        response: pb.ServerMetadataResponse = self._call(self._stub.ServerMetadata, pb.ServerMetadataRequest(),
                                                         timeout)
        return response

    def metadata(self, name: str, version: str | int = "", *, timeout: float | None = None
                 ) -> pb.ModelMetadataResponse:
        """A model's versions, platform, inputs and outputs."""
        request = pb.ModelMetadataRequest(name=name, version=str(version))
        response: pb.ModelMetadataResponse = self._call(self._stub.ModelMetadata, request, timeout)
        return response

    def config(self, name: str, version: str | int = "", *, timeout: float | None = None
               ) -> model_config_pb2.ModelConfig:
        """A model's configuration (Triton's ``ModelConfig`` message)."""
        request = pb.ModelConfigRequest(name=name, version=str(version))
        response: pb.ModelConfigResponse = self._call(self._stub.ModelConfig, request, timeout)
        return response.config

    def infer(self, model: str, inputs: Mapping[str, Any], *, version: str | int = "",
              outputs: Sequence[str] | None = None, timeout: float | None = None, request_id: str = "",
              parameters: Mapping[str, ParameterValue] | None = None, metadata: Metadata = ()) -> InferResult:
        """Run ``model`` on ``inputs`` (name → array); ``outputs`` picks outputs by name (default: all)."""
        request = infer_request(model, inputs, version=version, outputs=outputs, request_id=request_id,
                                parameters=parameters)
        response: pb.ModelInferResponse = self._call(self._stub.ModelInfer, request, timeout, metadata)
        return InferResult.from_response(response)

    def statistics(self, name: str = "", version: str | int = "", *, timeout: float | None = None
                   ) -> pb.ModelStatisticsResponse:
        """Inference statistics of one model (version), or of all models when ``name`` is empty."""
        request = pb.ModelStatisticsRequest(name=name, version=str(version))
        response: pb.ModelStatisticsResponse = self._call(self._stub.ModelStatistics, request, timeout)
        return response

    def repository_index(self, *, ready: bool = False, timeout: float | None = None
                         ) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        """The models of the server's repository and their states (only ready ones if ``ready``)."""
        request = pb.RepositoryIndexRequest(ready=ready)
        response: pb.RepositoryIndexResponse = self._call(self._stub.RepositoryIndex, request, timeout)
        return list(response.models)

    def load(self, name: str, config: str | Mapping[str, Any] | None = None, *,
             timeout: float | None = None) -> None:
        """Load (or reload) a model from the repository; ``config`` overrides its configuration (JSON)."""
        self._call(self._stub.RepositoryModelLoad, _load_request(name, config), timeout)

    def unload(self, name: str, *, timeout: float | None = None) -> None:
        """Unload every version of a model."""
        self._call(self._stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name=name), timeout)


class AsyncInferenceClient(_Base):
    """The asyncio twin of :class:`InferenceClient` (same arguments, awaitable methods).

    Create it inside the event loop that uses it; ``async with`` or ``await close()``.
    """

    _create_channel = staticmethod(create_aio_channel)

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: Any, request: Any, timeout: float | None, metadata: Metadata = ()) -> Any:
        return await acall(method, request, timeout=self._timeout(timeout), policy=self.retry_policy,
                           metadata=self._metadata(metadata))

    async def live(self, *, timeout: float | None = None) -> bool:
        """Whether the server process is up."""
        response: pb.ServerLiveResponse = await self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout)
        return bool(response.live)

    async def ready(self, *, timeout: float | None = None) -> bool:
        """Whether the server accepts inference."""
        response: pb.ServerReadyResponse = await self._call(self._stub.ServerReady, pb.ServerReadyRequest(),
                                                            timeout)
        return bool(response.ready)

    async def model_ready(self, name: str, version: str | int = "", *, timeout: float | None = None) -> bool:
        """Whether a model (version) is loaded and ready; False for a model the server does not know."""
        request = pb.ModelReadyRequest(name=name, version=str(version))
        response: pb.ModelReadyResponse = await self._call(self._stub.ModelReady, request, timeout)
        return bool(response.ready)

    async def server_metadata(self, *, timeout: float | None = None) -> pb.ServerMetadataResponse:
        """Server name, version and protocol extensions."""
        response: pb.ServerMetadataResponse = await self._call(self._stub.ServerMetadata,
                                                               pb.ServerMetadataRequest(), timeout)
        return response

    async def metadata(self, name: str, version: str | int = "", *, timeout: float | None = None
                       ) -> pb.ModelMetadataResponse:
        """A model's versions, platform, inputs and outputs."""
        request = pb.ModelMetadataRequest(name=name, version=str(version))
        response: pb.ModelMetadataResponse = await self._call(self._stub.ModelMetadata, request, timeout)
        return response

    async def config(self, name: str, version: str | int = "", *, timeout: float | None = None
                     ) -> model_config_pb2.ModelConfig:
        """A model's configuration (Triton's ``ModelConfig`` message)."""
        request = pb.ModelConfigRequest(name=name, version=str(version))
        response: pb.ModelConfigResponse = await self._call(self._stub.ModelConfig, request, timeout)
        return response.config

    async def infer(self, model: str, inputs: Mapping[str, Any], *, version: str | int = "",
                    outputs: Sequence[str] | None = None, timeout: float | None = None, request_id: str = "",
                    parameters: Mapping[str, ParameterValue] | None = None, metadata: Metadata = ()
                    ) -> InferResult:
        """Run ``model`` on ``inputs`` (name → array); ``outputs`` picks outputs by name (default: all)."""
        request = infer_request(model, inputs, version=version, outputs=outputs, request_id=request_id,
                                parameters=parameters)
        response: pb.ModelInferResponse = await self._call(self._stub.ModelInfer, request, timeout, metadata)
        return InferResult.from_response(response)

    async def statistics(self, name: str = "", version: str | int = "", *, timeout: float | None = None
                         ) -> pb.ModelStatisticsResponse:
        """Inference statistics of one model (version), or of all models when ``name`` is empty."""
        request = pb.ModelStatisticsRequest(name=name, version=str(version))
        response: pb.ModelStatisticsResponse = await self._call(self._stub.ModelStatistics, request, timeout)
        return response

    async def repository_index(self, *, ready: bool = False, timeout: float | None = None
                               ) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        """The models of the server's repository and their states (only ready ones if ``ready``)."""
        request = pb.RepositoryIndexRequest(ready=ready)
        response: pb.RepositoryIndexResponse = await self._call(self._stub.RepositoryIndex, request, timeout)
        return list(response.models)

    async def load(self, name: str, config: str | Mapping[str, Any] | None = None, *,
                   timeout: float | None = None) -> None:
        """Load (or reload) a model from the repository; ``config`` overrides its configuration (JSON)."""
        await self._call(self._stub.RepositoryModelLoad, _load_request(name, config), timeout)

    async def unload(self, name: str, *, timeout: float | None = None) -> None:
        """Unload every version of a model."""
        await self._call(self._stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name=name),
                         timeout)
