"""The monitoring assets query only metrics the servers really export, with the labels they really carry.

A real control plane (SQLite) and a real worker synced to it, in the state of a fresh installation a few minutes
in: a model pushed and deployed through the CLI (one rollout, ACKed), and some traffic (requests that succeed and
one that fails with INVALID_ARGUMENT). Both ``/metrics`` endpoints are then scraped and compared with every metric
name that the PrometheusRule, the Grafana dashboard, the prometheus-adapter rules, the KEDA trigger and the HPAs
use (:func:`assets.metric_names_used`), and with the contract ``test_monitoring.EXPORTED_METRICS`` writes down.

A labelled series exists only once something sets its labels, so this setup deliberately includes no rare event
(a failed rollout, a rejected request): the series that alerts select must exist before the event, because
``increase()`` and ``rate()`` cannot see the first increment of a series that appears with the value 1.
"""

from __future__ import annotations

import importlib
import re
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lmaas.client import ControlPlaneClient, InferenceClient, InvalidArgument
from processes import ServerProcess, start_worker
from prometheus_client.parser import text_string_to_metric_families

from .assets import metric_names_used, rule_expressions
from .test_monitoring import EXPORTED_METRICS, HISTOGRAMS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "control_plane"))
cp_harness: Any = importlib.import_module("cp_harness")  # the control-plane harness: how tests start one

MODEL = "scale"
WORKER_ID = "metrics-w1"
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")
_SELECTOR = re.compile(r"(lmaas_[a-z0-9_]+)\s*\{([^}]*)\}")
_LITERAL_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|=)\s*"([A-Za-z0-9_|]+)"')
# Labels whose values are open-ended, so a series per value cannot exist in advance: gRPC status codes (the
# error-rate alert is a ratio that must hold for 5 minutes, so it does not depend on the first increment).
_OPEN_ENDED = frozenset({"code"})

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Scrape:
    """Samples of one /metrics page: sample name (``_total``, ``_bucket``... included) → label set → value."""

    server: str
    samples: dict[str, dict[Labels, float]]

    def names(self) -> set[str]:
        """LMaaS sample names with histogram suffixes removed, as :func:`assets.metric_names` reports them."""
        return {
            _HISTOGRAM_SUFFIX.sub("", n) for n in self.samples if n.startswith("lmaas_") and not n.endswith("_created")
        }

    def label_sets(self, metric: str) -> set[Labels]:
        """Label sets of a metric's samples (a histogram's ``_bucket`` ones without ``le``)."""
        names = [f"{metric}_bucket", f"{metric}_count", f"{metric}_sum"] if metric in HISTOGRAMS else [metric]
        return {frozenset((k, v) for k, v in labels if k != "le") for n in names for labels in self.samples.get(n, {})}

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get(name, {}).get(frozenset(labels.items()))


