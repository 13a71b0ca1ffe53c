"""HTTP on one LMaaS worker: perf_analyzer (binary tensors) beside gRPC, and JSON REST beside MLServer 1.7.1.

Part 1 (perf_analyzer): one worker serves the benchmark models (``benchmarks/models.py``); for each model
and concurrency level, perf_analyzer measures gRPC and then HTTP back to back with the same real input data,
and the table shows infer/s, p50/p99 and the HTTP/gRPC throughput ratio (issue target: >= 0.8).

Part 2 (JSON REST): perf_analyzer's HTTP client always sends Triton's binary tensor extension, which
MLServer 1.7.1 does not read, so this part drives both REST ports with ``wrk`` and
``benchmarks/wrk_post_json.lua``: the same OIP v2 JSON infer request (batch 1, ``data`` as a flat JSON
list) POSTed to ``/v2/models/<model>/infer`` on the LMaaS worker's HTTP port and on MLServer's, back to back
for each model and concurrency (wrk connections), in the same run. Both servers' JSON answers are checked
against in-process ONNX Runtime first. The table shows infer/s, p50/p99 and the LMaaS/MLServer throughput
ratio (issue target: >= 3). Needs ``wrk`` (Debian/Ubuntu: ``apt-get install -y wrk``) and builds MLServer's
venv as ``benchmarks/run.py`` does (PyPI, first run only)::

    python -m benchmarks.http                      # both parts: mlp, cnn at c=1,4,16, 2 s windows
    python -m benchmarks.http --models mlp --concurrency 1,4 --window-ms 1000 --json out.json
    python -m benchmarks.http --skip-perf-analyzer --window-ms 3000   # JSON REST vs MLServer only

Each point also shows the server's CPU per inference (its process tree's CPU time over the run, from
``benchmarks/cpumeter.py``, divided by the requests served) and the host's CPU used by other programs
(``foreign``): on a shared machine throughput swings with the neighbours' load, CPU per inference much less.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.cpumeter import CpuMeter
from benchmarks.models import MODELS, ModelSpec, build_repository, example_batch, write_perf_analyzer_data
from benchmarks.perf_analyzer import PerfAnalyzerError, run_perf_analyzer
from benchmarks.servers import MLSERVER_VERSION, free_port, lmaas_worker, mlserver_peer

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
PROTOCOLS = ("grpc", "http")
REST_SERVERS = ("lmaas", "mlserver")
WRK_SCRIPT = HERE / "wrk_post_json.lua"
WRK_MISSING = "wrk not found on PATH; install it (Debian/Ubuntu: apt-get install -y wrk) or pass --skip-rest"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.http", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default="mlp,cnn", help="comma-separated, from benchmarks/models.py")
    p.add_argument("--concurrency", default="1,4,16", help="perf_analyzer concurrency levels")
    p.add_argument("--window-ms", type=int, default=2000, help="perf_analyzer measurement window")
    p.add_argument("--repo", type=Path, default=HERE / ".cache" / "model-repository")
    p.add_argument("--out", type=Path, default=HERE / "results", help="logs and input data go under here")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON to this file")
    p.add_argument("--worker-arg", action="append", default=[], metavar="ARG", help="extra `lmaas worker` argument")
    p.add_argument("--skip-perf-analyzer", action="store_true", help="skip part 1 (perf_analyzer HTTP vs gRPC)")
    p.add_argument("--skip-rest", action="store_true", help="skip part 2 (JSON REST, LMaaS vs MLServer)")
    p.add_argument("--mlserver-venv", type=Path, default=HERE / ".venvs" / "mlserver")
    p.add_argument("--wrk", default="wrk", help="wrk executable")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    return args


def with_cpu(result: dict[str, Any], meter: dict[str, Any]) -> dict[str, Any]:
    """Add the server's CPU µs per inference (its cores over the run / infer/s) and the host's foreign load."""
    cores, rate = meter.get("server_cores"), result.get("throughput")
    if cores is not None and rate:
        result["cpu_us"] = round(cores / rate * 1e6, 1)
    result["foreign"] = meter.get("foreign")
    return result


def measure(
    url: str, protocol: str, model: str, concurrency: int, data: Path, window_ms: int, pid: int | None = None
) -> dict[str, Any]:
    meter = CpuMeter(pid)
    meter.start()
    try:
        r = run_perf_analyzer(
            url,
            model,
            concurrency=concurrency,
            measurement_ms=window_ms,
            extra=["-i", protocol, "--input-data", str(data)],
            timeout=max(60, 15 * window_ms / 1000 + 30),
        )
    except PerfAnalyzerError as exc:
        return {"error": str(exc).splitlines()[0]}
    return with_cpu({k: r[k] for k in ("throughput", "p50_us", "p99_us")}, meter.stop())


def table(rows: list[dict[str, Any]], sides: tuple[str, str], heads: tuple[str, str], ratio: str) -> str:
    """One row per (model, concurrency): each side's infer/s, p50/p99 and server CPU µs per inference, the row's
    ``ratio`` (throughput) and the CPU ratio (first side's CPU per inference over the second's), the host's
    foreign load (the larger of the two sides')."""
    first, second = heads
    lines = [
        f"| model | c | {first} infer/s | {first} p50 / p99 ms | {first} CPU µs/inf | {second} infer/s"
        f" | {second} p50 / p99 ms | {second} CPU µs/inf | {ratio} | CPU {first}/{second} | foreign |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row["model"], str(row["concurrency"])]
        for side in sides:
            r = row[side]
            if "error" in r:
                cells += ["error", r["error"][:40], "-"]
            else:
                cpu = r.get("cpu_us")
                cells += [
                    f"{r['throughput']:,.0f}",
                    f"{r['p50_us'] / 1000:.2f} / {r['p99_us'] / 1000:.2f}",
                    "-" if cpu is None else f"{cpu:,.0f}",
                ]
        value = row.get("ratio")
        cells.append("-" if value is None else f"{value:.2f}")
        a, b = (row[side].get("cpu_us") for side in sides)
        cells.append(f"{a / b:.2f}" if a and b else "-")
        foreign = [row[side]["foreign"] for side in sides if row[side].get("foreign") is not None]
        cells.append(f"{max(foreign):.0%}" if foreign else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def perf_analyzer_part(args: argparse.Namespace) -> list[dict[str, Any]]:
    data = {m: write_perf_analyzer_data(MODELS[m], args.out / "input-data" / f"{m}.json") for m in args.models}
    http_port = free_port()
    rows: list[dict[str, Any]] = []
    extra = ["--http-port", str(http_port), *args.worker_arg]
    with lmaas_worker(args.repo, args.out / "logs" / "lmaas-http.log", extra_args=extra) as server:
        urls = {"grpc": server.url, "http": f"127.0.0.1:{http_port}"}
        for model in args.models:
            for c in args.concurrency:
                row: dict[str, Any] = {"model": model, "concurrency": c}
                for proto in PROTOCOLS:
                    row[proto] = measure(urls[proto], proto, model, c, data[model], args.window_ms, server.process.pid)
                    _progress(model, c, f"{proto:4}", row[proto])
                _set_ratio(row, "http", "grpc")
                rows.append(row)
    return rows


def _progress(model: str, c: int, name: str, r: dict[str, Any]) -> None:
    """One measured point on stderr as it comes."""
    shown = r.get("error") or (
        f"{r['throughput']:9,.0f} infer/s  p50 {r['p50_us'] / 1000:6.2f} ms  p99 {r['p99_us'] / 1000:6.2f} ms"
    )
    print(f"  {model:6} c={c:<3} {name} {shown}", file=sys.stderr, flush=True)


def _set_ratio(row: dict[str, Any], top: str, bottom: str) -> None:
    """``row["ratio"]`` = throughput of ``top`` / ``bottom`` when both were measured."""
    a, b = row[top], row[bottom]
    if "throughput" in a and "throughput" in b and b["throughput"]:
        row["ratio"] = round(a["throughput"] / b["throughput"], 3)


# ------------------------------------------------------------------------------ part 2: JSON REST vs MLServer
def json_request(spec: ModelSpec, x: np.ndarray) -> dict[str, Any]:
    """The OIP v2 JSON infer request both servers get: flat ``data`` list, the output asked for by name."""
    return {
        "inputs": [
            {"name": spec.input_name, "shape": list(x.shape), "datatype": spec.datatype, "data": x.reshape(-1).tolist()}
        ],
        "outputs": [{"name": spec.output_name}],
    }


def verify_json(name: str, base: str, spec: ModelSpec, body: bytes, expected: np.ndarray) -> None:
    """POST the benchmark body once; the JSON answer must match in-process ONNX Runtime."""
    r = httpx.post(
        f"{base}/v2/models/{spec.name}/infer", content=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    if r.status_code != 200:
        raise AssertionError(f"{name}/{spec.name}: HTTP {r.status_code}: {r.text[:300]}")
    outs = {o["name"]: o for o in r.json()["outputs"]}
    out = outs.get(spec.output_name)
    if out is None:
        raise AssertionError(f"{name}/{spec.name}: no output {spec.output_name!r} in {list(outs)}")
    got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise AssertionError(f"{name}/{spec.name}: answer differs from in-process ORT: {got} vs {expected}")


def run_wrk(
    wrk: str, base: str, model: str, body_file: Path, concurrency: int, window_ms: int, pid: int | None = None
) -> dict[str, Any]:
    """One wrk run (``concurrency`` keep-alive connections, closed loop); infer/s and p50/p99 from its summary,
    and the CPU per inference of the server process tree ``pid``."""
    threads = min(concurrency, 2)
    seconds = max(1, round(window_ms / 1000))
    command = [
        wrk,
        "-c",
        str(concurrency),
        "-t",
        str(threads),
        "-d",
        f"{seconds}s",
        "--timeout",
        "30s",
        "-s",
        str(WRK_SCRIPT),
        base,
        "--",
        f"/v2/models/{model}/infer",
        str(body_file),
    ]
    meter = CpuMeter(pid)
    meter.start()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        return {"error": "wrk timed out"}
    cpu = meter.stop()
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        return {"error": f"wrk rc={done.returncode}: {(done.stderr or done.stdout).strip()[:200]}"}
    r = json.loads(line.removeprefix("WRK_JSON "))
    failed = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
    if failed or not r["requests"]:
        # a non-2xx answer or a dropped connection would make a fast-failing server look fast
        return {"error": f"{failed} failed of {r['requests']} requests: {r}"}
    result = {
        "throughput": r["requests"] / (r["duration_us"] / 1e6),
        "p50_us": float(r["p50_us"]),
        "p99_us": float(r["p99_us"]),
    }
    return with_cpu(result, cpu)


@contextlib.contextmanager
def _rest_servers(args: argparse.Namespace) -> Iterator[dict[str, tuple[str, int]]]:
    """Both servers up at once (the idle one costs ~nothing), so each point is measured back to back;
    name -> (base URL, pid of its process tree)."""
    from benchmarks.inprocess import worker_session_options

    lmaas_http = free_port()
    with contextlib.ExitStack() as stack:
        extra = ["--http-port", str(lmaas_http), *args.worker_arg]
        lmaas = stack.enter_context(lmaas_worker(args.repo, args.out / "logs" / "lmaas-rest.log", extra_args=extra))
        mlserver = stack.enter_context(
            mlserver_peer(
                args.mlserver_venv,
                args.out / "mlserver-workspace-http",
                args.repo,
                args.models,
                args.out / "logs" / "mlserver-rest.log",
                intra_op_threads=worker_session_options()[0].intra_op_num_threads,
            )
        )
        settings = json.loads((args.out / "mlserver-workspace-http" / "settings.json").read_text())
        yield {
            "lmaas": (f"http://127.0.0.1:{lmaas_http}", lmaas.process.pid),
            "mlserver": (f"http://127.0.0.1:{settings['http_port']}", mlserver.process.pid),
        }


def rest_part(args: argparse.Namespace, facts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    import onnxruntime as ort

    from benchmarks.inprocess import worker_session_options

    wrk = shutil.which(args.wrk)
    if wrk is None:
        raise SystemExit(WRK_MISSING)
    bodies: dict[str, Path] = {}
    expected: dict[str, np.ndarray] = {}
    opts, _ = worker_session_options()
    for m in args.models:
        spec = MODELS[m]
        x = example_batch(spec, 1, seed=99)
        sess = ort.InferenceSession(facts[m]["path"], sess_options=opts, providers=["CPUExecutionProvider"])
        expected[m] = sess.run(None, {spec.input_name: x})[0]
        del sess
        bodies[m] = args.out / "input-data" / f"{m}-infer.json"
        bodies[m].parent.mkdir(parents=True, exist_ok=True)
        bodies[m].write_text(json.dumps(json_request(spec, x)))
    rows: list[dict[str, Any]] = []
    print(f"JSON REST: LMaaS vs MLServer {MLSERVER_VERSION} with wrk ({wrk})", file=sys.stderr, flush=True)
    with _rest_servers(args) as servers:
        for m in args.models:
            for name in REST_SERVERS:
                verify_json(name, servers[name][0], MODELS[m], bodies[m].read_bytes(), expected[m])
        print("  both servers answer the JSON request like in-process ORT", file=sys.stderr, flush=True)
        for m in args.models:
            for c in args.concurrency:
                row: dict[str, Any] = {"model": m, "concurrency": c}
                for name in REST_SERVERS:
                    base, pid = servers[name]
                    row[name] = run_wrk(wrk, base, m, bodies[m], c, args.window_ms, pid)
                    _progress(m, c, f"{name:8}", row[name])
                _set_ratio(row, "lmaas", "mlserver")
                rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.skip_rest and shutil.which(args.wrk) is None:
        raise SystemExit(WRK_MISSING)  # before minutes of building
    facts = build_repository(args.repo, args.models)
    rows: list[dict[str, Any]] = []
    if not args.skip_perf_analyzer:
        rows = perf_analyzer_part(args)
        print(table(rows, PROTOCOLS, ("gRPC", "HTTP"), "HTTP/gRPC"))
    rest_rows: list[dict[str, Any]] = []
    if not args.skip_rest:
        rest_rows = rest_part(args, facts)
        if rows:
            print()
        print(table(rest_rows, REST_SERVERS, ("LMaaS", "MLServer"), "LMaaS/MLServer"))
    if args.json is not None:
        args.json.write_text(json.dumps({"perf_analyzer": rows, "json_rest": rest_rows}, indent=2))
    failed = any("error" in row[p] for row in rows for p in PROTOCOLS)
    return 1 if failed or any("error" in row[n] for row in rest_rows for n in REST_SERVERS) else 0


if __name__ == "__main__":
    raise SystemExit(main())
