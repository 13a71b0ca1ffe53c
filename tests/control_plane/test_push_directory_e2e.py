"""Directory versions end to end with real processes: ``lmaas control-plane``, ``lmaas worker``, the ``lmaas`` CLI
and tritonclient. A directory version that cannot load is NACKed after its files arrived verified, and the
version before it keeps serving."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from cp_harness import lmaas, start_control_plane, write_scale_onnx
from lmaas.client.control import ControlPlaneClient
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from lmaas.protos.manifests import scan_directory
from processes import ServerProcess, start_worker, wait_for_workers

X = np.arange(8, dtype=np.float32).reshape(2, 4)


def scale(address: str) -> float:
    with tc.InferenceServerClient(address) as client:
        x = tc.InferInput("x", list(X.shape), "FP32")
        x.set_data_from_numpy(X)
        y = client.infer("scale", [x]).as_numpy("y")
    return float(y[0, 1] / X[0, 1])


@pytest.fixture()
def processes(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    control = start_control_plane(tmp_path)
    try:
        w = start_worker(None, "--control-plane", control.grpc, "--worker-id", "w1",
                         "--cache-dir", str(tmp_path / "cache"), "--drain-timeout", "2")
        try:
            wait_for_workers(control.grpc)
            yield control, w
        finally:
            w.stop()
    finally:
        control.stop()


def test_unloadable_directory_version_is_nacked_and_the_previous_version_serves(
    processes: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    control, w = processes
    onnx = write_scale_onnx(tmp_path / "v1" / "model.onnx", 1.0)
    assert lmaas("model", "push", "scale", str(onnx), "-q", address=control.grpc).stdout.strip() == "1"
    lmaas("deploy", "scale", "1", "--wait", address=control.grpc)
    assert scale(w.grpc) == 1.0

    broken = tmp_path / "broken"  # LLM-shaped, but no tokenizer.json and weights that are noise
    (broken / "weights").mkdir(parents=True)
    (broken / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    (broken / "weights" / "model.safetensors").write_bytes(os.urandom(100_000))
    assert lmaas("model", "push", "scale", str(broken), "-q", address=control.grpc).stdout.strip() == "2"
    failed = lmaas("deploy", "scale", "2", "--wait", address=control.grpc, check=False)
    assert failed.returncode == 1, failed.stderr
    with ControlPlaneClient(control.grpc) as client:
        got = client.get_deployment("scale")
        assert got.rollout.phase == pb.ROLLOUT_PHASE_FAILED and got.deployment.spec.stable_version == 1
        assert "version 2" in got.rollout.message, got.rollout.message
        print(f"\nNACK of the broken directory version: {got.rollout.message}")
    assert scale(w.grpc) == 1.0  # the previous version never stopped serving
    # the files arrived and were verified: the worker holds the whole directory under the manifest's digest
    digest = scan_directory(broken)[0].digest
    materialised = tmp_path / "cache" / "dirs" / digest[:2] / digest
    assert scan_directory(materialised)[0].digest == digest
