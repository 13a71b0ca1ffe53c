"""With a Prometheus server configured (``prometheus_url``), the statistics route answers from its range queries:
request rate, errors, mean and p50/p99 latency per version of a real worker that Prometheus scrapes (Debian's
``prometheus``), and the model page charts p50 / p99."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from console_support import Plane, login, screenshot, wait_for
from cp_harness import ADMIN_TOKEN, lmaas, write_scale_onnx
from lmaas.client import InferenceClient
from processes import ServerProcess, start_worker
from selenium.webdriver.common.by import By

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (.ci/install-system.sh)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture()
def scraped(tmp_path: Path) -> Iterator[tuple[Plane, ServerProcess]]:
    """Prometheus scraping a real worker every second; the control plane the worker syncs to queries it."""
    port = _free_port()
    plane = Plane(tmp_path, workers=(), prometheus_url=f"http://127.0.0.1:{port}")
    prometheus: subprocess.Popen[bytes] | None = None
    w: ServerProcess | None = None
    try:
        w = start_worker(None, "--control-plane", plane.grpc, "--worker-id", "scraped", "--cache-dir",
                         str(tmp_path / "cache"))
        config = tmp_path / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                          f"  - job_name: lmaas-worker\n    static_configs:\n      - targets: ['{w.metrics}']\n")
        prometheus = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert prometheus.poll() is None and time.monotonic() < deadline, "prometheus did not start"
            time.sleep(0.2)
        yield plane, w
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(30)
        if w is not None:
            w.stop()
        plane.close()


def test_statistics_from_prometheus_with_percentiles(scraped: tuple[Plane, ServerProcess], browser: Any,
                                                    tmp_path: Path) -> None:
    plane, w = scraped
    model = write_scale_onnx(tmp_path / "scale.onnx", 2.0)
    assert lmaas("model", "push", "scale", str(model), "-q", address=plane.grpc).stdout.strip() == "1"
    lmaas("deploy", "scale", "1", "--wait", address=plane.grpc, timeout=120)
    x = np.ones((1, 4), dtype=np.float32)
    prometheus = plane.overrides["prometheus_url"]
    with InferenceClient(w.grpc) as client:
        client.infer("scale", {"x": x})  # the series exists; a rate counts only what comes after its first scrape
        deadline = time.monotonic() + 60
        while not httpx.get(f"{prometheus}/api/v1/query", params={
                "query": 'lmaas_inference_requests_total{model="scale"}'}).json()["data"]["result"]:
            assert time.monotonic() < deadline, "prometheus never scraped the worker"
            time.sleep(0.2)
        for _ in range(29):
            client.infer("scale", {"x": x})
    api = httpx.Client(base_url=plane.url + "/api/v1", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    deadline = time.monotonic() + 90
    while True:  # the next scrape, then the next point of the range query, shows them
        stats = api.get("/models/scale/statistics").json()
        points = [p for v in stats["versions"] for p in v["points"] if p["p50_latency_ms"] is not None]
        if points and stats["versions"][0]["requests"] == 30:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(1)
    assert stats["source"] == "prometheus" and [v["version"] for v in stats["versions"]] == [1]
    assert stats["versions"][0]["errors"] == 0
    assert all(0 < p["p50_latency_ms"] <= p["p99_latency_ms"] for p in points), points
    assert any(p["requests_per_s"] > 0 for p in points)

    login(browser, plane.url)
    browser.get(plane.url + "/#/models/scale")
    chart = wait_for(browser, lambda d: [s for s in d.find_elements(By.CSS_SELECTOR, "#charts svg")
                                         if s.get_attribute("aria-label").startswith("Latency p50 / p99.")],
                     "the p50 / p99 chart")[0]
    assert "v1 p50: " in chart.get_attribute("aria-label")
    assert "From Prometheus" in browser.find_element(By.ID, "charts-source").text
    screenshot(browser, "model-prometheus", "Model scale")
