"""Optimised versions over REST and with scoped tokens: a real control plane (auth on), httpx, the real CLI.

``POST /api/v1/models/{name}/versions/{version}/derived`` registers an uploaded artifact with the derivation the
client measured; ``GET /api/v1/models/{name}/lineage`` is the tree. A deployer token runs ``lmaas model
optimize`` (it may download the parent); a reader token may not.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
from cp_harness import lmaas
from lmaas.client.control import ControlPlaneClient
from lmaas.control_plane.rest import schemas
from lmaas.optimize import derive
from lmaas.optimize.base import Job, Made
from lmaas.optimize.evaldata import sample_inputs
from models import write_mlp_onnx
from processes import ServerProcess


def token(cp: ControlPlaneClient, role: str) -> str:
    return str(cp.create_token(role, description=f"optimize rest {role}").secret)


def http(plane: ServerProcess, secret: str) -> httpx.Client:
    return httpx.Client(base_url=plane.http_url, headers={"authorization": f"Bearer {secret}"}, timeout=60)


def fp16_derivation(parent: Path, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """fp16 of ``parent`` made and measured here (as a REST client would), and its derivation as REST JSON."""
    dst = tmp / "half.onnx"
    data = sample_inputs(onnx.load(str(parent)), 16)
    d, _ = derive(Job("m", 1, "fp16", parent, dst, data), eval_set=data, seconds=0.05)
    return dst, schemas.derivation(d).model_dump()  # the JSON GET /api/v1/models/.../versions/N answers


def upload(client: httpx.Client, path: Path) -> str:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    reply = client.put(f"/api/v1/artifacts/{digest}", content=data,
                       headers={"content-type": "application/octet-stream"})
    assert reply.status_code == 200, reply.text
    return digest


def mlp(path: Path, seed: int = 0) -> Path:
    write_mlp_onnx(path, seed=seed)
    return path


def test_rest_registers_a_derived_version_and_shows_the_lineage(cp: ControlPlaneClient, plane: ServerProcess,
                                                                 tmp_path: Path) -> None:
    parent_path = mlp(tmp_path / "mlp.onnx")
    parent = cp.push("restmlp", parent_path).version
    half, derivation = fp16_derivation(parent_path, tmp_path)
    with http(plane, token(cp, "deployer")) as deployer:
        digest = upload(deployer, half)
        reply = deployer.post(f"/api/v1/models/restmlp/versions/{parent}/derived", json={
            "digest": digest, "description": "fp16 made by a REST client", "derivation": derivation})
        assert reply.status_code == 201, reply.text
        made = reply.json()
        assert made["parent_version"] == parent and made["derivation"]["recipe"] == "fp16"
        assert made["derivation"]["accuracy"]["max_abs_error"] == pytest.approx(
            derivation["accuracy"]["max_abs_error"])
        again = deployer.post(f"/api/v1/models/restmlp/versions/{parent}/derived", json={
            "digest": digest, "description": "fp16 made by a REST client", "derivation": derivation})
        assert again.status_code == 200 and again.json()["existing"] and again.json()["version"] == made["version"]

        # the same store over gRPC: the version message carries the derivation
        v = cp.get_version("restmlp", made["version"])
        assert v.parent_version == parent and v.derivation.recipe == "fp16"
        assert [m.batch for m in v.derivation.speed] == [1, 8]

        # a child of the derived version, so the tree has depth 2
        child = deployer.post(f"/api/v1/models/restmlp/versions/{made['version']}/derived", json={
            "digest": upload(deployer, parent_path), "derivation": {**derivation, "recipe": "compress"}})
        assert child.status_code == 201, child.text

        tree = deployer.get("/api/v1/models/restmlp/lineage").json()
    assert tree["model"] == "restmlp" and [r["version"] for r in tree["roots"]] == [parent]
    root = tree["roots"][0]
    assert root["recipe"] == "" and root["max_rel_error"] is None
    (node,) = root["children"]
    assert node["version"] == made["version"] and node["recipe"] == "fp16"
    assert set(node["speedup"]) == {"1", "8"} and node["speedup"]["1"] > 0
    assert node["max_rel_error"] == pytest.approx(derivation["accuracy"]["max_rel_error"])
    assert node["size_ratio"] == pytest.approx(derivation["size_bytes"] / derivation["parent_size_bytes"])
    assert [c["version"] for c in node["children"]] == [child.json()["version"]]
    assert node["children"][0]["children"] == []


def test_rest_refuses_over_the_gate_bad_parents_unknown_artifacts_and_readers(
    cp: ControlPlaneClient, plane: ServerProcess, tmp_path: Path
) -> None:
    parent_path = mlp(tmp_path / "mlp.onnx", seed=3)
    parent = cp.push("restgate", parent_path).version
    half, derivation = fp16_derivation(parent_path, tmp_path)
    with http(plane, token(cp, "deployer")) as deployer, http(plane, token(cp, "reader")) as reader:
        digest = upload(deployer, half)
        over = {**derivation, "max_error": derivation["accuracy"]["max_rel_error"] / 2}
        reply = deployer.post(f"/api/v1/models/restgate/versions/{parent}/derived",
                              json={"digest": digest, "derivation": over})
        assert reply.status_code == 409 and reply.json()["code"] == "FAILED_PRECONDITION"
        assert "over its accuracy gate" in reply.json()["detail"] and "no version registered" in reply.json()["detail"]

        missing = deployer.post("/api/v1/models/restgate/versions/9/derived",
                                json={"digest": digest, "derivation": derivation})
        assert missing.status_code == 409 and "parent version 9" in missing.json()["detail"]

        unknown = deployer.post(f"/api/v1/models/restgate/versions/{parent}/derived",
                                json={"digest": "0" * 64, "derivation": derivation})
        assert unknown.status_code == 404 and unknown.json()["code"] == "NOT_FOUND"

        no_recipe = deployer.post(f"/api/v1/models/restgate/versions/{parent}/derived",
                                  json={"digest": digest, "derivation": {**derivation, "recipe": ""}})
        assert no_recipe.status_code == 400 and "needs its recipe" in no_recipe.json()["detail"]

        extra = deployer.post(f"/api/v1/models/restgate/versions/{parent}/derived",
                              json={"digest": digest, "derivation": derivation, "parent": 1})
        assert extra.status_code == 422

        denied = reader.post(f"/api/v1/models/restgate/versions/{parent}/derived",
                             json={"digest": digest, "derivation": derivation})
        assert denied.status_code == 403 and "deploy" in denied.json()["detail"]
        assert reader.get("/api/v1/models/restgate/lineage").status_code == 200
        assert reader.get("/api/v1/models/absent/lineage").status_code == 404
    assert [v.version for v in cp.list_versions("restgate")] == [parent]


def test_a_deployer_token_runs_optimize_and_a_reader_token_cannot(cp: ControlPlaneClient, plane: ServerProcess,
                                                                 tmp_path: Path) -> None:
    parent = cp.push("tokmlp", mlp(tmp_path / "mlp.onnx", seed=5)).version
    run = lmaas("model", "optimize", "tokmlp", str(parent), "--recipe", "fp16", "--seconds", "0.05",
                address=plane.grpc, env={"LMAAS_TOKEN": token(cp, "deployer")})
    assert f"tokmlp: derived version {parent + 1} " in run.stdout
    refused = lmaas("model", "optimize", "tokmlp", str(parent), "--recipe", "fp16", "--seconds", "0.05",
                    address=plane.grpc, check=False, env={"LMAAS_TOKEN": token(cp, "reader")})
    assert refused.returncode != 0
    assert "download" in refused.stderr and "deployer" in refused.stderr, refused.stderr
    assert [v.version for v in cp.list_versions("tokmlp")] == [parent, parent + 1]
    # the worker role downloads too (what workers always did); the REST artifact route shares the row
    with http(plane, token(cp, "worker")) as worker, http(plane, token(cp, "reader")) as reader:
        assert worker.get(f"/api/v1/models/tokmlp/versions/{parent}/artifact").status_code == 200
        assert reader.get(f"/api/v1/models/tokmlp/versions/{parent}/artifact").status_code == 403
    assert json.loads(cp.get_version("tokmlp", parent + 1).derivation.params["keep_io_types"]) is True


def test_a_recipe_with_its_own_flow_gets_the_whole_call(cp: ControlPlaneClient, tmp_path: Path) -> None:
    """The hook for recipes outside the ONNX flow (LLM directory versions): formats and flow of a Recipe."""
    from lmaas.optimize import RECIPES, Optimized, optimize
    from lmaas.optimize.base import Recipe
    from lmaas.protos.errors import FailedPrecondition
    from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

    def copy_flow(client: ControlPlaneClient, model: str, version: int, recipe: str, **kw: Any) -> Optimized:
        src = client.download(model, version, tmp_path / "parent.bin")
        d = pb.Derivation(recipe=recipe, params={"threads": json.dumps(kw["threads"])},
                          parent_size_bytes=src.size_bytes, size_bytes=src.size_bytes)
        pushed = client.push(model, tmp_path / "parent.bin", format=src.format, config=src.config_json or None,
                             parent_version=version, derivation=d)
        return Optimized(d, pushed)

    parent = cp.push("flowmlp", mlp(tmp_path / "mlp.onnx", seed=9)).version
    def never(job: Job) -> Made:
        raise AssertionError("a recipe with a flow is never run on a Job")

    RECIPES["copy-test"] = Recipe("copy-test", "a copy, by its own flow", never, None, (), flow=copy_flow)
    try:
        made = optimize(cp, "flowmlp", parent, "copy-test", threads=3)
        assert made.version is not None and made.version.parent_version == parent
        assert cp.get_version("flowmlp", made.version.version).derivation.params["threads"] == "3"
        RECIPES["copy-test"] = Recipe("copy-test", "", never, None, (), formats=("llm",), flow=copy_flow)
        with pytest.raises(FailedPrecondition, match=r"recipe 'copy-test' does not suit model 'flowmlp' version "
                                                     r"1: its format is 'onnx'; 'copy-test' works on llm versions"):
            optimize(cp, "flowmlp", parent, "copy-test")
    finally:
        del RECIPES["copy-test"]
