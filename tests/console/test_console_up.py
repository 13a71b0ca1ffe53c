"""``lmaas up`` prints the console's URL, and the console it serves works with the token up wrote; traffic to the
demo model shows in the statistics route (the control plane's samples of the real worker's OIP statistics) and in
the model page's charts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from console_support import login, screenshot, text_of, wait_for
from lmaas.client import InferenceClient
from selenium.webdriver.common.by import By

CONSOLE = re.compile(r"web console\s+(http://\S+/)\s")


def test_lmaas_up_prints_the_console_url_and_charts_the_demo_models_traffic(browser: Any, tmp_path: Path) -> None:
    state = tmp_path / "up"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmaas.cli", "up", "--state-dir", str(state), "--control-plane-port", "0",
         "--control-plane-metrics-port", "0", "--control-plane-http-port", "0", "--worker-port", "0",
         "--worker-metrics-port", "0", "--worker-http-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    printed = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if CONSOLE.search(line):
                printed.set()
        printed.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert printed.wait(120) and proc.poll() is None, "".join(lines)
        url = next(m.group(1) for m in map(CONSOLE.search, lines) if m)
        ready = next(x for x in lines if x.startswith("lmaas up ready"))
        fields = dict(f.split("=", 1) for f in ready.split()[3:])
        assert url == f"http://{fields['control-plane-http']}/"
        token = (state / "admin.token").read_text().strip()
        api = httpx.Client(base_url=url + "api/v1", headers={"authorization": f"Bearer {token}"}, timeout=30)

        def served() -> int:
            stats = api.get("/models/demo/statistics").json()
            assert stats["unreachable"] == [], stats
            return sum(v["requests"] for v in stats["versions"])

        before = served()
        login(browser, url.rstrip("/"), token)
        browser.get(url + "#/models/demo")
        wait_for(browser, lambda d: d.find_elements(By.ID, "version-1"), "the demo model's page")
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        with InferenceClient(fields["worker"]) as client:
            for _ in range(20):
                client.infer("demo", {"x": x})
        # the worker's counters, read through the control plane (a new sample every few seconds)
        deadline = time.monotonic() + 60
        while (count := served() - before) < 20 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert count == 20
        # the page samples every few seconds: a line appears once two samples span the requests
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#charts path.line"), "a charted line", 60)
        label = browser.find_element(By.CSS_SELECTOR, "#charts svg").get_attribute("aria-label")
        assert label.startswith("Requests. v1: "), label
        screenshot(browser, "model-traffic", "Model demo", readme=True)
        assert "demo" in text_of(browser, "main h1")
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, "".join(lines)
