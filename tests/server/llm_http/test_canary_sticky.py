"""Through a real control plane and worker: a canary of an LLM, sticky by conversation key, with every answer's
``system_fingerprint`` naming the version that produced it."""

from __future__ import annotations

import importlib
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from llm_http_kit import MODEL
from llm_support import smollm2_dir
from lmaas.client import ControlPlaneClient
from processes import ServerProcess, start_worker

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "control_plane"))
cp_harness: Any = importlib.import_module("cp_harness")

USERS = [f"user-{i}" for i in range(12)]


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("llm-canary")
    control: ServerProcess = cp_harness.start_control_plane(tmp)
    worker: ServerProcess | None = None
    try:
        worker = start_worker(None, "--control-plane", control.grpc, "--cache-dir", str(tmp / "cache"),
                              env={"HF_HUB_OFFLINE": "1"})
        with ControlPlaneClient(control.grpc, timeout=60) as client:
            one = client.push(MODEL, smollm2_dir()).version
            # Same files, another configuration: a second version (its blobs are stored once).
            two = client.push(MODEL, smollm2_dir(), config={"parameters": {"max_new_tokens": 512}}).version
            assert (one, two) == (1, 2)
            client.wait_rollout(MODEL, client.deploy(MODEL, one, canary=two, weight=50).deployment.generation,
                                timeout=300)
        for version in (1, 2):  # both loaded and answering before the tests start
            body = {"text_input": "Hi", "parameters": {"max_tokens": 1}}
            deadline = time.monotonic() + 60
            while (reply := httpx.post(f"{worker.http_url}/v2/models/{MODEL}/versions/{version}/generate",
                                       json=body, timeout=60)).status_code != 200:
                assert time.monotonic() < deadline, reply.text
                time.sleep(0.2)
        yield worker
    finally:
        if worker is not None:
            worker.stop()
        control.stop()


def _version(fingerprint: str) -> int:
    match = re.fullmatch(rf"lmaas-{MODEL}-v(\d+)-[0-9a-f]{{12}}", fingerprint)
    assert match, fingerprint
    return int(match.group(1))


def _answer(worker: ServerProcess, *, user: str = "", session: str = "") -> str:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    if user:
        body["user"] = user
    headers = {"x-lmaas-session": session} if session else {}
    response = httpx.post(f"{worker.http_url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    fingerprint = str(response.json()["system_fingerprint"])
    assert response.headers["x-lmaas-model-version"] == str(_version(fingerprint))
    return fingerprint


def test_a_conversation_stays_on_one_version(canary: ServerProcess) -> None:
    worker = canary
    seen: dict[str, str] = {}
    for user in USERS:
        answers = {_answer(worker, user=user) for _ in range(3)}
        assert len(answers) == 1, (user, answers)
        seen[user] = answers.pop()
        assert _answer(worker, session=user) == seen[user]  # the header is the same key as `user`
    # The keys are fixed and the draw is a hash: that both versions get some of them is decided once, not by chance.
    assert {_version(f) for f in seen.values()} == {1, 2}, seen


def test_without_a_key_each_request_is_drawn(canary: ServerProcess) -> None:
    answers = {_version(_answer(canary)) for _ in range(24)}
    assert answers == {1, 2}  # 24 draws at 50%: one version only has a chance of 1 in 8 million
