"""The Node.js client's own tests (``npm test`` in clients/node), so that pytest covers them.

They spawn their own worker and control plane with this interpreter (``LMAAS_PYTHON``). Without
``clients/node/node_modules`` (``npm ci`` there) the test is skipped, except under ``CI=true``, where
``.ci/install.sh`` has installed it and its absence is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"
IN_CI = os.environ.get("CI", "").lower() == "true"


def _require(condition: bool, why: str) -> None:
    if not condition:
        if IN_CI:
            pytest.fail(f"{why} (CI=true)")
        pytest.skip(why)


@pytest.mark.timeout(600)
def test_node_client() -> None:
    npm = shutil.which("npm")
    _require(npm is not None and shutil.which("node") is not None, "node and npm are not installed")
    _require((NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run `npm ci` in clients/node first")
    assert npm is not None
    env = {**os.environ, "LMAAS_PYTHON": sys.executable}
    proc = subprocess.run([npm, "test"], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=540)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-20000:]
    assert "# fail 0" in output, output[-20000:]
