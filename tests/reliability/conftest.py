"""Fixtures of the reliability tests: real etcd clusters and a fleet of real LMaaS processes stopped at teardown.

The control-plane test harness (``tests/control_plane/cp_harness.py``) starts the processes; its folder is put on
``sys.path`` here so these modules can import it as the control-plane tests do.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "control_plane"))

from etcd_cluster import EtcdCluster, etcd_binary
from reliability_fleet import Fleet


def _require_etcd() -> None:
    if etcd_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("etcd is not installed; .ci/install-system.sh should have installed etcd-server")
        pytest.skip("etcd is not installed (apt-get install etcd-server)")


@pytest.fixture()
def etcd1() -> Iterator[EtcdCluster]:
    """A fresh single-member etcd on loopback (its data dir survives stop/start, for cold restarts)."""
    _require_etcd()
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture()
def etcd3() -> Iterator[EtcdCluster]:
    """A fresh 3-member etcd cluster on loopback (etcd's default 100/1000 ms heartbeat/election)."""
    _require_etcd()
    with EtcdCluster(3) as cluster:
        yield cluster


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Control planes and workers started by a test; all stopped (SIGKILL after a grace) at teardown."""
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.stop_all()
