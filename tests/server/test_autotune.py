"""Load-time self-tune (server/autotune.py) through real worker processes and tritonclient.

One worker tunes (the default), one runs with ``--no-autotune``. What the tune chose must be what serves (the
ModelConfig instance count), explicit config parameters must win over it, and the duration it reports must stay
within the budget it reports.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from lmaas.server.autotune import MARGIN, _choose, candidates
from lmaas.server.backends.onnx import default_threads
from models import mlp_reference, write_mlp_onnx
from processes import ServerProcess, start_worker

_CANDIDATE = re.compile(r"^(\d+)x(\d+)=(\d+/s|skipped)$")
CORES = len(os.sched_getaffinity(0))  # the worker subprocess inherits this affinity


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("autotune-repo")
    write_mlp_onnx(root / "free" / "1" / "model.onnx")
    write_mlp_onnx(root / "threads" / "1" / "model.onnx")
    (root / "threads" / "config.json").write_text(json.dumps({"parameters": {"intra_op_threads": 1}}))
    write_mlp_onnx(root / "both" / "1" / "model.onnx")
    (root / "both" / "config.json").write_text(json.dumps({"instance_count": 2, "parameters": {"intra_op_threads": 1}}))
    return root


def _worker(repo: Path, *extra: str) -> Iterator[tuple[ServerProcess, tc.InferenceServerClient]]:
    proc = start_worker(repo, *extra)  # returns once listening: the repository loaded (and tuned) before
    client = tc.InferenceServerClient(proc.grpc)
    try:
        for name in ("free", "threads", "both"):
            assert client.is_model_ready(name), proc.output()
        yield proc, client
    finally:
        client.close()
        proc.stop()


@pytest.fixture(scope="module")
def tuned(repo: Path) -> Iterator[tuple[ServerProcess, tc.InferenceServerClient]]:
    yield from _worker(repo, "--autotune")  # the default (tests/conftest.py turns it off for the other tests)


@pytest.fixture(scope="module")
def untuned(repo: Path) -> Iterator[tuple[ServerProcess, tc.InferenceServerClient]]:
    yield from _worker(repo, "--no-autotune")


def _config(client: tc.InferenceServerClient, name: str) -> tuple[dict[str, str], int]:
    cfg = client.get_model_config(name, as_json=True)["config"]
    params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
    return params, int(cfg["instance_group"][0]["count"])


def _infer_matches(client: tc.InferenceServerClient, name: str) -> None:
    x = np.random.default_rng(3).standard_normal((2, 4), dtype=np.float32)
    inp = tc.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    got = client.infer(name, [inp]).as_numpy("y")
    np.testing.assert_allclose(got, mlp_reference(x), rtol=1e-5, atol=1e-6)


def test_tune_measures_candidates_and_serves_the_choice(
    tuned: tuple[ServerProcess, tc.InferenceServerClient],
) -> None:
    proc, client = tuned
    params, instances = _config(client, "free")
    if len(candidates(CORES, None, None)) == 1:  # one usable core: nothing to choose
        assert params["autotune"] == "skipped: one candidate", params
        return
    # A busy host (other programs on these cores meanwhile) keeps the default, figures still shown.
    busy = params["autotune"].startswith("skipped: host busy")
    assert params["autotune"] == "tuned" or busy, params
    measured = params["autotune_candidates"].split()
    assert measured and all(_CANDIDATE.match(c) for c in measured), measured
    pairs = [tuple(int(g) for g in _CANDIDATE.match(c).groups()[:2]) for c in measured]  # type: ignore[union-attr]
    # The loaded default first, then the other candidates for these cores (each measured or skipped for budget).
    assert pairs[0] == (1, default_threads(1)) and sorted(pairs) == sorted(candidates(CORES, None, None)), pairs
    chosen = (int(params["autotune_instances"]), int(params["autotune_intra_op_threads"]))
    assert chosen in pairs
    if busy:
        assert chosen == (1, default_threads(1))
    assert instances == chosen[0]  # the instance count that serves is the one chosen
    assert float(params["autotune_seconds"]) <= float(params["autotune_budget_seconds"])
    _infer_matches(client, "free")
    assert any(
        f"autotune model=free version=1 chose instances={chosen[0]} intra_op_threads={chosen[1]}" in line
        for line in proc.log
    ), proc.output()
    with urllib.request.urlopen(proc.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    assert f'lmaas_model_autotune_choice{{model="free",setting="instances",version="1"}} {chosen[0]}.0' in text
    assert 'lmaas_model_autotune_seconds{model="free",version="1"}' in text


def test_explicit_threads_are_kept(tuned: tuple[ServerProcess, tc.InferenceServerClient]) -> None:
    _, client = tuned
    params, instances = _config(client, "threads")
    assert params["intra_op_threads"] == "1"
    if len(candidates(CORES, None, 1)) == 1:
        assert params["autotune"] == "skipped: one candidate", params
        return
    assert params["autotune_intra_op_threads"] == "1"
    assert all(c.split("=")[0].endswith("x1") for c in params["autotune_candidates"].split()), params
    assert instances == int(params["autotune_instances"])
    _infer_matches(client, "threads")


def test_explicit_threads_and_instances_are_not_tuned(tuned: tuple[ServerProcess, tc.InferenceServerClient]) -> None:
    proc, client = tuned
    params, instances = _config(client, "both")
    assert params["autotune"] == "explicit"
    assert "autotune_candidates" not in params
    assert (params["intra_op_threads"], instances) == ("1", 2)
    assert any("autotune model=both version=1 explicit" in line for line in proc.log), proc.output()


def test_no_autotune_flag_skips_the_tune(untuned: tuple[ServerProcess, tc.InferenceServerClient]) -> None:
    proc, client = untuned
    for name in ("free", "threads", "both"):
        params, _ = _config(client, name)
        assert not any(k.startswith("autotune") for k in params), params
    assert _config(client, "free")[1] == 1
    assert not any("autotune model=" in line for line in proc.log), proc.output()
    _infer_matches(client, "free")


def test_candidates_use_the_cores_and_respect_fixed_counts() -> None:
    assert candidates(2, None, None) == [(1, 2), (2, 1), (1, 1)]
    assert candidates(8, None, None) == [(1, 8), (2, 4), (4, 2), (8, 1), (1, 1)]
    assert candidates(4, 2, None) == [(2, 2), (2, 1)]
    assert candidates(4, None, 1) == [(1, 1), (2, 1), (4, 1)]
    assert candidates(1, None, None) == [(1, 1)]


def test_the_default_stays_unless_clearly_beaten() -> None:
    default = (1, 2)
    assert _choose({default: 100.0, (2, 1): 100.0 * MARGIN * 0.99}, default) == default
    # 2 x 1 wins only where its throughput outweighs the lone request's loss (the 1 x 1 speed): geometric mean
    assert _choose({default: 100.0, (2, 1): 130.0, (1, 1): 90.0}, default) == (2, 1)  # 108 vs 100
    assert _choose({default: 320.0, (2, 1): 378.0, (1, 1): 196.0}, default) == default  # the CNN here: 272 vs 320
    assert _choose({default: 425.0, (2, 1): 734.0, (1, 1): 376.0}, default) == (2, 1)  # the transformer: 525 vs 425
    assert _choose({(2, 1): 5.0}, default) == (2, 1)  # the default could not be measured
    assert _choose({}, default) == default


async def test_a_version_measured_slower_batched_runs_requests_one_at_a_time(tmp_path: Path) -> None:
    from lmaas.server.autotune import COMBINE, Autotuner
    from lmaas.server.backends.onnx import OnnxBackend
    from lmaas.server.config import ModelConfig
    from lmaas.server.metrics import WorkerMetrics
    from lmaas.server.models import ModelVersion
    from prometheus_client import CollectorRegistry

    write_mlp_onnx(tmp_path / "m.onnx")
    registry = CollectorRegistry()
    config = ModelConfig(parameters={COMBINE: "no"})
    mv = ModelVersion("m", 1, OnnxBackend(tmp_path / "m.onnx", {}), config, WorkerMetrics(registry).for_model("m", 1))
    Autotuner(None).apply(mv)
    assert mv.max_batch_size > 1  # what clients may send is unchanged; only combining stops
    mv.start()
    labels = {"model": "m", "version": "1"}
    try:
        x = np.zeros((1, 4), np.float32)
        await asyncio.gather(*(mv.batcher.submit({"x": x}, 1, None) for _ in range(8)))
        assert registry.get_sample_value("lmaas_inference_executions_total", labels) == 8
    finally:
        await mv.drain_and_close(5)
