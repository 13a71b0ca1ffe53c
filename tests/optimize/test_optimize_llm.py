"""``int8-dynamic`` on an LLM directory version: a real control plane, SmolLM2 pushed as a directory, the derived
int8 version pushed with its Derivation (lineage, teacher-forced accuracy figures, decode speed-ups)."""

from __future__ import annotations

import json
import re

import pytest
from cp_harness import lmaas
from llm_support import smollm2_dir
from lmaas.client.control import ControlPlaneClient
from lmaas.optimize import optimize
from lmaas.protos.errors import FailedPrecondition
from processes import ServerProcess


@pytest.fixture(scope="module")
def smol(cp: ControlPlaneClient) -> int:
    return cp.push("smol", smollm2_dir()).version


def test_int8_dynamic_derives_an_llm_version_with_lineage_and_figures(cp: ControlPlaneClient, plane: ServerProcess,
                                                                      smol: int) -> None:
    run = lmaas("model", "optimize", "smol", str(smol), "--recipe", "int8-dynamic", "--seconds", "0.05",
                address=plane.grpc, timeout=600)
    match = re.search(r"^smol: derived version (\d+) of version \d+ by int8-dynamic: .*x at batch 8", run.stdout, re.M)
    assert match, run.stdout
    v = cp.get_version("smol", int(match.group(1)))
    assert v.format == "llm" and v.parent_version == smol
    d = v.derivation
    assert d.recipe == "int8-dynamic"
    assert json.loads(d.params["method"]) == "lmaas-int8"
    assert d.accuracy.reference == "parent-teacher-forced" and d.accuracy.samples == 4 * 16
    assert d.accuracy.top1_agreement >= 0.8  # never exact greedy text: next-token agreement on the parent's path
    assert json.loads(d.params["top5_overlap"]) >= 0.7
    assert 0 < d.accuracy.max_rel_error <= d.max_error
    assert [m.batch for m in d.speed] == [1, 8] and all(m.speedup > 0 for m in d.speed)
    assert d.size_bytes < 0.5 * d.parent_size_bytes
    assert "quantising" in run.stderr  # progress of the long steps


def test_an_onnx_only_recipe_on_an_llm_version_is_refused_naming_it(cp: ControlPlaneClient, smol: int) -> None:
    with pytest.raises(FailedPrecondition, match=r"'fp16'.*'smol'.*'llm'"):
        optimize(cp, "smol", smol, "fp16", seconds=0.05)


def test_a_gate_below_the_error_registers_nothing(cp: ControlPlaneClient, smol: int) -> None:
    before = len(cp.list_versions("smol"))
    with pytest.raises(FailedPrecondition, match="over the accuracy gate"):
        optimize(cp, "smol", smol, "int8-dynamic", max_error=1e-9, seconds=0.05)
    assert len(cp.list_versions("smol")) == before
