"""The OpenAPI 3.1 document: the file in the repository is what the app generates, it is valid, it is served,
and every operation, parameter and field is described, with examples."""

from __future__ import annotations

import json
from typing import Any

import httpx
from lmaas.control_plane.auth import METHODS
from lmaas.control_plane.rest.openapi import DOCUMENT, generate, main, render
from openapi_spec_validator import validate

VERBS = ("get", "put", "post", "delete", "patch")


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, verb, op) for path, item in doc["paths"].items() for verb, op in item.items() if verb in VERBS]


def test_the_stored_document_is_current() -> None:
    assert DOCUMENT.read_text() == render(generate()), "run: python -m lmaas.control_plane.rest.openapi --write"
    assert main(["--check"]) == 0


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = json.loads(DOCUMENT.read_text())
    assert doc["openapi"].startswith("3.1")
    validate(doc)


async def test_the_document_is_served_without_a_token(anonymous: httpx.AsyncClient) -> None:
    reply = await anonymous.get("/openapi.json")
    assert reply.status_code == 200
    assert reply.json() == json.loads(DOCUMENT.read_text())


def test_the_command_contract_routes_exist() -> None:
    doc = generate()
    for path, verb in [("/api/v1/models", "get"), ("/api/v1/models/{name}/versions", "get"),
                       ("/api/v1/models/{name}/versions", "post"), ("/api/v1/deployments/{name}", "put"),
                       ("/api/v1/deployments/{name}/rollback", "post"), ("/api/v1/deployments/{name}", "get")]:
        assert verb in doc["paths"][path], (verb, path)
    upload = doc["paths"]["/api/v1/models/{name}/versions"]["post"]
    headers = {p["name"] for p in upload["parameters"] if p["in"] == "header"}
    assert {"X-LMaaS-Format", "X-LMaaS-Sha256"} <= headers
    assert "application/octet-stream" in upload["requestBody"]["content"]
    assert "version" in doc["components"]["schemas"]["VersionCreated"]["properties"]


def test_every_operation_names_a_row_of_the_one_access_table() -> None:
    for path, verb, op in operations(generate()):
        rpc = op["x-lmaas-rpc"]
        assert rpc in METHODS, (verb, path)
        assert op["x-lmaas-permission"] == METHODS[rpc].value


def test_every_operation_parameter_and_field_is_described_with_examples() -> None:
    doc = generate()
    missing: list[str] = []
    for path, verb, op in operations(doc):
        where = f"{verb.upper()} {path}"
        if not op.get("summary") or not op.get("description"):
            missing.append(f"{where}: summary/description")
        for p in op.get("parameters", []):
            if not p.get("description"):
                missing.append(f"{where} {p['name']}: description")
            if "example" not in p and "examples" not in p and "examples" not in p.get("schema", {}) \
                    and "default" not in p.get("schema", {}):
                missing.append(f"{where} {p['name']}: example")
        for status, response in op["responses"].items():
            if not response.get("description"):
                missing.append(f"{where} {status}: description")
    for name, schema in doc["components"]["schemas"].items():
        if not schema.get("description") and name not in ("ValidationError", "HTTPValidationError"):
            missing.append(f"schema {name}: description")
        for field, prop in schema.get("properties", {}).items():
            if not prop.get("description"):
                missing.append(f"{name}.{field}: description")
            has_example = "examples" in prop or "example" in prop or "default" in prop or "$ref" in prop or \
                any("$ref" in x for x in prop.get("anyOf", [])) or prop.get("type") in ("boolean", "array", "object")
            if not has_example:
                missing.append(f"{name}.{field}: example")
    assert not missing, "\n".join(missing)