def scrape(server: str, process: ServerProcess) -> Scrape:
    with urllib.request.urlopen(process.metrics_url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, dict[Labels, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        if not family.samples:
            # Declared with labels but no child yet (lmaas_llm_* before an LLM is loaded): the name is exported.
            samples.setdefault(family.name + ("_total" if family.type == "counter" else ""), {})
        for sample in family.samples:
            samples[sample.name][frozenset(sample.labels.items())] = sample.value
    return Scrape(server, dict(samples))


@dataclass(frozen=True)
class Servers:
    control: ServerProcess
    worker: ServerProcess

    def scrapes(self) -> list[Scrape]:
        return [scrape("worker", self.worker), scrape("control plane", self.control)]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("metric-names")
    control: ServerProcess = cp_harness.start_control_plane(tmp)
    worker: ServerProcess | None = None
    try:
        worker = start_worker(None, "--control-plane", control.grpc, "--worker-id", WORKER_ID,
                              "--cache-dir", str(tmp / "cache"), "--autotune")  # its metrics exist when it tunes
        with ControlPlaneClient(control.grpc) as client:
            deadline = time.monotonic() + 30
            while not client.workers():
                assert time.monotonic() < deadline, "the worker did not connect:\n" + worker.output()
                time.sleep(0.05)
        model = cp_harness.write_scale_onnx(tmp / "v1" / "model.onnx", 2.0)
        cp_harness.lmaas("model", "push", MODEL, str(model), "-q", address=control.grpc)
        cp_harness.lmaas("deploy", MODEL, "1", "--wait", address=control.grpc)
        with InferenceClient(worker.grpc, timeout=10) as inference:
            for rows in (1, 2, 3):
                y = inference.infer(MODEL, {"x": np.ones((rows, 4), dtype=np.float32)})["y"]
                assert np.array_equal(y, np.full((rows, 4), 2.0, dtype=np.float32))
            with pytest.raises(InvalidArgument):
                inference.infer(MODEL, {"x": np.ones((1, 3), dtype=np.float32)})  # wrong shape
        failed = [labels for labels in scrape("worker", worker).samples.get("lmaas_inference_requests_total", {})
                  if ("code", "INVALID_ARGUMENT") in labels]
        assert failed, "the failed request left no lmaas_inference_requests_total{code=\"INVALID_ARGUMENT\"}"
        yield Servers(control, worker)
    finally:
        if worker is not None:
            worker.stop()
        control.stop()


def test_every_metric_the_assets_use_is_exported(servers: Servers) -> None:
    scrapes = servers.scrapes()
    exported = set().union(*(s.names() for s in scrapes))
    used = metric_names_used()
    assert used, "no LMaaS metric found in the monitoring assets"
    missing = sorted(used - exported)
    by_server = {s.server: sorted(s.names()) for s in scrapes}
    assert not missing, f"used by deploy/ but exported by neither server: {missing}; exported: {by_server}"


def test_alert_label_values_exist_before_the_event(servers: Servers) -> None:
    """Every literal label value an alert selects (``outcome=~"failed|rolled_back"``) has a series already."""
    scrapes = servers.scrapes()
    missing: list[str] = []
    checked = 0
    for alert, expr in rule_expressions():
        for metric, matchers in _SELECTOR.findall(expr):
            metric = _HISTOGRAM_SUFFIX.sub("", metric)
            seen = set().union(*(s.label_sets(metric) for s in scrapes))
            for label, _, values in _LITERAL_MATCHER.findall(matchers):
                if label in _OPEN_ENDED:
                    continue
                for value in values.split("|"):
                    checked += 1
                    if not any((label, value) in labels for labels in seen):
                        missing.append(f'{alert}: {metric}{{{label}="{value}"}}')
    assert checked, "no literal label matcher found in the alerts"
    assert not missing, "alerts select series that do not exist yet (create them at start-up):\n" + "\n".join(
        sorted(set(missing))
    )


def test_exported_metrics_and_labels_match_the_contract(servers: Servers) -> None:
    """What the servers export is what ``test_monitoring.EXPORTED_METRICS`` says they export: names and labels."""
    scrapes = servers.scrapes()
    exported = set().union(*(s.names() for s in scrapes))
    undocumented = sorted(exported - set(EXPORTED_METRICS))
    assert not undocumented, f"exported but missing from test_monitoring.EXPORTED_METRICS: {undocumented}"
    wrong: dict[str, tuple[list[str], list[str]]] = {}
    for metric, contract in EXPORTED_METRICS.items():
        label_sets = set().union(*(s.label_sets(metric) for s in scrapes))
        names = {frozenset(k for k, _ in labels) for labels in label_sets}
        if names and names != {contract}:
            wrong[metric] = (sorted(contract), sorted({k for n in names for k in n}))
    assert not wrong, f"label names differ from the contract (contract, exported): {wrong}"


def test_worker_and_control_plane_agree_on_the_acked_revision(servers: Servers) -> None:
    """``lmaas_worker_snapshot_revision`` (worker) is the revision the control plane saw it ACK, not 0."""
    deadline = time.monotonic() + 10  # the two are set on either side of one ACK message: allow it to travel
    while True:
        worker, control = servers.scrapes()
        acked = control.value("lmaas_control_worker_revision", worker=WORKER_ID, kind="acked")
        reported = worker.value("lmaas_worker_snapshot_revision")
        if (acked is not None and acked > 0 and reported == acked) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert acked is not None and acked > 0, control.samples.get("lmaas_control_worker_revision")
    assert reported == acked, f"the worker reports revision {reported}; the control plane saw it ACK {acked}"
