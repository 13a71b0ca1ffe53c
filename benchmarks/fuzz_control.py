"""Fuzz a fresh control plane with 10,000+ random control-plane calls and report the figures.

    python benchmarks/fuzz_control.py [--cases 10000] [--store etcd://127.0.0.1:2379]

The calls (``tests/fuzz_control.py``) cover every RPC of every control-plane service with fuzzed names,
versions, weights, configs, upload streams, deploy/rollback arguments, token calls, worker hellos and
credentials, against a control-plane process (auth on, SQLite store by default) seeded with a few models.
Prints status counts, successes per method, failures (answers outside ``fuzz_control.ACCEPTABLE``), whether
the control plane survived, and its RSS at the start, after each quarter and at the end.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "control_plane")]

import grpc  # noqa: E402
from cp_harness import ADMIN_TOKEN, start_control_plane  # noqa: E402
from fuzz_control import ACCEPTABLE, Call, Target, calls, perform, seed  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from lmaas.client.control import ControlPlaneClient  # noqa: E402


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--store", default=None, help="metadata store URL (default: SQLite in a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plane = start_control_plane(Path(tmp), "--log-level", "error", store=args.store)
        channel = grpc.insecure_channel(plane.grpc, options=[("grpc.max_send_message_length", 16 << 20)])
        tokens = {}
        with ControlPlaneClient(plane.grpc, token=ADMIN_TOKEN) as client:
            seed(client)
            for role in ("admin", "deployer", "reader", "worker"):
                tokens[role] = client.create_token(role, description=f"fuzz {role}").secret
        target = Target(channel, tokens)
        counts: collections.Counter[str] = collections.Counter()
        ok_by_method: collections.Counter[str] = collections.Counter()
        bad: list[str] = []
        rss = [("start", rss_mib(plane.proc.pid))]
        started = time.monotonic()

        @settings(max_examples=args.cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(calls())
        def run(call: Call) -> None:
            code = perform(target, call)
            counts[code] += 1
            if code == "OK":
                ok_by_method[call.method] += 1
            elif code not in ACCEPTABLE:
                bad.append(f"{code}: {call!r}")
            total = sum(counts.values())
            if total % max(1, args.cases // 4) == 0:
                rss.append((f"{total} cases", rss_mib(plane.proc.pid)))

        run()
        elapsed = time.monotonic() - started
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        alive = plane.proc.poll() is None and health.status == health_pb2.HealthCheckResponse.SERVING
        rss.append(("end", rss_mib(plane.proc.pid)))
        channel.close()
        plane.stop()
    total = sum(counts.values())
    print(f"cases: {total} in {elapsed:.0f} s ({total / elapsed:.0f}/s); control plane alive: {alive}")
    print("statuses: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    print("OK per method: " + ", ".join(f"{k} {v}" for k, v in sorted(ok_by_method.items())))
    print("RSS (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in rss))
    print(f"improper answers: {len(bad)}")
    for line in bad[:20]:
        print("  " + line)
    return 0 if alive and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
