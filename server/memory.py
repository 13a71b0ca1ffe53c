"""A worker's measured memory: its capacity, its RSS, and what each loaded version really took.

Placement elsewhere trusts a declared size; we measure instead. Loads run one at a time (the manager's load
lock), so the growth of the process's RSS around one load and warm-up is that version's cost. The heap is
trimmed (``malloc_trim(0)``, glibc) before the baseline is taken and after every unload: glibc otherwise keeps
freed pages, a later load reuses them and its delta reads too low, and 20 load/unload cycles of a 100 MB model
leave +330 MB behind (see the research notes). A sampler thread records the peak during the load.

Exported as gauges on the worker's registry: ``lmaas_worker_memory_capacity_bytes``,
``lmaas_worker_memory_used_bytes`` (RSS, read at scrape time) and ``lmaas_model_memory_bytes{model,version}``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

__all__ = ["MemoryTracker", "VersionMemory", "default_capacity", "malloc_trim", "parse_size",
           "rss_bytes"]

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1 << 10, "kib": 1 << 10, "mi": 1 << 20, "mib": 1 << 20, "gi": 1 << 30, "gib": 1 << 30,
    "ti": 1 << 40, "tib": 1 << 40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_SAMPLE_EVERY = 0.005  # seconds between RSS samples during a load (a peak shorter than this may be missed)


def parse_size(text: str) -> int:
    """Bytes in ``300MiB``, ``2GiB``, ``1.5G``, ``500MB``, ``4096`` (IEC units are powers of 2, SI of 10)."""
    match = _SIZE.fullmatch(text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 300MiB, 2GiB, 500MB, 4096)")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError(f"a size must be positive: {text!r}")
    return value


def _cgroup_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """This process's cgroup memory limit (v2 ``memory.max``, else v1 ``memory.limit_in_bytes``), if any."""
    candidates = [root / "memory.max", root / "memory" / "memory.limit_in_bytes"]
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                candidates.insert(0, root / path.lstrip("/") / "memory.max")
            elif "memory" in controllers.split(","):
                candidates.insert(0, root / "memory" / path.lstrip("/") / "memory.limit_in_bytes")
    for file in candidates:
        with contextlib.suppress(OSError, ValueError):
            text = file.read_text().strip()
            if text and text != "max":
                limit = int(text)
                if 0 < limit < 1 << 60:  # v1 writes a huge number for "no limit"
                    return limit
    return None


def default_capacity() -> int:
    """The cgroup memory limit, else the machine's RAM."""
    limit = _cgroup_limit()
    ram = os.sysconf("SC_PHYS_PAGES") * _PAGE
    return min(limit, ram) if limit else ram


def rss_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def malloc_trim() -> None:
    """Give glibc's freed heap back to the OS (a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass(frozen=True, slots=True)
class VersionMemory:
    bytes: int  # RSS growth around load + warm-up
    peak_bytes: int  # highest sampled RSS growth during the load


class _PeakSampler:
    def __init__(self) -> None:
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lmaas-memory-peak", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_EVERY):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


class MemoryTracker:
    """Capacity, RSS and per-version measurements of one worker process, with their gauges."""

    def __init__(self, registry: CollectorRegistry | None = None, capacity: int | None = None) -> None:
        self.capacity = capacity or default_capacity()
        self._versions: dict[tuple[str, int], VersionMemory] = {}
        self._lock = threading.Lock()
        self._model_gauge: Gauge | None = None
        self._used_gauge: Gauge | None = None
        if registry is not None:
            cap = Gauge("lmaas_worker_memory_capacity_bytes", "Memory this worker may use (--memory-limit, else "
                        "its cgroup limit or RAM).", registry=registry, multiprocess_mode="liveall")
            cap.set(self.capacity)
            used = Gauge("lmaas_worker_memory_used_bytes", "Resident memory (RSS) of the worker process.",
                         registry=registry, multiprocess_mode="liveall")
            if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # --processes: values live in files, set at each report
                self._used_gauge = used
                used.set(rss_bytes())
            else:
                used.set_function(rss_bytes)  # read at scrape time
            self._model_gauge = Gauge("lmaas_model_memory_bytes", "Memory a loaded version took (RSS growth "
                                      "around its load and warm-up).", ("model", "version"), registry=registry,
                                      multiprocess_mode="liveall")

    @contextlib.contextmanager
    def measure(self, name: str, version: int) -> Iterator[None]:
        """Measure the body (a load and warm-up, in the calling thread); recorded only if it returns."""
        malloc_trim()  # else pages freed earlier and reused by this load hide its cost
        before = rss_bytes()
        with _PeakSampler() as sampler:
            yield
        after = rss_bytes()
        self.record(name, version, VersionMemory(max(0, after - before), max(0, sampler.peak - before)))

    def record(self, name: str, version: int, memory: VersionMemory) -> None:
        with self._lock:
            self._versions[name, version] = memory
        if self._model_gauge is not None:
            self._model_gauge.labels(name, str(version)).set(memory.bytes)

    def forget(self, name: str, version: int) -> None:
        """The version was freed: drop its figure and its series (the caller trims the heap)."""
        with self._lock:
            known = self._versions.pop((name, version), None)
        if known is not None and self._model_gauge is not None:
            with contextlib.suppress(KeyError):
                self._model_gauge.remove(name, str(version))

    def get(self, name: str, version: int) -> VersionMemory | None:
        with self._lock:
            return self._versions.get((name, version))

    def versions(self) -> dict[tuple[str, int], VersionMemory]:
        with self._lock:
            return dict(self._versions)

    def used(self) -> int:
        """RSS now (and, under --processes, into the gauge's file)."""
        value = rss_bytes()
        if self._used_gauge is not None:
            self._used_gauge.set(value)
        return value
