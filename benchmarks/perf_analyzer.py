"""Run Triton's ``perf_analyzer`` against an Open Inference Protocol v2 gRPC endpoint and parse its report.

The binary is installed into the virtual environment by ``.ci/install-perf-analyzer.sh VENV_DIR``
(perf_analyzer 2.51.0 from the tritonclient 2.51.0 manylinux wheel, with a wrapper at ``VENV_DIR/bin``).

What perf_analyzer asks of the server (measured with 2.51.0 over gRPC): ``ModelMetadata`` (inputs, outputs,
datatypes, shapes), ``ModelConfig`` (a Triton ``ModelConfig`` message; ``name`` and ``max_batch_size`` are
enough) and ``ModelInfer``. ``ModelStatistics`` is optional: when it answers, the report gains the server-side
columns (``server_queue_us``, ``server_compute_infer_us``, ...); UNIMPLEMENTED is tolerated.

Used by tests and benchmarks::

    from benchmarks.perf_analyzer import perf_analyzer_path, run_perf_analyzer

    result = run_perf_analyzer("127.0.0.1:8001", "identity", concurrency=4, measurement_ms=1000)
    result["throughput"], result["p50_us"], result["p99_us"]

Also a command line: ``python benchmarks/perf_analyzer.py 127.0.0.1:8001 MODEL -c 4 [-- EXTRA_FLAGS...]``
prints the parsed result as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "PerfAnalyzerError",
    "parse_perf_analyzer_csv",
    "perf_analyzer_path",
    "perf_analyzer_version",
    "run_perf_analyzer",
]

#: Environment variable naming the perf_analyzer executable explicitly (overrides every other lookup).
ENV_VAR = "LMAAS_PERF_ANALYZER"

# CSV header -> result key. Latencies in perf_analyzer's CSV are microseconds; throughput is infer/s.
_COLUMNS = {
    "Concurrency": "concurrency",
    "Request Rate": "request_rate",
    "Inferences/Second": "throughput",
    "Client Send": "client_send_us",
    "Network+Server Send/Recv": "network_server_us",
    "Server Queue": "server_queue_us",
    "Server Compute Input": "server_compute_input_us",
    "Server Compute Infer": "server_compute_infer_us",
    "Server Compute Output": "server_compute_output_us",
    "Client Recv": "client_recv_us",
    "p50 latency": "p50_us",
    "p90 latency": "p90_us",
    "p95 latency": "p95_us",
    "p99 latency": "p99_us",
    "Avg latency": "avg_us",
    "request/response": "request_response_us",
    "response wait": "response_wait_us",
}

_REQUIRED = ("throughput", "p50_us", "p90_us", "p99_us")


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer failed, timed out, or wrote no usable report; carries the command and its output."""

    def __init__(self, message: str, *, command: Sequence[str], returncode: int | None, stdout: str, stderr: str):
        self.command = list(command)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"{message}\ncommand: {' '.join(self.command)}\nexit status: {returncode}\n"
            f"--- stdout ---\n{stdout.rstrip()}\n--- stderr ---\n{stderr.rstrip()}"
        )


