"""Fixtures of the console tests (helpers in :mod:`console_support`): a control plane with two workers in a
thread of its own, a reader token, and a headless Chromium."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from console_support import Plane, new_browser
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb


@pytest.fixture()
def plane(tmp_path: Path) -> Iterator[Plane]:
    p = Plane(tmp_path)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture()
def reader_token(plane: Plane) -> str:
    return plane.token(pb.ROLE_READER, "console reader")


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Any]:
    driver = new_browser(tmp_path)
    try:
        yield driver
    finally:
        driver.quit()
