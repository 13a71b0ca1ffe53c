"""Units of the worker's memory accounting: sizes as people write them, and one measured load."""

from __future__ import annotations

import numpy as np
import pytest
from lmaas.server.memory import MemoryTracker, default_capacity, parse_size, rss_bytes
from prometheus_client import CollectorRegistry


@pytest.mark.parametrize(("text", "expected"), [
    ("300MiB", 300 << 20), ("2GiB", 2 << 30), ("2gib", 2 << 30), ("1.5GiB", 3 << 29), ("512KiB", 512 << 10),
    ("500MB", 500_000_000), ("1G", 1_000_000_000), ("4096", 4096), ("4096B", 4096), (" 1 TiB ", 1 << 40),
])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "lots", "-1MiB", "0", "0MiB", "3 parsecs", "1e9", "12XB"])
def test_parse_size_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_default_capacity_is_positive_and_at_least_the_rss() -> None:
    assert default_capacity() > rss_bytes() > 0


def test_a_measured_allocation_is_its_size_and_exported() -> None:
    registry = CollectorRegistry()
    tracker = MemoryTracker(registry, capacity=300 << 20)
    held: list[np.ndarray] = []
    with tracker.measure("m", 1):
        held.append(np.ones(32 << 20, np.uint8))  # 32 MiB, touched
    measured = tracker.get("m", 1)
    assert measured is not None
    assert abs(measured.bytes - (32 << 20)) < 0.25 * (32 << 20)
    assert measured.peak_bytes >= measured.bytes
    assert registry.get_sample_value("lmaas_worker_memory_capacity_bytes") == 300 << 20
    assert (registry.get_sample_value("lmaas_worker_memory_used_bytes") or 0) > 32 << 20
    assert registry.get_sample_value("lmaas_model_memory_bytes", {"model": "m", "version": "1"}) == measured.bytes
    held.clear()
    tracker.forget("m", 1)
    assert tracker.get("m", 1) is None
    assert registry.get_sample_value("lmaas_model_memory_bytes", {"model": "m", "version": "1"}) is None


def test_a_failed_load_records_nothing() -> None:
    tracker = MemoryTracker(capacity=1 << 30)
    with pytest.raises(RuntimeError), tracker.measure("m", 1):
        raise RuntimeError("load failed")
    assert tracker.get("m", 1) is None
