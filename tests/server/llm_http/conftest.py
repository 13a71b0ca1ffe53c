"""One real worker process serving the real SmolLM2 engine (converted once per session by llm_support)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from llm_support import smollm2_repository
from processes import ServerProcess, start_worker


@pytest.fixture(scope="session")
def llm_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smollm2_repository(tmp_path_factory.mktemp("llm-repo"))


@pytest.fixture(scope="session")
def llm_worker(llm_repository: Path) -> Iterator[ServerProcess]:
    proc = start_worker(llm_repository, env={"HF_HUB_OFFLINE": "1"})
    assert proc.http, "the worker printed no http= address:\n" + proc.output()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def base_url(llm_worker: ServerProcess) -> str:
    return llm_worker.http_url
