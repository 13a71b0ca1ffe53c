"""The LMaaS Python SDK.

Inference (Open Inference Protocol v2, any compatible server)::

    from lmaas.client import InferenceClient
    with InferenceClient("127.0.0.1:8001") as client:
        y = client.infer("mlp", {"x": x})["y"]

Streaming generation (an LLM version, over gRPC ``ModelStreamInfer``)::

    from lmaas.client import LLMClient
    with LLMClient("127.0.0.1:8001") as client:
        for text in client.generate("smollm2", "Hello", max_tokens=32):
            print(text, end="", flush=True)

Control plane (models, versions, deployments)::

    from lmaas.client import ControlPlaneClient
    with ControlPlaneClient("127.0.0.1:8090") as cp:
        v = cp.push("mlp", "model.onnx")
        cp.deploy("mlp", v.version)
        cp.wait_rollout("mlp")

Failed calls raise the classes of :mod:`lmaas.protos.errors` (re-exported
here as ``LMaaSError``, ``NotFound``, ...), the same ones the servers raise.
"""

from __future__ import annotations

from lmaas.client._grpc import ChannelConfig, RetryPolicy
from lmaas.client.control import ControlPlaneClient
from lmaas.client.inference import AsyncInferenceClient, InferenceClient, InferResult
from lmaas.client.llm import AsyncLLMClient, LLMClient, TextChunk
from lmaas.protos.errors import (
    Aborted,
    AlreadyExists,
    ArtifactNotFound,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LMaaSError,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

__all__ = [
    "Aborted",
    "AlreadyExists",
    "ArtifactNotFound",
    "AsyncInferenceClient",
    "AsyncLLMClient",
    "ChannelConfig",
    "ControlPlaneClient",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InferResult",
    "InferenceClient",
    "Internal",
    "InvalidArgument",
    "LLMClient",
    "LMaaSError",
    "ModelNotFound",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "TextChunk",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
]
