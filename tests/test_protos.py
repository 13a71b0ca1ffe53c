"""The protos: generated code is current, and ``inference`` is wire-compatible with Triton's clients."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from google.protobuf.descriptor import Descriptor, EnumDescriptor
from lmaas.protos.inference import grpc_service_pb2, model_config_pb2
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def _compare_enum(ours: EnumDescriptor, theirs: EnumDescriptor) -> None:
    their_values = {v.name: v.number for v in theirs.values}
    for v in ours.values:
        assert their_values.get(v.name) == v.number, f"{ours.full_name}.{v.name}"


def _compare_message(ours: Descriptor, theirs: Descriptor) -> None:
    assert ours.full_name == theirs.full_name
    their_fields = {f.number: f for f in theirs.fields}
    for f in ours.fields:
        t = their_fields.get(f.number)
        assert t is not None, f"{ours.full_name}.{f.name} (#{f.number}) is not in Triton's definition"
        assert (f.name, f.type, f.is_repeated) == (t.name, t.type, t.is_repeated), f"{ours.full_name}.{f.name}"
        if f.message_type is not None:
            assert f.message_type.full_name == t.message_type.full_name, f"{ours.full_name}.{f.name}"
        if f.enum_type is not None:
            _compare_enum(f.enum_type, t.enum_type)
    for nested in ours.nested_types:
        _compare_message(nested, theirs.nested_types_by_name[nested.name])


def test_inference_protocol_matches_triton() -> None:
    for ours_mod, theirs_mod in ((grpc_service_pb2, triton_service), (model_config_pb2, triton_config)):
        for name, message in ours_mod.DESCRIPTOR.message_types_by_name.items():
            _compare_message(message, theirs_mod.DESCRIPTOR.message_types_by_name[name])
        for name, enum in ours_mod.DESCRIPTOR.enum_types_by_name.items():
            _compare_enum(enum, theirs_mod.DESCRIPTOR.enum_types_by_name[name])
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        t = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == t.input_type.full_name
        assert method.output_type.full_name == t.output_type.full_name
        assert (method.client_streaming, method.server_streaming) == (t.client_streaming, t.server_streaming)


def test_every_proto_field_is_commented() -> None:
    """Our protos are public API in every language: each field and message carries a comment."""
    for path in (ROOT / "protos").rglob("*.proto"):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            s = line.strip()
            is_field = s.endswith(";") and "=" in s and not s.startswith(("option", "syntax", "reserved", "//"))
            is_decl = s.startswith(("message ", "enum ", "service ", "rpc "))
            if (is_field or is_decl) and not s.endswith("{}"):
                prev = lines[i - 1].strip()
                assert prev.startswith("//"), f"{path.relative_to(ROOT)}:{i + 1} has no comment: {s}"


def test_package_list_covers_every_python_package() -> None:
    """pyproject lists packages explicitly (folders map onto one namespace): none may be forgotten."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    for package, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            name = ".".join([package, *rel.parts]) if rel.parts else package
            if any(part.startswith((".", "_")) or part in ("node_modules",) for part in rel.parts):
                continue
            assert name in listed, f"{name} ({init.parent}) is missing from [tool.setuptools] packages"


def test_only_generated_code_is_exempt_from_mypy() -> None:
    """mypy strict checks the hand-written kernel under protos/; the one exemption lists exactly the generated
    modules, so a new proto's code is listed and a hand-written module can never slip in."""
    overrides = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["overrides"]
    exempt = {m for o in overrides if o.get("ignore_errors") for m in o["module"]}
    generated = {
        "lmaas.protos." + ".".join(p.relative_to(ROOT / "protos").with_suffix("").parts)
        for p in (ROOT / "protos").rglob("*.py")
        if p.name.endswith(("_pb2.py", "_pb2_grpc.py"))
    }
    assert exempt == generated
