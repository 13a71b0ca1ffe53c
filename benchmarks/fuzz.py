"""Fuzz a fresh worker with 10,000+ random ModelInfer requests and report the figures.

    python benchmarks/fuzz.py [--cases 10000]

Prints status counts, failures (answers other than OK / INVALID_ARGUMENT / NOT_FOUND / RESOURCE_EXHAUSTED),
whether the worker survived, and its RSS at the start, after each quarter and at the end.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import grpc  # noqa: E402
from fuzz_requests import infer_requests  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from lmaas.protos.inference import grpc_service_pb2 as pb  # noqa: E402
from lmaas.protos.inference import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from models import build_repository  # noqa: E402
from processes import start_worker  # noqa: E402

ACCEPTABLE = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"}


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        worker = start_worker(build_repository(Path(tmp)))
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(worker.grpc))
        counts: collections.Counter[str] = collections.Counter()
        bad: list[str] = []
        rss = [("start", rss_mib(worker.proc.pid))]
        started = time.monotonic()

        @settings(max_examples=args.cases, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(infer_requests())
        def run(request: pb.ModelInferRequest) -> None:
            try:
                stub.ModelInfer(request, timeout=10)
                counts["OK"] += 1
            except grpc.RpcError as exc:
                counts[exc.code().name] += 1
                if exc.code().name not in ACCEPTABLE:
                    bad.append(f"{exc.code().name}: {exc.details()}")
            total = sum(counts.values())
            if total % max(1, args.cases // 4) == 0:
                rss.append((f"{total} cases", rss_mib(worker.proc.pid)))

        run()
        elapsed = time.monotonic() - started
        alive = worker.proc.poll() is None and stub.ServerLive(pb.ServerLiveRequest()).live
        rss.append(("end", rss_mib(worker.proc.pid)))
        worker.stop()
    print(f"cases: {sum(counts.values())} in {elapsed:.0f} s; worker alive: {alive}")
    print("statuses: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    print("RSS (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in rss))
    print(f"improper answers: {len(bad)}")
    for line in bad[:20]:
        print("  " + line)
    return 0 if alive and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
