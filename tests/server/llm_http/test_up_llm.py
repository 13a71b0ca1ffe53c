"""``lmaas up --llm`` serves SmolLM2 as ``smollm2`` through the control plane (a pushed directory version)."""

from __future__ import annotations

import os
from pathlib import Path

import openai
from llm_http_kit import MODEL
from llm_support import SMOLLM2_FILES, gguf_path, smollm2_dir
from lmaas.protos.digests import sha256_file
from processes import running_up


def test_up_llm_serves_smollm2(tmp_path: Path) -> None:
    state = tmp_path / "up"
    # Seed the state dir's conversion cache from the test cache (hard links), so up skips the 20-40 s conversion.
    seeded = state / "llm" / f"smollm2-{sha256_file(gguf_path())[:12]}"
    seeded.mkdir(parents=True)
    for name in SMOLLM2_FILES:
        os.link(smollm2_dir() / name, seeded / name)
    args = ["--llm", "--no-demo", "--state-dir", str(state)]
    for port in ("--control-plane-port", "--control-plane-metrics-port", "--control-plane-http-port", "--worker-port",
                 "--worker-metrics-port", "--worker-http-port"):
        args += [port, "0"]
    with running_up(args, env={"HF_HUB_OFFLINE": "1"}, timeout=300) as up:
        client = openai.OpenAI(base_url=f"http://{up.fields['worker-http']}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=4, temperature=0)
        assert reply.choices[0].message.content
        assert (reply.system_fingerprint or "").startswith(f"lmaas-{MODEL}-v1-")
        assert not any("converting" in x for x in up.lines), "the seeded conversion was not reused"
