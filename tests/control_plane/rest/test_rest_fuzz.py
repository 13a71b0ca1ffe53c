"""Property-based fuzzing of the REST API from its own OpenAPI document (schemathesis, against a live control
plane process with auth on): no 5xx, every status, media type, header and body as the document says, and
schema-violating requests rejected. Bounded examples per operation, derandomized, so a run is short and
repeatable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from cp_harness import ADMIN_TOKEN, start_control_plane
from hypothesis import HealthCheck, settings
from lmaas.control_plane.rest.openapi import DOCUMENT
from processes import ServerProcess
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

schema = schemathesis.openapi.from_path(DOCUMENT)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection, missing_required_header]


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp: Path = tmp_path_factory.mktemp("fuzz-cp")
    proc = start_control_plane(tmp, "--max-artifact-bytes", str(1 << 20))
    assert proc.http, proc.output()
    yield proc
    code = proc.stop()
    assert code == 0, proc.output()
    assert "Traceback" not in proc.output(), proc.output()


@schema.parametrize()
@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_the_api_keeps_its_document(case: schemathesis.Case, control_plane: ServerProcess) -> None:
    case.call_and_validate(base_url=control_plane.http_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                           checks=CHECKS, timeout=30)
