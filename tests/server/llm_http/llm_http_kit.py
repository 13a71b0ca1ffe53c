"""Helpers of the LLM HTTP tests (a module of its own: test files import it, conftest provides the fixtures)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

from processes import ServerProcess
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["MODEL", "eventually", "metric"]

MODEL = "smollm2"


def metric(worker: ServerProcess, name: str, **labels: str) -> float:
    """One sample of the worker's /metrics (0 when absent)."""
    with urllib.request.urlopen(worker.metrics_url, timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``check`` until it holds (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
