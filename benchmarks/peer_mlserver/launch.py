"""Start MLServer 1.7.1 with the Triton extension RPC perf_analyzer needs and MLServer lacks: ModelConfig.

Runs with MLServer's own interpreter::

    benchmarks/.venvs/mlserver/bin/python benchmarks/peer_mlserver/launch.py WORKSPACE

``WORKSPACE`` holds MLServer's ``settings.json``, one folder per model with ``model-settings.json``, and
``triton/``: ``descriptors.pb`` (a FileDescriptorSet of the Triton ``inference`` protos, written by the
benchmark from LMaaS's protos) and ``<model>.json`` (each model's ``ModelConfigResponse`` as JSON).

perf_analyzer (Triton service kind) calls ``ModelConfig`` once at start (and cannot be told not to). It is
added to MLServer's own gRPC server as one extra generic handler — in the same process, on the same port —
so MLServer's inference path is untouched and pays no proxy hop. ``ModelStatistics`` stays UNIMPLEMENTED,
which perf_analyzer tolerates (it then leaves out the server-side columns).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from mlserver.cli.serve import load_settings
from mlserver.grpc import server as grpc_server
from mlserver.logging import configure_logger
from mlserver.server import MLServer
from mlserver.utils import install_uvloop_event_loop

SERVICE = "inference.GRPCInferenceService"


def _message_classes(descriptors: Path) -> dict[str, Any]:
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for fdp in fds.file:
        pool.Add(fdp)
    names = ("ModelConfigRequest", "ModelConfigResponse")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{n}")) for n in names}


class _TritonExtras(grpc.GenericRpcHandler):
    def __init__(self, extras: Path) -> None:
        self._cls = _message_classes(extras / "descriptors.pb")
        self._configs = {}
        for path in extras.glob("*.json"):
            msg = json_format.ParseDict(json.loads(path.read_text()), self._cls["ModelConfigResponse"]())
            self._configs[path.stem] = msg.SerializeToString()
        self._handlers = {
            f"/{SERVICE}/ModelConfig": grpc.unary_unary_rpc_method_handler(
                self._model_config, request_deserializer=self._cls["ModelConfigRequest"].FromString
            ),
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)

    async def _model_config(self, request: Any, context: grpc.aio.ServicerContext) -> bytes:
        config = self._configs.get(request.name)
        if config is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}'")
        return config  # already serialized: the default (identity) serializer passes bytes through


def _install(extras: Path) -> None:
    handler = _TritonExtras(extras)
    create = grpc_server.GRPCServer._create_server

    def create_with_extras(self: grpc_server.GRPCServer) -> Any:
        server = create(self)
        server.add_generic_rpc_handlers((handler,))
        return server

    grpc_server.GRPCServer._create_server = create_with_extras  # type: ignore[method-assign]


async def _main(workspace: Path) -> None:
    _install(workspace / "triton")
    settings, models = await load_settings(str(workspace))
    await MLServer(settings).start(models)


if __name__ == "__main__":
    configure_logger()  # as `mlserver start` does
    install_uvloop_event_loop()
    asyncio.run(_main(Path(sys.argv[1]).resolve()))