def perf_analyzer_path() -> str | None:
    """The perf_analyzer executable: ``$LMAAS_PERF_ANALYZER``, else this interpreter's venv ``bin/``, else PATH."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for folder in (Path(sys.executable).parent, Path(sys.prefix) / "bin"):
        candidate = folder / "perf_analyzer"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("perf_analyzer")


def _require_binary(binary: str | None) -> str:
    path = binary or perf_analyzer_path()
    if path is None:
        raise FileNotFoundError(
            f'perf_analyzer not found (install it with: .ci/install-perf-analyzer.sh "$VIRTUAL_ENV", or set {ENV_VAR})'
        )
    return path


def perf_analyzer_version(binary: str | None = None) -> str:
    """The version perf_analyzer reports, e.g. ``"2.51.0"`` (it prints it on stderr)."""
    path = _require_binary(binary)
    proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False)
    output = proc.stdout + proc.stderr
    match = re.search(r"Version\s+(\d[\w.+-]*)", output)
    if proc.returncode != 0 or match is None:
        raise PerfAnalyzerError(
            "perf_analyzer --version failed",
            command=[path, "--version"],
            returncode=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
        )
    return match.group(1)


def _number(text: str) -> int | float | str | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _key(header: str) -> str:
    header = header.strip()
    return _COLUMNS.get(header) or re.sub(r"[^0-9a-z]+", "_", header.lower()).strip("_")


def parse_perf_analyzer_csv(text: str) -> list[dict[str, int | float | str | None]]:
    """Parse the report written by ``perf_analyzer -f FILE``: one dict per load level, values as numbers.

    Keys: ``concurrency`` (or ``request_rate``), ``throughput`` (infer/s), ``p50_us``, ``p90_us``, ``p95_us``,
    ``p99_us``, ``client_send_us``, ``client_recv_us`` and, when the server reports statistics,
    ``network_server_us``, ``server_queue_us``, ``server_compute_input_us``, ``server_compute_infer_us``,
    ``server_compute_output_us``. Unknown columns are kept under a snake_case form of their header; empty cells
    are ``None``. Rows after the first blank line (``--verbose-csv`` / ``--collect-metrics`` sections) are
    ignored.
    """
    lines: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            if lines:
                break
            continue
        lines.append(line)
    if not lines:
        return []
    reader = csv.reader(lines)
    header = [_key(h) for h in next(reader)]
    return [{k: _number(v) for k, v in zip(header, row, strict=False) if k} for row in reader if row]


def run_perf_analyzer(
    url: str,
    model: str,
    *,
    concurrency: int = 1,
    measurement_ms: int = 1000,
    extra: Sequence[str] = (),
    timeout: float = 120,
    stability_percent: float = 50,
    max_trials: int = 10,
    binary: str | None = None,
) -> dict[str, Any]:
    """Measure ``model`` at ``url`` (host:port of a gRPC OIP v2 endpoint) at one concurrency level.

    Runs ``perf_analyzer -i grpc -u URL -m MODEL --concurrency-range C --measurement-mode time_windows
    --measurement-interval MS --stability-percentage S --max-trials N -f CSV [extra...]``. Measurement ends
    once three consecutive windows agree within ``stability_percent`` (so at least 3 x ``measurement_ms``,
    about 3.7 s at the defaults); more than ``max_trials`` windows without that is an error. ``extra`` comes
    last, and perf_analyzer keeps the last value of a repeated flag, so ``extra`` may override any of these
    (e.g. ``["--shape", "INPUT0:1,16", "--async", "-b", "8"]``).

    Returns the parsed row for ``concurrency`` (else the lowest load level), see
    :func:`parse_perf_analyzer_csv`, plus ``rows`` (every row in load order, when ``extra`` asks for a range
    such as ``["--concurrency-range", "1:8:1"]``), ``command``, ``stdout`` and ``stderr``.
    Raises :class:`PerfAnalyzerError` when perf_analyzer exits non-zero, times out or writes no report, and
    ``FileNotFoundError`` when no binary is found.
    """
    path = _require_binary(binary)
    with tempfile.TemporaryDirectory(prefix="perf_analyzer-") as tmp:
        report = Path(tmp) / "report.csv"
        command = [
            path,
            "-i", "grpc",
            "-u", url,
            "-m", model,
            "--concurrency-range", str(concurrency),
            "--measurement-mode", "time_windows",
            "--measurement-interval", str(measurement_ms),
            "--stability-percentage", str(stability_percent),
            "--max-trials", str(max_trials),
            "-f", str(report),
            *extra,
        ]  # fmt: skip
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise PerfAnalyzerError(
                f"perf_analyzer timed out after {timeout} s",
                command=command,
                returncode=None,
                stdout=_text(exc.stdout),
                stderr=_text(exc.stderr),
            ) from None
        if proc.returncode != 0:
            raise PerfAnalyzerError(
                "perf_analyzer failed",
                command=command,
                returncode=proc.returncode,
                stdout=proc.stdout,
                stderr=proc.stderr,
            )
        rows = parse_perf_analyzer_csv(report.read_text()) if report.exists() else []
    if not rows or any(key not in rows[0] for key in _REQUIRED):
        raise PerfAnalyzerError(
            f"perf_analyzer wrote no usable report (need {', '.join(_REQUIRED)}; got {rows[:1]})",
            command=command,
            returncode=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
        )
    # perf_analyzer writes the rows sorted by throughput; order them by load level instead.
    level = "concurrency" if "concurrency" in rows[0] else "request_rate"
    rows.sort(key=lambda row: _as_float(row.get(level)))
    chosen = next((row for row in rows if row.get("concurrency") == concurrency), rows[0])
    return {**chosen, "rows": rows, "command": command, "stdout": proc.stdout, "stderr": proc.stderr}


def _as_float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _text(output: bytes | str | None) -> str:
    if output is None:
        return ""
    return output.decode(errors="replace") if isinstance(output, bytes) else output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run perf_analyzer over gRPC and print the parsed result as JSON.")
    parser.add_argument("url", help="host:port of the OIP v2 gRPC endpoint")
    parser.add_argument("model")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("-p", "--measurement-ms", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=120)
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser.epilog = "Further perf_analyzer flags go after --, e.g. -- --async --shape INPUT0:1,16"
    args = parser.parse_args(argv)
    try:
        result = run_perf_analyzer(
            args.url,
            args.model,
            concurrency=args.concurrency,
            measurement_ms=args.measurement_ms,
            extra=extra,
            timeout=args.timeout,
        )
    except (PerfAnalyzerError, FileNotFoundError) as exc:
        print(exc, file=sys.stderr)
        return 1
    result.pop("stdout")
    result.pop("stderr")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
