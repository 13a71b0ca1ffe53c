"""``buf lint`` over protos/ with protos/buf.yaml (STANDARD + COMMENTS, minus the OIP v2 wire contract).

buf comes from npm: it is a devDependency of clients/node (``npm ci`` there installs it). Without it the
test is skipped, except under ``CI=true``, where its absence is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "clients" / "node" / "node_modules" / ".bin" / "buf"


@pytest.fixture(scope="module")
def buf() -> Path:
    if not BUF.exists():
        why = "buf is not installed (run `npm ci` in clients/node)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why} (CI=true)")
        pytest.skip(why)
    return BUF


def test_buf_lint(buf: Path) -> None:
    proc = subprocess.run([str(buf), "lint", "protos"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_buf_lint_still_checks_inference(buf: Path, tmp_path: Path) -> None:
    """The exclusions are per rule and path: a new file in protos/inference/ is still linted."""
    module = tmp_path / "protos"
    (module / "inference").mkdir(parents=True)
    (module / "buf.yaml").write_text((ROOT / "protos" / "buf.yaml").read_text())
    (module / "inference" / "extra.proto").write_text(
        'syntax = "proto3";\npackage inference;\nmessage extra_thing { string Bad_Name = 1; }\n'
    )
    proc = subprocess.run([str(buf), "lint", str(module), "--error-format", "json"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    for rule in ("MESSAGE_PASCAL_CASE", "FIELD_LOWER_SNAKE_CASE", "COMMENT_MESSAGE", "COMMENT_FIELD"):
        assert f'"type":"{rule}"' in proc.stdout, rule
    assert "PACKAGE_VERSION_SUFFIX" not in proc.stdout  # excluded for protos/inference


def test_buf_build_matches_python_descriptors(buf: Path, tmp_path: Path) -> None:
    """buf compiles exactly the files the Python stubs were generated from."""
    image = tmp_path / "image.json"
    subprocess.run([str(buf), "build", "protos", "-o", str(image)], cwd=ROOT, check=True, timeout=120)
    files = {f["name"] for f in json.loads(image.read_text())["file"]}
    expected = {str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto")}
    assert expected <= files
