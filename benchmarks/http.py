"""HTTP beside gRPC on one LMaaS worker: ``perf_analyzer -i http`` (binary tensors) and ``-i grpc``.

One worker serves the benchmark models (``benchmarks/models.py``); for each model and concurrency level,
perf_analyzer measures gRPC and then HTTP back to back with the same real input data, and the table shows
infer/s, p50/p99 and the HTTP/gRPC throughput ratio (issue target: >= 0.8)::

    python -m benchmarks.http                      # mlp, cnn at c=1,4,16, 2 s windows
    python -m benchmarks.http --models mlp --concurrency 1,4 --window-ms 1000 --json out.json

MLServer's REST is not measured here: perf_analyzer's HTTP client always sends Triton's binary tensor
extension, which MLServer 1.7.1 does not read, so a JSON load generator would be needed for that comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.models import MODELS, build_repository, write_perf_analyzer_data
from benchmarks.perf_analyzer import PerfAnalyzerError, run_perf_analyzer
from benchmarks.servers import free_port, lmaas_worker

HERE = Path(__file__).resolve().parent
PROTOCOLS = ("grpc", "http")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.http", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mlp,cnn", help="comma-separated, from benchmarks/models.py")
    p.add_argument("--concurrency", default="1,4,16", help="perf_analyzer concurrency levels")
    p.add_argument("--window-ms", type=int, default=2000, help="perf_analyzer measurement window")
    p.add_argument("--repo", type=Path, default=HERE / ".cache" / "model-repository")
    p.add_argument("--out", type=Path, default=HERE / "results", help="logs and input data go under here")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON to this file")
    p.add_argument("--worker-arg", action="append", default=[], metavar="ARG", help="extra `lmaas worker` argument")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    return args


def measure(url: str, protocol: str, model: str, concurrency: int, data: Path, window_ms: int) -> dict[str, Any]:
    try:
        r = run_perf_analyzer(
            url, model, concurrency=concurrency, measurement_ms=window_ms,
            extra=["-i", protocol, "--input-data", str(data)], timeout=max(60, 15 * window_ms / 1000 + 30),
        )
    except PerfAnalyzerError as exc:
        return {"error": str(exc).splitlines()[0]}
    return {k: r[k] for k in ("throughput", "p50_us", "p99_us")}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | c | gRPC infer/s | gRPC p50 / p99 ms | HTTP infer/s | HTTP p50 / p99 ms | HTTP/gRPC |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row["model"], str(row["concurrency"])]
        for proto in PROTOCOLS:
            r = row[proto]
            if "error" in r:
                cells += ["error", r["error"][:40]]
            else:
                cells += [f"{r['throughput']:,.0f}", f"{r['p50_us'] / 1000:.2f} / {r['p99_us'] / 1000:.2f}"]
        ratio = row.get("ratio")
        cells.append("-" if ratio is None else f"{ratio:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    build_repository(args.repo, args.models)
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
                    row[proto] = measure(urls[proto], proto, model, c, data[model], args.window_ms)
                    r = row[proto]
                    shown = r.get("error") or (f"{r['throughput']:9,.0f} infer/s  p50 {r['p50_us'] / 1000:6.2f} ms"
                                               f"  p99 {r['p99_us'] / 1000:6.2f} ms")
                    print(f"  {model:6} c={c:<3} {proto:4} {shown}", file=sys.stderr, flush=True)
                g, h = row["grpc"], row["http"]
                if "throughput" in g and "throughput" in h and g["throughput"]:
                    row["ratio"] = round(h["throughput"] / g["throughput"], 3)
                rows.append(row)
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 1 if any("error" in row[p] for row in rows for p in PROTOCOLS) else 0


if __name__ == "__main__":
    raise SystemExit(main())
