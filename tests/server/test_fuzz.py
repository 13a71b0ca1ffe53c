"""Random ModelInfer requests: every answer is a proper status, the process survives, memory stays bounded.

CI runs a few hundred cases; ``python benchmarks/fuzz.py`` runs 10,000+ and reports figures.
"""

from __future__ import annotations

import grpc
from fuzz_requests import infer_requests
from hypothesis import HealthCheck, given, settings
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.inference import grpc_service_pb2_grpc as pb_grpc
from processes import ServerProcess

# What a malformed request may get; INTERNAL or UNKNOWN would mean a crash path.
ACCEPTABLE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_fuzzed_requests_get_proper_statuses(worker: ServerProcess) -> None:
    channel = grpc.insecure_channel(worker.grpc)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    seen: dict[str, int] = {}

    @settings(max_examples=400, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(infer_requests())
    def check(request: pb.ModelInferRequest) -> None:
        try:
            stub.ModelInfer(request, timeout=10)
            seen["OK"] = seen.get("OK", 0) + 1
        except grpc.RpcError as exc:
            assert exc.code() in ACCEPTABLE, f"{exc.code()}: {exc.details()} for {request}"
            seen[exc.code().name] = seen.get(exc.code().name, 0) + 1

    check()
    rss_before = rss_kib(worker.proc.pid)
    check()  # same cases again: memory must not grow with repetition
    rss_after = rss_kib(worker.proc.pid)
    assert worker.proc.poll() is None, "the worker died"
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    print(f"\nfuzzed ModelInfer statuses: {seen}; worker RSS {rss_before} -> {rss_after} KiB")
    assert seen.get("INVALID_ARGUMENT", 0) > 50 and seen.get("OK", 0) > 10, seen  # both paths exercised
    assert rss_after - rss_before < 64 * 1024, f"RSS grew {rss_after - rss_before} KiB over a repeated run"
    channel.close()
