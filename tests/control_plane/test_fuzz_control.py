"""Random control-plane calls against a real control-plane process: every answer is a proper status, the process
survives, memory stays bounded. Covers names, versions, weights, configs, upload headers and chunks, deploy and
rollback arguments, token calls, worker hellos and credentials (see ``tests/fuzz_control.py``).

CI runs a few hundred cases; ``python benchmarks/fuzz_control.py --cases 10000`` runs more and reports figures.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cp_harness import ADMIN_TOKEN, start_control_plane, write_scale_onnx
from fuzz_control import ACCEPTABLE, Call, Target, calls, perform, seed
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from lmaas.client.control import ControlPlaneClient
from processes import ServerProcess


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.fixture()
def plane(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = start_control_plane(tmp_path, "--log-level", "error")
    yield proc
    proc.stop()


def make_target(plane: ServerProcess, channel: grpc.Channel) -> Target:
    """Seeded models and tokens of every role; the admin one is not the bootstrap token, which the fuzzer may
    well revoke."""
    tokens = {}
    with ControlPlaneClient(plane.grpc, token=ADMIN_TOKEN) as client:
        seed(client)
        for role in ("admin", "deployer", "reader", "worker"):
            tokens[role] = client.create_token(role, description=f"fuzz {role}").secret
    return Target(channel, tokens)


def test_fuzzed_control_plane_calls_get_proper_statuses(plane: ServerProcess, tmp_path: Path) -> None:
    channel = grpc.insecure_channel(plane.grpc, options=[("grpc.max_send_message_length", 16 << 20)])
    target = make_target(plane, channel)
    seen: collections.Counter[str] = collections.Counter()
    by_method: collections.Counter[str] = collections.Counter()

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(calls())
    def check(call: Call) -> None:
        code = perform(target, call)
        assert code in ACCEPTABLE, f"{code} for {call!r}"
        seen[code] += 1
        if code == "OK":
            by_method[call.method] += 1

    check()
    rss_before = rss_kib(plane.proc.pid)
    check()  # the same cases again: memory must not grow with repetition
    rss_after = rss_kib(plane.proc.pid)
    assert plane.proc.poll() is None, "the control plane died"
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert seen["INVALID_ARGUMENT"] > 50 and seen["OK"] > 50, seen  # both paths exercised
    assert by_method["ModelRegistry.CreateVersion"] and by_method["Deployments.Deploy"], by_method
    assert seen["PERMISSION_DENIED"] and seen["UNAUTHENTICATED"], seen
    assert rss_after - rss_before < 64 * 1024, f"RSS grew {rss_after - rss_before} KiB over a repeated run"
    # and it still does its job
    with ControlPlaneClient(plane.grpc, token=target.tokens["admin"]) as client:
        version = client.push("after-fuzz", write_scale_onnx(tmp_path / "m.onnx", 2.0))
        client.deploy("after-fuzz", version.version)
        assert client.get_deployment("after-fuzz").deployment.spec.stable_version == version.version
    channel.close()
