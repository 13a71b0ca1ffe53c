"""Percentiles from histogram buckets, and the control plane's ring of the workers' cumulative histograms.

The quantile math is checked on hand-computed cases (Prometheus's linear interpolation inside a bucket) and on a
real ``prometheus_client`` histogram of known observations read through the worker's own report code; the ring is
fed real worker records in a real store (SQLite and etcd) and answers windows from bucket differences.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from lmaas.control_plane import keys
from lmaas.control_plane.metrics_aggregate import LatencyAggregator, delta, quantile
from lmaas.control_plane.store.base import Store
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from lmaas.server import reports
from lmaas.server.metrics import WorkerMetrics
from lmaas.server.routing import HeldModel
from prometheus_client import CollectorRegistry

BOUNDS = (1.0, 2.0, 4.0)


def test_quantile_interpolates_inside_the_bucket() -> None:
    assert quantile(0.5, BOUNDS, (10, 30, 40), 40) == pytest.approx(1.5)  # rank 20: halfway through (1, 2]
    assert quantile(0.99, BOUNDS, (10, 30, 40), 40) == pytest.approx(3.92)  # rank 39.6 in (2, 4]
    assert quantile(0.1, BOUNDS, (10, 30, 40), 40) == pytest.approx(0.4)  # the first bucket starts at 0
    assert quantile(0.25, BOUNDS, (10, 10, 40), 40) == pytest.approx(1.0)  # the rank ends bucket 1 exactly


def test_quantile_in_the_inf_bucket_answers_the_highest_bound_and_none_without_data() -> None:
    assert quantile(0.99, BOUNDS, (10, 30, 40), 50) == 4.0
    assert quantile(0.5, BOUNDS, (0, 0, 0), 0) is None
    assert quantile(0.5, (), (), 3) is None


def test_quantile_of_a_real_worker_histogram_matches_the_observations() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    observed = np.random.default_rng(0).uniform(0.001, 0.01, 4000)  # fills the 2.5, 5 and 10 ms buckets evenly
    for value in observed:
        metrics.request_duration.labels("m", "1").observe(float(value))
    (latency,) = reports.latency(metrics, [HeldModel("m", 1, "d")])
    h = latency.request_duration
    assert h.count == 4000 and h.sum == pytest.approx(observed.sum())
    for q in (0.5, 0.99):
        estimate = quantile(q, list(h.bounds), list(h.counts), h.count)
        assert estimate is not None
        # uniform inside each bucket: interpolation is exact up to sampling noise
        assert estimate == pytest.approx(float(np.quantile(observed, q)), rel=0.05)


def _hist(counts: tuple[int, ...], count: int, total: float = 0.0) -> pb.LatencyHistogram:
    return pb.LatencyHistogram(bounds=BOUNDS, counts=counts, count=count, sum=total)


def test_delta_subtracts_and_a_restart_counts_from_zero() -> None:
    now, then = _hist((10, 30, 40), 40, 60.0), _hist((5, 10, 10), 10, 10.0)
    d = delta(now, then)
    assert (d.counts, d.count, d.sum) == ((5, 20, 30), 30, 50.0)
    restarted = delta(_hist((1, 2, 3), 3), then)  # the version was reloaded: counters went down
    assert (restarted.counts, restarted.count) == ((1, 2, 3), 3)


async def _put_worker(store: Store, worker_id: str, latency: list[pb.VersionLatency]) -> None:
    info = pb.WorkerInfo(worker_id=worker_id, pool="default", inference_address="127.0.0.1:1",
                         held=[pb.HeldVersion(model="m", version=1, digest="d")], latency=latency)
    await store.put(keys.worker(worker_id), info.SerializeToString())


def _version(counts: tuple[int, ...], count: int, ttft: tuple[int, ...] = (), tokens: int = 0) -> pb.VersionLatency:
    v = pb.VersionLatency(model="m", version=1, request_duration=_hist(counts, count), generation_tokens=tokens)
    if ttft:
        v.time_to_first_token.CopyFrom(_hist(ttft, ttft[-1]))
    return v


async def test_the_ring_answers_windows_from_bucket_differences_summed_over_workers(store: Store) -> None:
    ring = LatencyAggregator(store)
    await _put_worker(store, "a", [_version((0, 0, 0), 0)])
    await _put_worker(store, "b", [_version((5, 5, 5), 5)])
    await ring.sample()
    start = int(time.time() * 1000)
    assert ring.window("m", 1, start) is None  # one snapshot: no interval yet
    # In the interval: worker a served 10 requests in (1, 2] s, worker b 10 in (2, 4] s and 10 generated tokens.
    await _put_worker(store, "a", [_version((0, 10, 10), 10)])
    await _put_worker(store, "b", [_version((5, 5, 15), 15, ttft=(2, 4, 4), tokens=10)])
    time.sleep(0.01)
    await ring.sample()
    window = ring.window("m", 1, int(time.time() * 1000))
    assert window is not None and window.requests is not None
    assert window.requests.counts == (0, 10, 20) and window.requests.count == 20
    assert window.percentile_ms(0.5) == pytest.approx(2000.0)  # rank 10 ends the (1, 2] bucket
    assert window.percentile_ms(0.99) == pytest.approx(2000 + 2000 * 9.8 / 10)
    assert window.percentile_ms(0.5, "ttft") == pytest.approx(1000.0)  # ttft: all of b's since its first report
    assert window.tokens == 10 and window.tokens_per_s is not None and window.tokens_per_s > 0
    assert ring.window("other", 1, int(time.time() * 1000)) is not None  # an interval, just without data
    assert ring.window("other", 1, int(time.time() * 1000)).percentile_ms(0.5) is None  # type: ignore[union-attr]
    await ring.stop()
