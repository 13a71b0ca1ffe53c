"""A short fleet run in CI: ``python -m benchmarks.fleet`` with 100 simulated workers, two real control-plane
replicas and a 3-member etcd; every rollout must converge (all 100 ACKs), also with a replica killed mid-rollout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from etcd_cluster import etcd_binary

ROOT = Path(__file__).resolve().parents[2]


def test_fleet_of_100_simulated_workers_converges_on_every_rollout() -> None:
    if etcd_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("etcd is not installed; .ci/install-system.sh should have installed etcd-server")
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.fleet", "--workers", "100", "--models", "5", "--replicas", "2",
         "--rollouts", "2", "--no-save"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert any(line.startswith("fleet: 100 workers") for line in lines), run.stdout
    for op in ("deploy", "canary", "rollback", "deploy, replica killed"):
        line = next((x for x in lines if x.startswith(op + ":")), "")
        shape = rf"{op}: p50 [\d.]+ s p99 [\d.]+ s \| n \d+ \| cpu/rollout [\d.]+ s .* \| store ops/rollout \d+$"
        assert re.match(shape, line), run.stdout
    assert "FAILED" not in run.stdout
