"""Measured memory end to end: a real worker with ``--memory-limit 300MiB`` under a real control plane.

``GET /api/v1/workers`` shows the capacity given, the RSS, and the memory a deployed ~64 MiB model took, which
must be within 25 % of the worker process's RSS change around the deploy (read from /proc by this test).
``lmaas status`` prints the same figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from cp_harness import ADMIN_TOKEN, lmaas, start_control_plane
from lmaas.client.control import ControlPlaneClient
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from onnx import TensorProto, helper, numpy_helper
from processes import start_worker

MIB = 1 << 20


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024


def write_matmul(path: Path, n: int = 4096) -> Path:
    """y = x @ W with an n-by-n FP32 weight (64 MiB at 4096)."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32), "W")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "big", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def workers(http: str) -> list[dict[str, object]]:
    answer = httpx.get(f"http://{http}/api/v1/workers", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                       timeout=10)
    assert answer.status_code == 200, answer.text
    listed: list[dict[str, object]] = answer.json()["workers"]
    return listed


def wait_for(check, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while (found := check()) is None:
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
    return found


@pytest.mark.timeout(300)
def test_worker_reports_capacity_used_and_measured_model_memory(tmp_path: Path) -> None:
    control = start_control_plane(tmp_path)
    worker = start_worker(None, "--control-plane", control.grpc, "--worker-id", "w-mem", "--memory-limit", "300MiB",
                          "--cache-dir", str(tmp_path / "cache"), "--token", ADMIN_TOKEN, "--report-every", "0.5")
    try:
        first = wait_for(lambda: next((w for w in workers(control.http) if w["memory_capacity_bytes"]), None))
        assert first["memory_capacity_bytes"] == 300 * MIB  # exactly the --memory-limit given
        assert isinstance(first["memory_used_bytes"], int) and first["memory_used_bytes"] > 10 * MIB
        model = write_matmul(tmp_path / "big.onnx")
        with ControlPlaneClient(control.grpc, token=ADMIN_TOKEN) as client:
            client.push("big", model)
            before = rss(worker.proc.pid)
            reply = client.deploy("big", 1)
            rollout = client.wait_rollout("big", reply.deployment.generation, timeout=120)
            assert rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED, rollout
            after = rss(worker.proc.pid)
        listed = wait_for(lambda: next((w for w in workers(control.http)
                                        if any(h["memory_bytes"] for h in w["held"])), None))  # type: ignore[attr-defined]
        held = next(h for h in listed["held"] if h["model"] == "big")  # type: ignore[attr-defined]
        change = after - before
        print(f"RSS change {change / MIB:.1f} MiB, measured {held['memory_bytes'] / MIB:.1f} MiB, "
              f"peak {held['memory_peak_bytes'] / MIB:.1f} MiB")
        assert change > 48 * MIB  # the 64 MiB weight is resident
        assert abs(held["memory_bytes"] - change) <= 0.25 * change
        assert held["memory_peak_bytes"] >= held["memory_bytes"]
        assert listed["memory_used_bytes"] > held["memory_bytes"]

        status = lmaas("status", address=control.grpc, env={"LMAAS_TOKEN": ADMIN_TOKEN}).stdout
        assert "300.0 MiB" in status and "big v1" in status, status
    finally:
        worker.stop()
        control.stop()


def test_worker_refuses_a_bad_memory_limit(tmp_path: Path) -> None:
    proc = lmaas("worker", "--control-plane", "127.0.0.1:1", "--memory-limit", "lots", address="127.0.0.1:1",
                 check=False)
    assert proc.returncode == 2  # click's usage error
    assert "--memory-limit" in proc.stderr and "not a size" in proc.stderr
