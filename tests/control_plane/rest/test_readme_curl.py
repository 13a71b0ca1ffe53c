"""The README's curl examples, each run as a subprocess against a live ``lmaas up`` on its default ports.

:data:`EXAMPLES` is read from the README block, verbatim (after ``lmaas up`` and the quick tour's
``export LMAAS_TOKEN=$(cat .lmaas/up/admin.token)``; ``model.onnx`` and ``model-v2.onnx`` stand for the
user's files, which the test writes). :data:`EXPECT` holds what each answer must contain.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cp_harness import write_scale_onnx
from processes import running_up

README = Path(__file__).resolve().parents[3] / "README.md"
MARKER = "<!-- curl-examples:"


def readme_examples() -> list[str]:
    """The ``curl`` lines of the README block under :data:`MARKER`, in order (comments skipped)."""
    text = README.read_text()
    block = text[text.index(MARKER):]
    block = block[block.index("```bash\n") + len("```bash\n"):]
    block = block[: block.index("```")]
    return [line for line in block.splitlines() if line.startswith("curl ")]


EXAMPLES = readme_examples()

EXPECT = [
    '"data":[1.0,3.0,5.0,7.0]',
    '"version":1,',
    '"version":2,',
    '"stable_version":1',
    '"phase":"succeeded"',
    '"canary_version":2,"canary_weight":30',
    '"reason":"rollback"',
    '"history":[',
    '"parent_version":0',
]
PORTS = (8000, 8001, 8002, 8080, 8090, 8091)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture()
def up(tmp_path: Path) -> Iterator[Path]:
    """``lmaas up`` with its defaults, in ``tmp_path`` (state in .lmaas/up, as for a user in a fresh clone)."""
    busy = [p for p in PORTS if not _free(p)]
    if busy:
        pytest.skip(f"lmaas up's default ports are in use: {busy}")
    with running_up([], cwd=tmp_path) as up:
        assert "control-plane-http=127.0.0.1:8080" in up.ready_line and "worker-http=127.0.0.1:8000" in up.ready_line
        yield tmp_path


def test_readme_curl_examples(up: Path) -> None:
    write_scale_onnx(up / "model.onnx", 2.0)
    write_scale_onnx(up / "model-v2.onnx", 3.0)
    token = (up / ".lmaas" / "up" / "admin.token").read_text().strip()
    env = {**os.environ, "LMAAS_TOKEN": token}
    assert len(EXAMPLES) == len(EXPECT)
    for command, expected in zip(EXAMPLES, EXPECT, strict=True):
        done = subprocess.run(["bash", "-c", command], cwd=up, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (command, done.stderr)
        assert expected in done.stdout, (command, done.stdout)
        if "rollout/events" not in command:
            json.loads(done.stdout)  # one JSON document per answer
