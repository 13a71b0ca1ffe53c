"""The long reliability runs in one command: ``python -m benchmarks.soak``.

Runs the ``soak``-marked tests (``tests/reliability/`` and the 200-cycle load/unload test of
``tests/server/test_memory.py``) with their output shown, then gathers the figures the reliability tests wrote
(``benchmarks/results/reliability-*.json``) into ``benchmarks/results/reliability.md``. Everything runs on
loopback and stops by itself; about 6 minutes on 2 cores. Extra arguments go to pytest, e.g.
``python -m benchmarks.soak -k etcd`` for one of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TESTS = ["tests/reliability", "tests/server/test_memory.py"]


def _line(name: str, figures: dict[str, Any]) -> list[str]:
    """The headline of one results file as markdown lines (the JSON holds everything else)."""
    out = [f"## {name}", ""]
    for key, value in figures.items():
        if key in {"samples", "failovers", "rounds", "errors"}:
            count = len(value) if isinstance(value, list) else value
            out.append(f"- `{key}`: {count} entries (see the JSON)")
        else:
            out.append(f"- `{key}`: {json.dumps(value)}")
    return [*out, ""]


def summarize() -> Path:
    lines = ["# Reliability figures (long runs)", "", "Written by `python -m benchmarks.soak`.", ""]
    for path in sorted(RESULTS.glob("reliability-*.json")):
        doc = json.loads(path.read_text())
        lines.append(f"_{path.name}, measured {doc['measured_at']} on {doc['machine']['cpus']} CPUs_")
        lines.append("")
        lines += _line(doc["test"], doc["figures"])
    summary = RESULTS / "reliability.md"
    summary.write_text("\n".join(lines))
    return summary


def main(argv: list[str]) -> int:
    command = [sys.executable, "-m", "pytest", "-m", "soak", "-s", "-q", "-p", "no:cacheprovider", *TESTS, *argv]
    print("+", " ".join(command), flush=True)
    code = subprocess.call(command, cwd=ROOT)
    print(f"summary: {summarize()}")
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
