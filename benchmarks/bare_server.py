"""The reference the LMaaS worker is measured against: a bare ``grpc.aio`` OIP server, ONNX Runtime inline.

    python -m benchmarks.bare_server REPO mlp,cnn [--port 0]     # prints "bare listening grpc=HOST:PORT"

It answers what perf_analyzer needs (ServerLive/Ready/Metadata, ModelReady, ModelMetadata, ModelConfig) and ModelInfer
with ``raw_input_contents`` only: no validation, batching, metrics, auth or executor; ``session.run`` on the
event loop with the worker's default session options. Whatever LMaaS spends beyond this is its own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import numpy as np
import onnxruntime as ort
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.inference import grpc_service_pb2_grpc as pb_grpc
from lmaas.protos.inference import model_config_pb2 as mc

from benchmarks.inprocess import worker_session_options

__all__ = ["BareServicer", "main"]

_TYPES = {"tensor(float)": ("FP32", np.float32), "tensor(int64)": ("INT64", np.int64)}
MAX_BATCH = 64


class _Model:
    def __init__(self, name: str, path: Path) -> None:
        opts, _ = worker_session_options()
        self.name = name
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.inputs = [(a.name, *_TYPES[a.type], list(a.shape)) for a in self.session.get_inputs()]
        self.outputs = [(a.name, *_TYPES[a.type], list(a.shape)) for a in self.session.get_outputs()]
        self.output_names = [o[0] for o in self.outputs]


def _dims(shape: list[Any]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


class BareServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, models: dict[str, _Model]) -> None:
        self.models = models

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="bare", version="1")

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.name in self.models)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        m = self.models[request.name]
        tm = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=m.name,
            versions=["1"],
            platform="onnxruntime_onnx",
            inputs=[tm(name=n, datatype=t, shape=_dims(s)) for n, t, _, s in m.inputs],
            outputs=[tm(name=n, datatype=t, shape=_dims(s)) for n, t, _, s in m.outputs],
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        m = self.models[request.name]
        cfg = mc.ModelConfig(name=m.name, platform="onnxruntime_onnx", max_batch_size=MAX_BATCH)
        for n, t, _, s in m.inputs:
            cfg.input.add(name=n, data_type=getattr(mc, f"TYPE_{t}"), dims=_dims(s)[1:])
        for n, t, _, s in m.outputs:
            cfg.output.add(name=n, data_type=getattr(mc, f"TYPE_{t}"), dims=_dims(s)[1:])
        return pb.ModelConfigResponse(config=cfg)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        m = self.models[request.model_name]
        feed = {
            t.name: np.frombuffer(raw, dtype=m.inputs[i][2]).reshape(tuple(t.shape))
            for i, (t, raw) in enumerate(zip(request.inputs, request.raw_input_contents, strict=True))
        }
        results = m.session.run(m.output_names, feed)  # inline: the event loop waits, as a bare server would
        response = pb.ModelInferResponse(model_name=m.name, model_version="1", id=request.id)
        for (name, datatype, _, _), array in zip(m.outputs, results, strict=True):
            response.outputs.add(name=name, datatype=datatype, shape=array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response


async def serve(repo: Path, names: list[str], host: str, port: int) -> None:
    models = {n: _Model(n, repo / n / "1" / "model.onnx") for n in names}
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(BareServicer(models), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"bare listening grpc={host}:{bound}", flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bare_server", description=__doc__)
    p.add_argument("repo", type=Path, help="model repository: REPO/<model>/1/model.onnx")
    p.add_argument("models", help="comma-separated model names")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    asyncio.run(serve(args.repo, [m for m in args.models.split(",") if m], args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
