"""``python -m benchmarks.llm --smoke`` end to end in CI: the in-process engine, a real worker over gRPC and OpenAI
HTTP with both load clients (our raw SSE client and httpx), its correctness check (the raw client's text equals
the ``openai`` package's for one greedy request) and the table's shape. Numbers are not judged here (they are
the benchmark's to report); a run with an error or a failed check exits non-zero."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from llm_support import smollm2_dir

ROOT = Path(__file__).resolve().parents[3]


def test_llm_benchmark_smoke_run_measures_every_transport_and_checks_its_client(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.llm", "--smoke", "--new-tokens", "4", "--concurrency", "1,2",
         "--model-dir", str(smollm2_dir()), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "model version measured: fp32" in run.stdout
    assert "OpenAI HTTP load client: raw (" in run.stdout and "httpx (" in run.stdout
    assert "lmaas: raw client == openai package on one greedy request" in run.stdout, run.stdout
    report = json.loads(out.read_text())
    assert report["version"] == "fp32" and report["http_clients"] == ["raw", "httpx"]
    got = {(r["server"], r["transport"], r["concurrency"]): r for r in report["rows"]}
    expected = {("in-process", "-", 1)} | {("lmaas", t, c) for t in ("grpc", "openai-raw", "openai-httpx")
                                           for c in (1, 2)}
    assert set(got) == expected
    for row in got.values():  # every request ran to its 4 tokens (ignore_eos), none failed
        assert row["errors"] == 0 and row["requests"] == row["concurrency"] and row["tokens"] == 4 * row["requests"]
