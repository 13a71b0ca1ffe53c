"""The stub-generation commands of clients/README.md, run as written.

Each shell block after a ``<!-- check: NAME requires=TOOL,... -->`` marker runs in a scratch folder that
links ``protos/`` and ``clients/``; a block whose tools are not installed is skipped (protoc and its
plugins are not project dependencies). The Python stubs are then used against a real worker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lmaas.client import InferenceClient
from processes import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "clients" / "README.md"
CHECK = re.compile(r"<!-- check: (?P<name>\S+) requires=(?P<tools>\S+) -->\s*```sh\n(?P<script>.*?)```", re.S)
# Tools come from the venv, then clients/node's npm packages (buf, proto-loader-gen-types), then PATH.
NODE_BIN = ROOT / "clients" / "node" / "node_modules" / ".bin"
SEARCH_PATH = os.pathsep.join([str(Path(sys.executable).parent), str(NODE_BIN), os.environ.get("PATH", "")])

EXPECTED = {
    "buf-managed": ["gen/go/inference/grpc_service_grpc.pb.go", "gen/go/lmaas/control/v1/registry_grpc.pb.go",
                    "gen/java/com/example/lmaas/inference/ModelInferRequest.java",
                    "gen/cpp/inference/grpc_service.grpc.pb.h", "gen/cpp/lmaas/control/v1/registry.pb.h"],
    "go-protoc": ["gen/go/inference/grpc_service_grpc.pb.go", "gen/go/inference/model_config.pb.go",
                  "gen/go/lmaas/control/v1/registry_grpc.pb.go", "gen/go/lmaas/worker/v1/sync_grpc.pb.go"],
    "cpp-protoc": ["gen/cpp/inference/grpc_service.grpc.pb.h", "gen/cpp/inference/grpc_service.pb.cc",
                   "gen/cpp/lmaas/control/v1/registry.grpc.pb.h"],
    "java-protoc": ["gen/java/inference/GrpcService.java", "gen/java/lmaas/control/v1/Registry.java"],
    "python-protoc": ["gen/python/inference/grpc_service_pb2_grpc.py", "gen/python/inference/model_config_pb2.py"],
    "node-types": ["gen/ts/inference/GRPCInferenceService.ts", "gen/ts/grpc_service.ts"],
}
# What a generated file must contain (package / namespace choices the README promises).
CONTAINS = {
    "buf-managed": {
        "gen/go/lmaas/control/v1/registry.pb.go": "package controlv1",
        "gen/java/com/example/lmaas/inference/ModelInferRequest.java": "package com.example.lmaas.inference;",
    },
    "go-protoc": {"gen/go/lmaas/control/v1/registry.pb.go": "package controlv1",
                  "gen/go/lmaas/worker/v1/sync.pb.go": "package workerv1",
                  "gen/go/inference/grpc_service.pb.go": "package inference"},
    "cpp-protoc": {"gen/cpp/lmaas/control/v1/registry.grpc.pb.h": "namespace control"},
}


def _blocks() -> dict[str, tuple[list[str], str]]:
    return {m["name"]: (m["tools"].split(","), m["script"]) for m in CHECK.finditer(README.read_text())}


def test_every_documented_block_is_checked() -> None:
    assert set(_blocks()) == set(EXPECTED)


def _generate(name: str, tmp: Path) -> Path:
    tools, script = _blocks()[name]
    missing = [t for t in tools if shutil.which(t, path=SEARCH_PATH) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    (tmp / "protos").symlink_to(ROOT / "protos")
    (tmp / "clients").symlink_to(ROOT / "clients")
    env = {**os.environ, "PATH": SEARCH_PATH}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rel in EXPECTED[name]:
        assert (tmp / rel).is_file(), f"{rel} was not generated"
    for rel, text in CONTAINS.get(name, {}).items():
        assert text in (tmp / rel).read_text(), f"{rel} lacks {text!r}"
    return tmp


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_generation_commands(name: str, tmp_path: Path) -> None:
    _generate(name, tmp_path)


_CALL_WORKER = """
import json, sys
import grpc, numpy as np
from inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc as pb_grpc
x = np.array(json.loads(sys.argv[2]), dtype=np.float32)
with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    request = pb.ModelInferRequest(model_name="mlp", model_version="1", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    response = stub.ModelInfer(request, timeout=30)
y = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(list(response.outputs[0].shape))
print(json.dumps(y.tolist()))
"""


def test_generated_python_stubs_call_a_worker(worker: ServerProcess, tmp_path: Path) -> None:
    """Plain generated stubs (no lmaas package, default descriptor pool) are enough to run inference."""
    gen = _generate("python-protoc", tmp_path) / "gen" / "python"
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    env = {**os.environ, "PYTHONPATH": str(gen)}
    proc = subprocess.run([sys.executable, "-c", _CALL_WORKER, worker.grpc, json.dumps(x.tolist())], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with InferenceClient(worker.grpc) as client:
        expected = client.infer("mlp", {"x": x}, version=1)["y"]
    np.testing.assert_array_equal(np.array(json.loads(proc.stdout), dtype=np.float32), expected)
