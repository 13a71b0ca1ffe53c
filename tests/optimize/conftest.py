"""The optimize tests run against real control planes and workers started with the control-plane harness.

Each test module gets one control plane (``plane``) and one client of it (``cp``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "control_plane"))

from cp_harness import start_control_plane
from lmaas.client import ControlPlaneClient
from processes import ServerProcess


@pytest.fixture(scope="module")
def plane(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_control_plane(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def cp(plane: ServerProcess) -> Iterator[ControlPlaneClient]:
    with ControlPlaneClient(plane.grpc) as client:
        yield client
