"""Fleet benchmark: rollouts to N simulated workers through real control-plane replicas on a 3-member etcd.

    python -m benchmarks.fleet --workers 1000 --models 100 --replicas 2

Starts a 3-member etcd on loopback (``tests/etcd_cluster.py``), ``--replicas``
real ``lmaas control-plane`` processes on it, registers ``--models`` models of
three versions each and deploys them, then connects ``--workers`` simulated
workers (:mod:`benchmarks.fleet_sim`: light WorkerSync clients over a few
processes, round-robin over the replicas, each "loading" a new version for
``--load-time`` seconds and ACKing like a real worker). It then measures, for
``--rollouts`` rollouts of each operation (deploy, canary, rollback), the time
from the call to the rollout SUCCEEDED (every worker ACKed), and per rollout
the CPU seconds of each replica and the store operations (all replicas). A
last deploy kills one replica (SIGKILL) right after the call: its workers
reconnect to the others and the rollout must still converge. One line per
operation::

    deploy: p50 0.41 s p99 0.62 s | cpu/rollout 0.21 s (r1 0.12, r2 0.09) | store ops/rollout 2010 | peak rss ...

The kill rollout counts as converged only when every simulated worker (the
killed replica's too, reconnected) acknowledged it. Memory per worker is the
RSS growth of each replica from before the workers connected, divided by its
share of them.

Results are saved to ``benchmarks/results/fleet-<workers>w-<models>m.json``;
then a table with one row per fleet size saved with the same models (100,
300, 1,000 ...) is printed, and the growth of each figure from every smaller
fleet (the target: linear, at most 12x from 100 to 1,000).
``LMAAS_FLEET_PROFILE=<dir>`` runs each replica under cProfile (a replica that
exits normally writes ``<dir>/<replica>.prof``; the killed one does not).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
import grpc.aio

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results"
_LISTENING = re.compile(r"listening grpc=(\S+):(\d+) metrics=(\S+):(\d+)")
_STORE_OPS = re.compile(r'^lmaas_control_store_duration_seconds_count\{op="(\w+)"\} (\S+)$', re.M)
_TICK = os.sysconf("SC_CLK_TCK")


# -- simulated workers, in child processes -------------------------------------------------------------------------


async def _child(addresses: list[str], first: int, count: int, load_time: float) -> None:
    from benchmarks.fleet_sim import SimFleet

    sims = SimFleet(addresses, count, first=first, load_time=load_time)
    sims.start()
    await sims.wait_connected(300)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await sims.close()


# -- control-plane replicas ------------------------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    process: subprocess.Popen[str]
    grpc: str
    metrics: str

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / _TICK

    def rss_kib(self, key: str = "VmRSS") -> int:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except FileNotFoundError:
            pass
        return 0

    def store_ops(self) -> float:
        if self.process.poll() is not None:
            return 0.0
        try:
            with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            return 0.0
        return sum(float(v) for _, v in _STORE_OPS.findall(text))

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


def _start_replica(name: str, store_url: str, work: Path) -> Replica:
    # LMAAS_FLEET_PROFILE=<dir>: run each replica under cProfile (written at its exit) to find where the time goes
    profile = os.environ.get("LMAAS_FLEET_PROFILE")
    wrap = ["-m", "cProfile", "-o", str(Path(profile).resolve() / f"{name}.prof")] if profile else []
    argv = [
        sys.executable, *wrap, "-m", "lmaas.cli", "control-plane", "--store", store_url, "--artifact-dir",
        str(work / "artifacts"), "--grpc-port", "0", "--metrics-port", "0", "--http-port", "-1", "--no-auth",
        "--replica-id", name, "--rollout-timeout", "60s", "--log-level", "warning",
    ]
    log = (work / f"{name}.log").open("w")
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, cwd=work)
    line = _readline(process.stdout, 60)
    match = _LISTENING.search(line)
    if match is None:
        process.kill()
        raise RuntimeError(f"replica {name} did not start: {line!r} (see {work / (name + '.log')})")
    return Replica(name, process, f"{match[1]}:{match[2]}", f"{match[3]}:{match[4]}")


def _readline(stream: IO[str] | None, timeout: float) -> str:
    assert stream is not None
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return out[0] if out else ""


# -- measurements --------------------------------------------------------------------------------------------------


@dataclass
class OpResult:
    name: str
    seconds: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # replica → CPU seconds per rollout
    store_ops: float = 0.0  # per rollout, all replicas
    failures: int = 0

    def p(self, q: float) -> float:
        s = sorted(self.seconds)
        return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] if s else float("nan")

    def line(self) -> str:
        cpu_total = sum(self.cpu.values())
        per = ", ".join(f"{k} {v:.2f}" for k, v in self.cpu.items())
        fail = f" | {self.failures} FAILED" if self.failures else ""
        return (f"{self.name}: p50 {self.p(0.5):.2f} s p99 {self.p(0.99):.2f} s | n {len(self.seconds)} | "
                f"cpu/rollout {cpu_total:.2f} s ({per}) | store ops/rollout {self.store_ops:.0f}{fail}")


async def _wait_final(stub: Any, model: str, generation: int, timeout: float) -> Any:
    from lmaas.protos.lmaas.control.v1 import deployments_pb2 as dpb

    last = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                async for update in stub.WatchRollout(dpb.WatchRolloutRequest(model=model, generation=generation)):
                    last = update.rollout
            return last
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)  # the replica went away (the kill): ask again, maybe another one
    return last


async def _bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from etcd_cluster import EtcdCluster
    from lmaas.protos.lmaas.control.v1 import deployments_pb2 as dpb
    from lmaas.protos.lmaas.control.v1 import deployments_pb2_grpc, registry_pb2, registry_pb2_grpc
    from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

    cluster = EtcdCluster(3)
    replicas: list[Replica] = []
    children: list[subprocess.Popen[str]] = []
    channels: list[grpc.aio.Channel] = []
    try:
        cluster.start()
        replicas = [_start_replica(f"r{i + 1}", cluster.url, work) for i in range(args.replicas)]
        base_rss = {r.name: r.rss_kib() for r in replicas}

        def stubs_of(r: Replica) -> tuple[Any, Any]:
            channel = grpc.aio.insecure_channel(r.grpc)
            channels.append(channel)
            return registry_pb2_grpc.ModelRegistryStub(channel), deployments_pb2_grpc.DeploymentsStub(channel)

        registry, deployments = stubs_of(replicas[0])
        models = [f"model-{i:03d}" for i in range(args.models)]
        for model in models:
            for v in (1, 2, 3):
                data = f"{model} weights v{v}".encode()
                header = registry_pb2.CreateVersionHeader(
                    model=model, format="onnx", digest=hashlib.sha256(data).hexdigest(), size_bytes=len(data)
                )
                await registry.CreateVersion(iter([registry_pb2.CreateVersionRequest(header=header),
                                                   registry_pb2.CreateVersionRequest(chunk=data)]))
            await deployments.Deploy(dpb.DeployRequest(model=model, spec=pb.DeploymentSpec(stable_version=1)))

        addresses = ",".join(r.grpc for r in replicas)
        procs = args.procs or max(1, min(4, math.ceil(args.workers / 250)))
        started = time.monotonic()
        for i in range(procs):
            first, count = i * args.workers // procs, (i + 1) * args.workers // procs - i * args.workers // procs
            argv = [sys.executable, "-m", "benchmarks.fleet", "--sim-child", "--addresses", addresses,
                    "--first", str(first), "--count", str(count), "--load-time", str(args.load_time)]
            children.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                             cwd=Path(__file__).resolve().parent.parent))
        for child in children:
            if _readline(child.stdout, 300).strip() != "ready":
                raise RuntimeError("a simulated-worker process did not connect its workers")
        connect_s = time.monotonic() - started
        await asyncio.sleep(1.0)  # let the connection burst settle (presence writes, first ACKs)
        per_replica_workers = args.workers / len(replicas)
        memory = {r.name: max(0, r.rss_kib() - base_rss[r.name]) / per_replica_workers for r in replicas}
        print(f"fleet: {args.workers} workers ({procs} processes) x {args.models} models, {len(replicas)} replicas "
              f"on 3-member etcd; connected in {connect_s:.1f} s; memory/worker "
              + ", ".join(f"{k} {v:.0f} KiB" for k, v in memory.items()), flush=True)

        async def measure(name: str, call: Any, *, kill: Replica | None = None, n: int = args.rollouts) -> OpResult:
            result = OpResult(name)
            cpu0 = {r.name: r.cpu_seconds() for r in replicas}
            ops0 = {r.name: r.store_ops() for r in replicas}
            for i in range(n):
                model = models[i % len(models)]
                t0 = time.monotonic()
                reply = await call(model)
                if kill is not None:
                    kill.process.send_signal(signal.SIGKILL)
                final = await _wait_final(deployments, model, reply.deployment.generation, 120)
                result.seconds.append(time.monotonic() - t0)
                # converged means: every simulated worker (also the killed replica's, reconnected) acknowledged
                acked = sum(w.state == pb.WORKER_ROLLOUT_STATE_ACKED for w in final.workers) if final else 0
                if final is None or final.phase != pb.ROLLOUT_PHASE_SUCCEEDED or acked != args.workers:
                    result.failures += 1
                    print(f"  {name} {model}: {final.phase if final else None} {final.message if final else ''} "
                          f"({len(final.workers) if final else 0} workers)", flush=True)
            result.cpu = {r.name: (r.cpu_seconds() - cpu0[r.name]) / n for r in replicas if r.alive}
            # a killed replica's counts die with it: count the survivors (they did the rollout's work)
            result.store_ops = sum(r.store_ops() - ops0[r.name] for r in replicas if r.alive) / n
            print(result.line(), flush=True)
            return result

        def spec(stable: int, canary: int = 0, weight: int = 0) -> pb.DeploymentSpec:
            return pb.DeploymentSpec(stable_version=stable, canary_version=canary, canary_weight=weight)

        results = [
            await measure("deploy", lambda m: deployments.Deploy(dpb.DeployRequest(model=m, spec=spec(2)))),
            await measure("canary", lambda m: deployments.Deploy(dpb.DeployRequest(model=m, spec=spec(2, 3, 10)))),
            await measure("rollback", lambda m: deployments.Rollback(dpb.RollbackRequest(model=m))),
        ]
        peak = {r.name: r.rss_kib("VmHWM") for r in replicas}
        kill = None
        if len(replicas) > 1 and not args.no_kill:
            kill = await measure("deploy, replica killed", lambda m: deployments.Deploy(
                dpb.DeployRequest(model=m, spec=spec(3))), kill=replicas[-1], n=1)
        print("peak rss: " + ", ".join(f"{k} {v / 1024:.0f} MiB" for k, v in peak.items()), flush=True)
        out: dict[str, Any] = {
            "workers": args.workers, "models": args.models, "replicas": len(replicas), "connect_s": connect_s,
            "memory_kib_per_worker": memory, "peak_rss_kib": peak,
            "ops": {r.name: {**asdict(r), "p50": r.p(0.5), "p99": r.p(0.99)} for r in results},
        }
        if kill is not None:
            out["kill"] = {"seconds": kill.seconds[0], "delay_vs_deploy_p50": kill.seconds[0] - results[0].p(0.5),
                           "failures": kill.failures}
            print(f"kill: converged {kill.seconds[0]:.2f} s, {out['kill']['delay_vs_deploy_p50']:+.2f} s vs deploy "
                  f"p50", flush=True)
        return out
    finally:
        for child in children:
            with contextlib.suppress(Exception):
                assert child.stdin is not None
                child.stdin.close()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        for channel in channels:
            await channel.close()
        for r in replicas:
            if r.alive:
                r.process.send_signal(signal.SIGTERM)
        for r in replicas:
            try:
                r.process.wait(15)
            except subprocess.TimeoutExpired:
                r.process.kill()
        cluster.close()


def _table(out: dict[str, Any]) -> None:
    """One row per fleet size measured with the same models (this run and the saved ones)."""
    runs = {out["workers"]: out}
    for path in RESULTS.glob(f"fleet-*w-{out['models']}m.json"):
        with contextlib.suppress(ValueError, KeyError, OSError):
            old = json.loads(path.read_text())
            runs.setdefault(old["workers"], old)
    print(f"{'workers':>7} | {'deploy p50/p99 s':>16} | {'canary p50':>10} | {'rollback p50':>12} | "
          f"{'cpu/rollout s':>13} | {'store ops':>9} | {'KiB/worker':>10} | {'kill delay s':>12}", flush=True)
    for workers in sorted(runs):
        run = runs[workers]
        ops = run["ops"]
        deploy = ops["deploy"]
        mem = max(run["memory_kib_per_worker"].values(), default=0.0)
        kill = run.get("kill")
        killed = f"{kill['delay_vs_deploy_p50']:+.2f}" + (" FAILED" if kill["failures"] else "") if kill else "-"
        print(f"{workers:>7} | {deploy['p50']:>7.2f} / {deploy['p99']:<6.2f} | {ops['canary']['p50']:>10.2f} | "
              f"{ops['rollback']['p50']:>12.2f} | {sum(deploy['cpu'].values()):>13.2f} | "
              f"{deploy['store_ops']:>9.0f} | {mem:>10.0f} | {killed:>12}", flush=True)


def _growth(out: dict[str, Any]) -> None:
    smaller = []
    for path in RESULTS.glob(f"fleet-*w-{out['models']}m.json"):
        with contextlib.suppress(ValueError, KeyError, OSError):
            old = json.loads(path.read_text())
            if old["workers"] < out["workers"]:
                smaller.append(old)
    for old in sorted(smaller, key=lambda o: o["workers"]):
        scale = out["workers"] / old["workers"]
        parts = []
        for name, op in out["ops"].items():
            before = old["ops"].get(name)
            if not before:
                continue
            cpu_new, cpu_old = sum(op["cpu"].values()), sum(before["cpu"].values())
            ops_growth = op["store_ops"] / max(before["store_ops"], 1e-9)
            parts.append(f"{name} p50 x{op['p50'] / max(before['p50'], 1e-9):.1f} "
                         f"cpu x{cpu_new / max(cpu_old, 1e-9):.1f} store ops x{ops_growth:.1f}")
        print(f"growth {old['workers']} -> {out['workers']} workers (x{scale:g}): " + "; ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--rollouts", type=int, default=20, help="rollouts measured per operation")
    parser.add_argument("--load-time", type=float, default=0.05, help="seconds a simulated worker takes to load")
    parser.add_argument("--procs", type=int, default=0, help="simulated-worker processes (default: 1 per 250)")
    parser.add_argument("--no-kill", action="store_true", help="skip the replica-killed rollout")
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/fleet-*.json")
    parser.add_argument("--sim-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--addresses", default="", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sim_child:
        asyncio.run(_child(args.addresses.split(","), args.first, args.count, args.load_time))
        return 0
    if args.workers < 1 or args.models < 1 or args.replicas < 1 or args.rollouts < 1:
        parser.error("--workers, --models, --replicas and --rollouts must be at least 1")
    with tempfile.TemporaryDirectory(prefix="lmaas-fleet-") as tmp:
        out = asyncio.run(_bench(args, Path(tmp)))
    failures = sum(op["failures"] for op in out["ops"].values()) + out.get("kill", {}).get("failures", 0)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"fleet-{args.workers}w-{args.models}m.json").write_text(json.dumps(out, indent=2) + "\n")
        _table(out)
        _growth(out)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
