"""20 load/unload cycles of a 64 MiB model in a real worker: memory comes back, and each load is measured.
``pytest -m soak tests/server/test_memory_cycles.py`` runs the 100 cycles issue 12 names.

With glibc's defaults RSS would ratchet up by several times the model over such cycles (see the research notes);
the worker trims the heap after each unload. Each cycle also checks the figure the worker exports
(``lmaas_model_memory_bytes``) against the RSS change this test reads from /proc around the load.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tc
from processes import start_worker

sys.path.insert(0, str(Path(__file__).parents[1] / "control_plane"))
from test_worker_memory import MIB, rss, write_matmul


def model_memory(metrics_url: str) -> float | None:
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        if line.startswith('lmaas_model_memory_bytes{model="big",version="1"}'):
            return float(line.split()[-1])
    return None


@pytest.mark.timeout(900)
@pytest.mark.parametrize("cycles", [20, pytest.param(100, marks=pytest.mark.soak)])
def test_load_unload_cycles_give_memory_back_and_are_measured(tmp_path: Path, cycles: int) -> None:
    (tmp_path / "big" / "1").mkdir(parents=True)
    write_matmul(tmp_path / "big" / "1" / "model.onnx")
    proc = start_worker(tmp_path, "--memory-limit", "1GiB")
    pid = proc.proc.pid
    client = tc.InferenceServerClient(proc.grpc)
    x = tc.InferInput("x", [1, 4096], "FP32")
    x.set_data_from_numpy(np.ones((1, 4096), np.float32))
    try:
        client.unload_model("big")
        baseline = rss(pid)  # after one load (at startup) and unload: allocator arenas exist
        assert model_memory(proc.metrics_url) is None  # the unloaded version's series is gone
        worst = 0.0
        for _ in range(cycles):
            before = rss(pid)
            client.load_model("big")
            change = rss(pid) - before
            measured = model_memory(proc.metrics_url)
            assert measured is not None
            worst = max(worst, abs(measured - change) / change)
            client.infer("big", [x])
            client.unload_model("big")
        final = rss(pid)
        print(f"RSS baseline {baseline / MIB:.0f} MiB, after {cycles} cycles {final / MIB:.0f} MiB; "
              f"measured vs RSS change: worst {worst:.1%}")
        assert final <= baseline * 1.10
        assert worst <= 0.25
    finally:
        client.close()
        proc.stop()
