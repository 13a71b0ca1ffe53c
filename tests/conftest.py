"""Fixtures chained the way production wires things: models → repository → worker process → clients."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# Workers started by tests skip the load-time self-tune (0.3-0.7 s per ONNX version, and its choice depends on how
# busy the machine is); tests/server/test_autotune.py turns it on with --autotune.
os.environ.setdefault("LMAAS_AUTOTUNE", "0")

from models import build_repository
from processes import ServerProcess, start_worker


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session")
def mlp_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Just the ONNX MLP: for tests that start workers of their own (starts in well under a second)."""
    root = tmp_path_factory.mktemp("mlp-repo")
    shutil.copytree(model_repository / "mlp", root / "mlp")
    return root


@pytest.fixture(scope="session")
def worker(model_repository: Path) -> Iterator[ServerProcess]:
    """One worker serving the standard test repository for the whole session."""
    proc = start_worker(model_repository)
    yield proc
    proc.stop()


@pytest.fixture()
def triton(worker: ServerProcess):  # type: ignore[no-untyped-def]
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(worker.grpc)
    yield client
    client.close()


@pytest.fixture(scope="session")
def binary() -> str:
    """perf_analyzer's path: CI must have it (.ci/install-perf-analyzer.sh); elsewhere its tests skip."""
    from benchmarks.perf_analyzer import perf_analyzer_path

    path = perf_analyzer_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("perf_analyzer is not installed; .ci/install-perf-analyzer.sh should have installed it")
        pytest.skip("perf_analyzer is not installed (run .ci/install-perf-analyzer.sh .venv)")
    return path
