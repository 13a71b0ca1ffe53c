"""The control-plane process and the CLI as users run them: real subprocesses, real ports."""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from cp_harness import lmaas, start_control_plane, write_scale_onnx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from lmaas.cli._demo import DEMO_ONNX
from processes import ServerProcess


@pytest.fixture()
def control_plane(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = start_control_plane(tmp_path)
    yield proc
    proc.stop()


def test_demo_model_is_2x_plus_1() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    (y,) = ort.InferenceSession(DEMO_ONNX).run(None, {"x": x})
    np.testing.assert_array_equal(y, 2 * x + 1)


def test_health_reflection_metrics_and_sigterm(control_plane: ServerProcess) -> None:
    with grpc.insecure_channel(control_plane.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "lmaas.control.v1.Deployments", "lmaas.worker.v1.WorkerSync"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert {"lmaas.control.v1.ModelRegistry", "lmaas.control.v1.Deployments", "lmaas.control.v1.Workers",
                "lmaas.worker.v1.WorkerSync", "lmaas.worker.v1.Artifacts", "grpc.health.v1.Health"} <= names
    text = urllib.request.urlopen(control_plane.metrics_url, timeout=5).read().decode()
    assert "lmaas_control_connected_workers 0.0" in text
    assert "lmaas_control_store_duration_seconds_bucket" in text
    assert control_plane.stop(signal.SIGTERM) == 0


def test_cli_push_list_versions_deploy_rollback_status(control_plane: ServerProcess, tmp_path: Path) -> None:
    address = control_plane.grpc
    v1 = write_scale_onnx(tmp_path / "one" / "model.onnx", 1.0)
    v2 = write_scale_onnx(tmp_path / "two" / "model.onnx", 2.0)
    config = tmp_path / "config.yaml"
    config.write_text("max_batch_size: 8\n")
    assert lmaas("model", "push", "scale", str(v1), "-q", address=address).stdout.strip() == "1"
    pushed = lmaas("model", "push", "scale", str(v2), "--config", str(config), "-q", address=address)
    assert pushed.stdout.strip() == "2"
    again = lmaas("model", "push", "scale", str(v2), "--config", str(config), "-q", address=address)
    assert again.stdout.strip() == "2" and "already" in again.stderr  # idempotent
    assert "scale" in lmaas("model", "list", address=address).stdout
    versions = lmaas("model", "versions", "scale", address=address).stdout
    assert "onnx" in versions and "2" in versions
    deployed = lmaas("deploy", "scale", "1", "--wait", address=address)
    assert "succeeded" in deployed.stderr
    lmaas("deploy", "scale", "1", "--canary", "2", "--weight", "30", address=address)
    assert "canary 30%" in lmaas("model", "versions", "scale", address=address).stdout
    back = lmaas("rollback", "scale", "--wait", address=address)
    assert "serves v1" in back.stderr
    status = lmaas("status", address=address).stdout
    assert "scale" in status and "Workers" in status


def test_a_worker_flips_then_acks_so_a_succeeded_rollout_already_serves(
    control_plane: ServerProcess, tmp_path: Path
) -> None:
    """The worker switches its routes before it sends the Ack (server/sync.py): once `deploy --wait` reports
    success, every request that names no version gets the new version — no retry, no wait."""
    from lmaas.client import InferenceClient
    from processes import start_worker, wait_for_workers

    address = control_plane.grpc
    for factor in (1.0, 2.0, 3.0):
        path = write_scale_onnx(tmp_path / str(factor) / "model.onnx", factor)
        lmaas("model", "push", "scale", str(path), "-q", address=address)
    worker = start_worker(None, "--control-plane", address, "--worker-id", "w-flip", "--cache-dir",
                          str(tmp_path / "cache"), "--no-autotune")
    try:
        wait_for_workers(address)
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        with InferenceClient(worker.grpc) as client:
            for version, factor in ((1, 1.0), (2, 2.0), (3, 3.0), (1, 1.0)):
                assert "succeeded" in lmaas("deploy", "scale", str(version), "--wait", address=address).stderr
                np.testing.assert_array_equal(client.infer("scale", {"x": x})["y"], factor * x)
    finally:
        worker.stop()


def test_cli_errors_are_one_line_and_exit_1(control_plane: ServerProcess, tmp_path: Path) -> None:
    address = control_plane.grpc
    missing = lmaas("deploy", "nope", "1", address=address, check=False)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr and "Traceback" not in missing.stderr
    model = write_scale_onnx(tmp_path / "model.onnx", 1.0)
    lmaas("model", "push", "m", str(model), "-q", address=address)
    no_history = lmaas("rollback", "m", address=address, check=False)
    assert no_history.returncode == 1 and "FAILED_PRECONDITION" in no_history.stderr
    bad_config = tmp_path / "bad.json"
    bad_config.write_text(json.dumps({"max_batch_size": "many"}))
    rejected = lmaas("model", "push", "m", str(model), "--config", str(bad_config), address=address, check=False)
    assert rejected.returncode == 1 and "INVALID_ARGUMENT" in rejected.stderr
    unreachable = lmaas("model", "list", "--timeout", "1", address="127.0.0.1:1", check=False)
    assert unreachable.returncode == 1 and "UNAVAILABLE" in unreachable.stderr


def test_every_flag_has_an_env_var() -> None:
    from lmaas.cli import main

    for name, command in main.commands.items():
        commands = getattr(command, "commands", {name: command})
        for sub in commands.values():
            for param in sub.params:
                if param.param_type_name == "option" and param.name not in ("help",):
                    assert isinstance(param.envvar, str) and param.envvar.startswith("LMAAS_"), (sub.name, param.name)
                    assert getattr(param, "show_envvar", False), (sub.name, param.name)


def test_up_runs_everything_and_stops_cleanly(tmp_path: Path) -> None:
    from lmaas.client import InferenceClient
    from processes import running_up

    ports = ["--control-plane-port", "--control-plane-metrics-port", "--worker-port", "--worker-metrics-port",
             "--control-plane-http-port", "--worker-http-port"]
    with running_up(["--state-dir", str(tmp_path / "up"), *(a for p in ports for a in (p, "0"))]) as up:
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        with InferenceClient(up.fields["worker"]) as client:
            np.testing.assert_array_equal(client.infer("demo", {"x": x})["y"], 2 * x + 1)
        # auth is on: up made its own admin token (and the worker's), readable by the owner only
        admin, worker = tmp_path / "up" / "admin.token", tmp_path / "up" / "worker.token"
        assert admin.stat().st_mode & 0o777 == 0o600 and worker.stat().st_mode & 0o777 == 0o600
        token = admin.read_text().strip()
        assert "demo" in lmaas("status", address=up.fields["control-plane"], env={"LMAAS_TOKEN": token}).stdout
        assert any("export LMAAS_TOKEN=$(cat" in line for line in up.lines)
        denied = lmaas("status", address=up.fields["control-plane"], env={"LMAAS_TOKEN": ""}, check=False)
        assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
        tokens = lmaas("token", "list", address=up.fields["control-plane"], env={"LMAAS_TOKEN": token}).stdout
        assert "lmaas up worker" in tokens and "bootstrap" in tokens
