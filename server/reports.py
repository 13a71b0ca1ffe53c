"""What a worker tells the control plane besides its acks: memory, and cumulative latency histograms.

The histograms are read from the worker's own Prometheus collectors (the figures ``/metrics`` serves), so the
control plane's charts and a Prometheus server scraping the workers agree. They stay cumulative: the control
plane takes differences between two reports, which survive a lost report and need no clock agreement.
"""

from __future__ import annotations

from collections.abc import Iterable

from lmaas.protos.lmaas.worker.v1 import sync_pb2
from lmaas.server.memory import MemoryTracker
from lmaas.server.metrics import WorkerMetrics
from lmaas.server.routing import HeldModel
from prometheus_client import Counter, Histogram

__all__ = ["latency", "memory"]


def memory(tracker: MemoryTracker, held: Iterable[HeldModel]) -> sync_pb2.Memory:
    """Capacity, RSS now, and the measured figure of every held version (0 where none was measured)."""
    out = sync_pb2.Memory(capacity_bytes=tracker.capacity, used_bytes=tracker.used())
    for h in held:
        m = tracker.get(h.name, h.version)
        out.versions.add(model=h.name, version=h.version, bytes=m.bytes if m else 0,
                         peak_bytes=m.peak_bytes if m else 0)
    return out


def _histograms(metric: Histogram) -> dict[tuple[str, str], sync_pb2.Histogram]:
    """Per (model, version) label pair: the histogram's cumulative buckets, count and sum."""
    found: dict[tuple[str, str], sync_pb2.Histogram] = {}
    for family in metric.collect():
        for sample in family.samples:
            key = (sample.labels.get("model", ""), sample.labels.get("version", ""))
            h = found.setdefault(key, sync_pb2.Histogram())
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                if bound != float("inf"):
                    h.bounds.append(bound)
                    h.counts.append(int(sample.value))
            elif sample.name.endswith("_count"):
                h.count = int(sample.value)
            elif sample.name.endswith("_sum"):
                h.sum = float(sample.value)
    return found


def _totals(metric: Counter) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[sample.labels.get("model", ""), sample.labels.get("version", "")] = int(sample.value)
    return out


def latency(metrics: WorkerMetrics, held: Iterable[HeldModel]) -> list[sync_pb2.VersionLatency]:
    """Per held version that has served: request duration (and TTFT and tokens for LLMs), cumulative."""
    requests = _histograms(metrics.request_duration)
    for key, e2e in _histograms(metrics.llm_e2e).items():  # generations: arrival to last token
        if not requests.get(key, sync_pb2.Histogram()).count:
            requests[key] = e2e
    ttft = _histograms(metrics.llm_ttft)
    tokens = _totals(metrics.llm_generation_tokens)
    out = []
    for h in held:
        key = (h.name, str(h.version))
        if key not in requests and key not in ttft:
            continue  # nothing observed yet: nothing to chart
        v = sync_pb2.VersionLatency(model=h.name, version=h.version, generation_tokens=tokens.get(key, 0))
        if key in requests:
            v.request_duration.CopyFrom(requests[key])
        if key in ttft:
            v.time_to_first_token.CopyFrom(ttft[key])
        out.append(v)
    return out
