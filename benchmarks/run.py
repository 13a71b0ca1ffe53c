"""LMaaS benchmark: in-process ONNX Runtime limit, the LMaaS worker, a bare grpc.aio server and MLServer 1.7.1,
measured in one run.

    python -m benchmarks.run                    # 3 runs, medians; ~10 min on 2 cores
    python -m benchmarks.run --quick            # 1 run, short windows; ~3 min
    python -m benchmarks.run --models mlp --concurrency 1,16 --no-mlserver
    python -m benchmarks.run --quick --models cnn --concurrency 1,4 --window-ms 1000 --no-mlserver   # smoke

The bare server (benchmarks/bare_server.py: ModelInfer with ONNX Runtime inline, nothing else) is the
reference column: "LMaaS / bare" is what every LMaaS feature costs or gains over it, measured in the same run.

Writes ``OUT/results.json``, ``OUT/results.md`` (the table) and ``OUT/throughput.png``; prints the table
and the issue's targets. See benchmarks/README.md for the definitions.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/run.py` as well as `python -m benchmarks.run`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import onnxruntime as ort

from benchmarks import report
from benchmarks.cpumeter import CpuMeter
from benchmarks.inprocess import measure_inprocess, worker_session_options
from benchmarks.models import MODELS, build_repository, example_batch, write_perf_analyzer_data
from benchmarks.perf_analyzer import PerfAnalyzerError, perf_analyzer_path, perf_analyzer_version, run_perf_analyzer
from benchmarks.servers import (
    MLSERVER_VERSION,
    Server,
    bare_server,
    lmaas_worker,
    mlserver_peer,
    verify_infer,
    wait_ready,
)

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
MARK_START, MARK_END = "<!-- results:start -->", "<!-- results:end -->"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields), idle


def background_cpu(seconds: float = 1.0) -> float:
    """Fraction of all cores busy over ``seconds`` while this benchmark does nothing (other load)."""
    total0, idle0 = _cpu_times()
    time.sleep(seconds)
    total1, idle1 = _cpu_times()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def environment() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        m = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = m.group(1) if m else cpu
    env: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host_cores": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "mlserver": MLSERVER_VERSION,
    }
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        env["lmaas"] = version("lmaas")
    with contextlib.suppress(Exception):
        env["perf_analyzer"] = perf_analyzer_version()
    with contextlib.suppress(Exception):
        env["lmaas_commit"] = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    return env


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="1 run and short windows (~3 min)")
    p.add_argument("--models", default="mlp,cnn,transformer", help="comma-separated: mlp,cnn,transformer")
    p.add_argument("--concurrency", default="1,4,16", help="perf_analyzer concurrency levels")
    p.add_argument("--runs", type=int, default=None, help="runs to take medians over (default 3, quick 1)")
    p.add_argument("--no-mlserver", action="store_true", help="skip the MLServer peer")
    p.add_argument("--no-lmaas", action="store_true", help="skip the LMaaS worker (in-process + peer only)")
    p.add_argument("--no-bare", action="store_true", help="skip the bare grpc.aio reference server")
    p.add_argument("--out", type=Path, default=HERE / "results", help="output folder (default benchmarks/results)")
    p.add_argument(
        "--repo",
        type=Path,
        default=HERE / ".cache" / "model-repository",
        help="model repository to build into (default benchmarks/.cache/model-repository)",
    )
    p.add_argument("--mlserver-venv", type=Path, default=HERE / ".venvs" / "mlserver")
    p.add_argument(
        "--mlserver-workers",
        type=int,
        default=None,
        help="MLServer parallel_workers (default: MLServer's own default, 1)",
    )
    p.add_argument(
        "--window-ms",
        type=int,
        default=None,
        help="perf_analyzer measurement window (default 2000, quick 700; >= 3 windows per point)",
    )
    p.add_argument(
        "--inprocess-window",
        type=float,
        default=None,
        help="seconds per in-process measurement point (default 1.5, quick 0.5)",
    )
    p.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `lmaas worker` (repeatable), e.g. --worker-arg=--workers=2",
    )
    p.add_argument(
        "--profile",
        default=None,
        metavar="MODEL",
        help="after the runs, record a py-spy profile of the LMaaS worker under --profile-concurrency",
    )
    p.add_argument(
        "--profile-concurrency", type=int, default=None, help="concurrency while profiling (default: the highest)"
    )
    p.add_argument("--profile-seconds", type=float, default=8.0)
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="before each point, wait up to this long for other programs' CPU use to drop (0 = never wait)",
    )
    p.add_argument("--quiet-threshold", type=float, default=0.10, help="share of the host's CPU (default 0.10)")
    p.add_argument(
        "--update-readme",
        action="store_true",
        help="write the table and chart link into benchmarks/README.md between the results markers",
    )
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    if not args.concurrency or min(args.concurrency) < 1 or max(args.concurrency) > 256:
        p.error("--concurrency: integers in 1..256")
    args.runs = args.runs or (1 if args.quick else 3)
    if not 1 <= args.runs <= 20:
        p.error("--runs: 1..20")
    args.window_ms = args.window_ms or (700 if args.quick else 2000)
    args.inprocess_window = args.inprocess_window or (0.5 if args.quick else 1.5)
    return args


def _measure_point(
    server: Server, model: str, c: int, args: argparse.Namespace, data: dict[str, Path], others: tuple[int, ...]
) -> dict[str, Any]:
    for attempt in (1, 2):
        meter = CpuMeter(server.process.pid, others)
        meter.start()
        try:
            r = run_perf_analyzer(
                server.url,
                model,
                concurrency=c,
                measurement_ms=args.window_ms,
                extra=["--input-data", str(data[model])],
                timeout=max(60, 15 * args.window_ms / 1000 + 30),
            )
            break
        except PerfAnalyzerError as exc:
            # perf_analyzer gives up when 10 windows never agree within 50 % (bursts of other load): once more
            if attempt == 1 and "stable measurement" in exc.stderr and server.process.poll() is None:
                log(f"  {server.name:8} {model:11} c={c:<3} no stable measurement; trying once more")
                continue
            log(f"  {server.name:8} {model:11} c={c:<3} FAILED: {str(exc).splitlines()[0]} (see results.json)")
            return {"error": str(exc)[-3000:]}
    row: dict[str, Any] = {k: r[k] for k in ("throughput", "p50_us", "p90_us", "p99_us", "avg_us") if k in r}
    cpu = meter.stop()
    row["foreign_cpu"] = cpu["foreign"]
    row["server_cores"] = cpu["server_cores"]
    row["loadgen_cores"] = cpu["loadgen_cores"]
    if cpu["server_cores"] is not None and row["throughput"]:
        row["server_cpu_us_per_infer"] = round(cpu["server_cores"] * 1e6 / row["throughput"], 1)
    log(
        f"  {server.name:8} {model:11} c={c:<3} {row['throughput']:9,.0f} infer/s "
        f"p50 {row['p50_us'] / 1000:7.2f} ms  p99 {row['p99_us'] / 1000:7.2f} ms"
        + ("" if cpu["server_cores"] is None else f"  cpu: server {cpu['server_cores']:.2f}")
        + ("" if cpu["loadgen_cores"] is None else f" loadgen {cpu['loadgen_cores']:.2f}")
        + ("" if cpu["foreign"] is None else f" other {cpu['foreign'] * os.cpu_count():.2f} cores")
    )
    return row


def wait_for_quiet(args: argparse.Namespace, pids: tuple[int, ...]) -> dict[str, Any]:
    """Bounded wait until programs outside the benchmark use less than ``--quiet-threshold`` of the host's CPU
    over a 0.5 s sample (a shared machine's bursts then fall between points rather than in them)."""
    started = time.monotonic()
    deadline = started + args.wait_quiet
    foreign: float | None = None
    for _ in range(1000):
        meter = CpuMeter(None, pids)
        meter.start()
        time.sleep(0.5)
        foreign = meter.stop()["foreign"]
        if foreign is None or foreign < args.quiet_threshold or time.monotonic() >= deadline:
            break
    waited = round(time.monotonic() - started, 1)
    if waited > 1:
        log(f"  waited {waited:.0f} s for other programs to quiet down (now {foreign or 0:.0%} of the host)")
    return {"waited_s": waited, "foreign_before": foreign}


def _verify(server: Server, args: argparse.Namespace, expected: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for model in args.models:
        x, y = expected[model]
        verify_infer(server, MODELS[model], y, x)


def _profile(server: Server, args: argparse.Namespace, data: dict[str, Path], out: Path) -> dict[str, Any]:
    """py-spy record of the worker while perf_analyzer drives it at the highest concurrency."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        log("py-spy is not installed (pip install py-spy): no profile")
        return {}
    model, c = args.profile, args.profile_concurrency or max(args.concurrency)
    raw = out / f"profile-{model}-c{c}.txt"
    svg = out / f"profile-{model}-c{c}.svg"
    duration = max(2, int(args.profile_seconds))
    pa = subprocess.Popen(
        [
            perf_analyzer_path() or "perf_analyzer",
            "-i",
            "grpc",
            "-u",
            server.url,
            "-m",
            model,
            "--concurrency-range",
            str(c),
            "--measurement-mode",
            "time_windows",
            "--measurement-interval",
            str(int(duration * 1000)),
            "--max-trials",
            "3",
            "--stability-percentage",
            "999",
            "--input-data",
            str(data[model]),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.5)
        # raw: only samples holding the GIL (the serial part that caps one process); svg: every thread, native
        for fmt, path, mode in (("raw", raw, "--gil"), ("flamegraph", svg, "--native")):
            subprocess.run(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(server.process.pid),
                    "--duration",
                    str(duration // 2),
                    "--rate",
                    "250",
                    "--subprocesses",
                    mode,
                    "--format",
                    fmt,
                    "--output",
                    str(path),
                ],
                capture_output=True,
                timeout=duration + 60,
                check=False,
            )
    finally:
        pa.terminate()
        try:
            pa.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pa.kill()
            pa.wait(timeout=10)
    summary = summarize_profile(raw) if raw.exists() else {}
    return {"model": model, "concurrency": c, "raw": str(raw), "flamegraph": str(svg), **summary}


def summarize_profile(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self time (leaf frame) and inclusive time per function from py-spy's collapsed stacks."""
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        frames = [re.sub(r" \(.*?/(site-packages|lib/python3\.\d+|main)/", " (", f) for f in stack.split(";")]
        total += n
        self_t[frames[-1]] = self_t.get(frames[-1], 0) + n
        for f in set(frames[1:]):  # skip the process/thread root
            incl[f] = incl.get(f, 0) + n

    def table(d: dict[str, int]) -> list[list[Any]]:
        return [[f, round(100 * v / total, 1)] for f, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "self_pct": table(self_t), "inclusive_pct": table(incl)}


def _one_run(
    i: int,
    args: argparse.Namespace,
    facts: dict[str, Any],
    data: dict[str, Path],
    expected: dict[str, tuple[np.ndarray, np.ndarray]],
    intra_op_threads: int,
) -> dict[str, Any]:
    """Both servers up side by side; per model: the in-process limit, then each concurrency on each server
    back to back (alternating which goes first from run to run), so all three see the same background load."""
    run: dict[str, Any] = {"run": i + 1, "inprocess": {}, "servers": {}, "errors": {}, "restarts": [], "autotune": []}
    with contextlib.ExitStack() as stack:
        starts: dict[str, int] = {}

        def start(name: str) -> Server:
            """Start (or restart) a server in this run's exit stack, wait for it and check its answers."""
            starts[name] = starts.get(name, 0) + 1
            suffix = f"-run{i + 1}" + (f"-restart{starts[name] - 1}" if starts[name] > 1 else "")
            if name == "lmaas":
                cm: contextlib.AbstractContextManager[Server] = lmaas_worker(
                    args.repo, args.out / "logs" / f"lmaas{suffix}.log", extra_args=args.worker_arg
                )
            elif name == "bare":
                cm = bare_server(args.repo.resolve(), args.models, args.out / "logs" / f"bare{suffix}.log")
            else:
                cm = mlserver_peer(
                    args.mlserver_venv,
                    args.out / "mlserver-workspace",
                    args.repo,
                    args.models,
                    args.out / "logs" / f"mlserver{suffix}.log",
                    intra_op_threads=intra_op_threads,
                    parallel_workers=args.mlserver_workers,
                )
            server = stack.enter_context(cm)
            wait_ready(server, args.models)
            _verify(server, args, expected)
            return server

        servers: dict[str, Server] = {}
        if not args.no_lmaas:
            servers["lmaas"] = start("lmaas")
            # what the worker's load-time self-tune chose per model (its log line; none with --no-autotune)
            run["autotune"] = [
                line.split(" autotune ", 1)[1].strip()
                for line in servers["lmaas"].log.read_text(errors="replace").splitlines()
                if " autotune model=" in line
            ]
            for line in run["autotune"]:
                log(f"  lmaas autotune: {line}")
        if not args.no_bare:
            servers["bare"] = start("bare")
        if not args.no_mlserver:
            try:
                servers["mlserver"] = start("mlserver")
            except (RuntimeError, TimeoutError, AssertionError, subprocess.CalledProcessError) as exc:
                log(f"MLServer failed: {exc}")
                run["errors"]["mlserver"] = str(exc)
        order = list(servers) if i % 2 == 0 else list(reversed(servers))
        for name in servers:
            run["servers"][name] = {m: {} for m in args.models}
        for m in args.models:
            pids = tuple(s.process.pid for s in servers.values())
            quiet = wait_for_quiet(args, pids) if args.wait_quiet > 0 else {}
            meter = CpuMeter(None, pids)
            meter.start()
            r = measure_inprocess(
                Path(facts[m]["path"]),
                MODELS[m],
                window_s=args.inprocess_window,
                batch_sizes=(1, 4, 16) if args.quick else (1, 2, 4, 8, 16),
                concurrencies=args.concurrency,
            )
            r["foreign_cpu"] = meter.stop()["foreign"]
            r.update(quiet)
            run["inprocess"][m] = r
            log(
                f"  in-process {m:11} batch-1 call p50 {r['batch1']['p50_us']:8.0f} us; limit batch-1 "
                f"{r['limit_batch1']:9,.0f}/s, batched {r['limit']:9,.0f}/s (b={r['limit_config']['batch']}, "
                f"threads={r['limit_config']['threads']})"
            )
            for c in args.concurrency:
                for name in order:
                    others = tuple(s.process.pid for n, s in servers.items() if n != name)
                    quiet = (
                        wait_for_quiet(args, tuple(s.process.pid for s in servers.values()))
                        if args.wait_quiet > 0
                        else {}
                    )
                    row = {**_measure_point(servers[name], m, c, args, data, others), **quiet}
                    code = servers[name].process.poll()
                    if "error" in row and code is not None and starts[name] <= 3:
                        # something outside the benchmark stopped the server (a signal, a crash): say so,
                        # start a fresh one and measure the point again, at most 3 restarts per run
                        log(f"  {name} exited with {code} (see {servers[name].log}); restarting it")
                        run["restarts"].append({"server": name, "model": m, "concurrency": c, "exit": code})
                        servers[name] = start(name)
                        row = _measure_point(servers[name], m, c, args, data, others)
                    run["servers"][name][m][str(c)] = row
        if args.profile and "lmaas" in servers and i == args.runs - 1:
            log(
                f"profiling the LMaaS worker with py-spy: {args.profile} "
                f"at c={args.profile_concurrency or max(args.concurrency)}"
            )
            run["profile"] = _profile(servers["lmaas"], args, data, args.out) or None
    return run


def update_readme(table: str, targets: str, env: dict[str, Any], args: argparse.Namespace) -> None:
    if not README.is_file():
        return
    text = README.read_text()
    if MARK_START not in text or MARK_END not in text:
        return
    chart = os.path.relpath(args.out / "throughput.png", README.parent)
    block = (
        f"{MARK_START}\n"
        f"Run {env['date']} on {env['host_cores']} cores ({env['cpu']}), onnxruntime {env['onnxruntime']}, "
        f"{args.runs} run(s), medians; perf_analyzer {env.get('perf_analyzer', '?')} on the same cores. "
        f"LMaaS commit {env.get('lmaas_commit', '?')}. Command: `{env['command']}`.\n\n"
        f"{table}\n\nTargets (issue 4):\n\n{targets}\n\n![throughput vs concurrency]({chart})\n{MARK_END}"
    )
    start, end = text.index(MARK_START), text.index(MARK_END) + len(MARK_END)
    README.write_text(text[:start] + block + text[end:])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    env["command"] = " ".join(["python -m benchmarks.run", *(sys.argv[1:] if argv is None else argv)])
    if perf_analyzer_path() is None and not (args.no_mlserver and args.no_lmaas):
        log('perf_analyzer not found: run .ci/install-perf-analyzer.sh "$VIRTUAL_ENV" (or set LMAAS_PERF_ANALYZER)')
        return 2
    busy = background_cpu()
    env["background_cpu_before"] = round(busy, 3)
    if busy > 0.15:
        log(f"WARNING: {busy:.0%} of the CPU is busy with other work before the benchmark; numbers will be noisy")

    log(f"building models {args.models} into {args.repo}")
    facts = build_repository(args.repo, args.models)
    data = {m: write_perf_analyzer_data(MODELS[m], args.out / "input-data" / f"{m}.json") for m in args.models}
    opts, _ = worker_session_options()
    expected: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for m in args.models:
        sess = ort.InferenceSession(facts[m]["path"], sess_options=opts, providers=["CPUExecutionProvider"])
        x = example_batch(MODELS[m], 1, seed=99)
        expected[m] = (x, sess.run(None, {MODELS[m].input_name: x})[0])
        del sess

    runs: list[dict[str, Any]] = []
    profile: dict[str, Any] | None = None
    started = time.monotonic()
    for i in range(args.runs):
        log(f"run {i + 1}/{args.runs}")
        run = _one_run(i, args, facts, data, expected, opts.intra_op_num_threads)
        profile = run.pop("profile", None) or profile
        runs.append(run)

    env["background_cpu_after"] = round(background_cpu(), 3)
    env["elapsed_s"] = round(time.monotonic() - started, 1)
    env["foreign_cpu"] = report.noise(runs)
    agg = report.aggregate(runs, args.models, args.concurrency)
    table = report.markdown_table(agg)
    targets = report.targets(agg)
    noise = env["foreign_cpu"]
    if noise["max"] is not None:
        table += (
            f"\n\nOther programs' CPU use during the measurements: median {noise['median']:.0%}, "
            f"max {noise['max']:.0%} of the host's cores."
        )
    targets_md = report.targets_text(targets)
    title = (
        f"LMaaS vs bare grpc.aio vs MLServer {MLSERVER_VERSION} vs in-process ONNX Runtime — "
        f"{env['host_cores']} cores, batch-1 requests, medians of {args.runs} run(s)"
    )
    try:
        chart: Path | None = report.plot(agg, args.out / "throughput.png", title)
    except ImportError:
        chart = None
        log("matplotlib is not installed: no chart (pip install matplotlib)")
    results = {
        "environment": env,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "models": facts,
        "summary": agg,
        "targets": targets,
        "profile": profile,
        "runs": runs,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (args.out / "results.md").write_text(f"{title}\n\n{table}\n\nTargets:\n\n{targets_md}\n")
    if args.update_readme:
        update_readme(table, targets_md, env, args)
    print(f"\n{title}\n\n{table}\n\nTargets (issue 4):\n{targets_md}\n")
    print(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'}, {chart or '(no chart)'}")
    if profile:
        print(f"profile: {profile['flamegraph']}; top self time:")
        for name, pct in profile.get("self_pct", [])[:12]:
            print(f"  {pct:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
