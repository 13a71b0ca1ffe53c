"""Session fixtures of the LLM tests: SmolLM2 converted once (cached by the GGUF's digest), one in-process engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from llm_support import smollm2_dir
from lmaas.server.llm.engine import EngineSettings, LLMEngine


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The converted SmolLM2-135M-Instruct version directory."""
    return smollm2_dir()


@pytest.fixture(scope="session")
def engine(smollm2: Path) -> Iterator[LLMEngine]:
    """One engine for the in-process tests (small context so the limits are cheap to reach)."""
    eng = LLMEngine(smollm2, name="smollm2", version=1, digest="test", settings=EngineSettings(context_length=512))
    yield eng
    eng.close()
