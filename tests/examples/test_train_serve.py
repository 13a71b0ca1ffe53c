"""``clients/examples/train_serve.py`` end to end: a real control plane (SQLite) and a real worker, the example
run as a user would run it, and every check it reports passed — the Node.js one included.

Node.js and PyTorch are required: without ``node``, ``clients/node/node_modules`` (``npm ci`` there) or torch the
test is skipped, except under ``CI=true``, where ``.ci/install.sh`` installs them and their absence is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cp_harness import start_control_plane
from lmaas.client import ControlPlaneClient
from processes import ServerProcess, start_worker

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "clients" / "examples" / "train_serve.py"
NODE_MODULES = REPO / "clients" / "node" / "node_modules"
IN_CI = os.environ.get("CI", "").lower() == "true"
# Every check the example makes; all must pass (none skipped).
CHECKS = {
    "local accuracy",
    "deploy ONNX",
    "ONNX answered",
    "ONNX accuracy",
    "ONNX matches the local model",
    "deploy TorchScript",
    "TorchScript answered",
    "TorchScript accuracy",
    "TorchScript matches the local model",
    "Node answered",
    "Node matches Python",
    "rollback",
}

def _require(condition: bool, why: str) -> None:
    if not condition:
        if IN_CI:
            pytest.fail(f"{why} (CI=true)")
        pytest.skip(why)


@dataclass
class Cluster:
    control: ServerProcess
    worker: ServerProcess


@pytest.fixture()
def node() -> str:
    """The node binary, once everything the example needs is there (checked before any server starts)."""
    _require(importlib.util.find_spec("torch") is not None, "the example needs PyTorch (pip install 'lmaas[torch]')")
    node = shutil.which("node")
    _require(node is not None, "Node.js is not installed")
    _require((NODE_MODULES / "@grpc" / "grpc-js").is_dir(), "run `npm ci` in clients/node first")
    assert node is not None
    return node


@pytest.fixture()
def cluster(node: str, tmp_path: Path) -> Iterator[Cluster]:
    control = start_control_plane(tmp_path)
    worker: ServerProcess | None = None
    try:
        worker = start_worker(None, "--control-plane", control.grpc, "--worker-id", "example-w1",
                              "--cache-dir", str(tmp_path / "cache"))
        with ControlPlaneClient(control.grpc) as client:
            deadline = time.monotonic() + 30
            while not client.workers():
                assert time.monotonic() < deadline, "the worker did not connect:\n" + worker.output()
                time.sleep(0.05)
        yield Cluster(control, worker)
    finally:
        if worker is not None:
            worker.stop()
        control.stop()


@pytest.mark.timeout(600)
def test_train_save_serve(node: str, cluster: Cluster, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LMAAS_CONTROL_PLANE": cluster.control.grpc}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--require-node", "--node", node, "--report", str(report_path),
         "--workdir", str(tmp_path / "models")],
        capture_output=True, text=True, env=env, timeout=540, cwd=tmp_path,
    )
    output = f"{proc.stdout}\n{proc.stderr}\n--- worker ---\n{cluster.worker.output()}"
    print(proc.stdout)
    assert proc.returncode == 0, output
    report = json.loads(report_path.read_text())
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    assert statuses == dict.fromkeys(CHECKS, "passed"), output
    assert report["ok"] is True
    versions = report["figures"]["versions"]
    assert versions["torchscript"] == versions["onnx"] + 1
    assert min(report["figures"][k] for k in ("local_accuracy", "onnx_accuracy", "torchscript_accuracy")) > 0.9
    assert "summary: 12 passed, 0 failed, 0 skipped" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "models").rglob("*") if p.is_file()) == [
        "config.yaml", "model.onnx", "model.pt"
    ]

    # The example left the deployment on the ONNX version (its last step is a rollback) and the worker serves it.
    with ControlPlaneClient(cluster.control.grpc) as client:
        deployment = client.get_deployment("train-serve-mlp").deployment
        assert deployment.spec.stable_version == versions["onnx"]
        formats = {v.version: v.format for v in client.list_versions("train-serve-mlp")}
    assert formats == {versions["onnx"]: "onnx", versions["torchscript"]: "torchscript"}
