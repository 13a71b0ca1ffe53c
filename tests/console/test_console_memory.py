"""Without Prometheus: the workers page shows a real worker's memory (used / its --memory-limit, and what each
held version took, measured), and the model page charts p50 / p99 latency from the control plane's own
aggregation of the latency histograms the worker reports on its sync stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tritonclient.grpc as tc
from console_support import login, screenshot, text_of, wait_for
from cp_harness import ADMIN_TOKEN, lmaas, start_control_plane
from processes import start_worker
from selenium.webdriver.common.by import By
from test_worker_memory import write_matmul


def test_workers_memory_and_a_p50_chart_without_prometheus(browser: Any, tmp_path: Path) -> None:
    control = start_control_plane(tmp_path)
    worker = start_worker(None, "--control-plane", control.grpc, "--worker-id", "mem-worker", "--memory-limit",
                          "300MiB", "--report-every", "1", "--cache-dir", str(tmp_path / "cache"),
                          "--token", ADMIN_TOKEN)
    cli = {"LMAAS_TOKEN": ADMIN_TOKEN}
    try:
        lmaas("model", "push", "scale", str(write_matmul(tmp_path / "scale.onnx", 2048)), "-q",  # a 16 MiB weight
              address=control.grpc, env=cli)
        lmaas("deploy", "scale", "1", "--wait", address=control.grpc, env=cli)
        base = control.http_url
        login(browser, base)
        browser.get(base + "/#/workers")
        memory = wait_for(browser, lambda d: text_of(d, '.memory[data-worker="mem-worker"] .memory-text'),
                          "the worker's memory")
        used, capacity = memory.split(" / ")
        assert capacity == "300.0 MiB" and used.endswith("MiB"), memory
        meter = browser.find_element(By.CSS_SELECTOR, '.memory[data-worker="mem-worker"] meter')
        assert 0 < float(meter.get_attribute("value")) < 1
        held = wait_for(browser, lambda d: "peak" in text_of(d, 'li[data-model="scale"]')
                        and text_of(d, 'li[data-model="scale"]'), "the held version's measured memory")
        assert held.startswith("scale v1 ") and "MiB (peak" in held, held
        assert float(held.split()[2]) >= 12, held  # the 16 MiB weight, measured
        screenshot(browser, "workers-memory", "Workers")

        browser.get(base + "/#/models/scale")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#charts svg"), "the model's charts")
        x = tc.InferInput("x", [1, 2048], "FP32")
        x.set_data_from_numpy(np.ones((1, 2048), np.float32))
        with tc.InferenceServerClient(worker.grpc) as client:
            for _ in range(50):
                client.infer("scale", [x])

        def p50_chart(d: Any) -> str:
            for chart in d.find_elements(By.CSS_SELECTOR, "#charts svg"):
                label = chart.get_attribute("aria-label") or ""
                if label.startswith("Latency p50 / p99.") and "v1 p50: no data" not in label:
                    return str(label)
            return ""

        label = wait_for(browser, p50_chart, "a p50 / p99 chart from the workers' histograms", 90)
        assert "v1 p50: " in label and "v1 p99: " in label, label
        assert "aggregation of the latency histograms" in text_of(browser, "#charts-source")
        stats = httpx.get(f"{base}/api/v1/models/scale/statistics",
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10).json()
        assert stats["source"] == "workers"
        p50s = [p["p50_latency_ms"] for v in stats["versions"] for p in v["points"] if p["p50_latency_ms"]]
        p99s = [p["p99_latency_ms"] for v in stats["versions"] for p in v["points"] if p["p99_latency_ms"]]
        assert p50s and all(0 < p <= 100 for p in p50s), stats  # one 2048-by-2048 MatMul: well under 100 ms
        assert all(q >= p for p, q in zip(p50s, p99s, strict=True))
        screenshot(browser, "model-latency", "Model scale")
    finally:
        worker.stop()
        control.stop()
