"""Fixtures of the control-plane tests (load with ``pytest_plugins = ["cp_fixtures"]``): a running control plane
on the ``store`` fixture (SQLite and etcd), and stubs on a channel to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cp_harness import Stubs, channel, running
from lmaas.control_plane.app import ControlPlane
from lmaas.control_plane.store.base import Store


@pytest.fixture()
async def cp(store: Store, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    async with running(store, tmp_path) as plane:
        yield plane


@pytest.fixture()
async def stubs(cp: ControlPlane) -> AsyncIterator[Stubs]:
    async with channel(cp) as ch:
        yield Stubs(ch)
