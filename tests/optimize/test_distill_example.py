"""``clients/examples/distill.py`` against a real control plane (auth on, a deployer token): the demo teacher is
pushed, the student is distilled from the downloaded teacher and pushed as a derived version whose recipe
names the teacher; a student held to an impossible agreement is refused and nothing is pushed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cp_harness import lmaas
from lmaas.client.control import ControlPlaneClient
from processes import ServerProcess

EXAMPLE = Path(__file__).resolve().parents[2] / "clients" / "examples" / "distill.py"
SMALL = ("--teacher-steps", "120", "--samples", "1024", "--epochs", "3", "--seconds", "0.05")


def run_example(plane: ServerProcess, token: str, report: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLE), "--control-plane", plane.grpc, "--token", token,
                           "--report", str(report), *SMALL, *extra], capture_output=True, text=True, timeout=600)


def test_the_student_is_a_derived_version_naming_its_teacher(plane: ServerProcess, tmp_path: Path) -> None:
    with ControlPlaneClient(plane.grpc) as cp:
        deployer = str(cp.create_token("deployer", description="distill example").secret)
        run = run_example(plane, deployer, tmp_path / "r.json", "--push-teacher")
        assert run.returncode == 0, run.stdout + run.stderr
        report = json.loads((tmp_path / "r.json").read_text())
        teacher, student = report["teacher_version"], report["student_version"]
        assert f"distill-demo: derived version {student} (distill of version {teacher})" in run.stdout
        v = cp.get_version("distill-demo", student)
        d = v.derivation
        assert v.parent_version == teacher and d.recipe == "distill"
        assert json.loads(d.params["teacher"]) == f"distill-demo:{teacher}"
        assert json.loads(d.params["student"]) == {"d_model": 32, "layers": 1, "heads": 2}
        assert d.accuracy.reference == "eval-parent" and d.accuracy.samples == 256
        assert d.accuracy.top1_agreement >= 0.9 and d.accuracy.max_abs_error > 0
        assert d.size_bytes < d.parent_size_bytes / 4 and [m.batch for m in d.speed] == [1, 8]
        tree = lmaas("model", "versions", "distill-demo", address=plane.grpc).stdout
        assert f"v{student} distill" in tree and "top-1" in tree, tree

        refused = run_example(plane, deployer, tmp_path / "r2.json", "--min-top1", "1.01")
        assert refused.returncode == 1 and "nothing pushed" in refused.stdout, refused.stdout + refused.stderr
        assert json.loads((tmp_path / "r2.json").read_text())["student_version"] is None
        assert cp.get_model("distill-demo").latest_version == student
