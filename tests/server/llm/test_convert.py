"""``lmaas model convert``: the command line builds a version directory the worker recognises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from llm_support import SMOLLM2_FILES
from lmaas.server.backends.llm import is_llm_dir
from safetensors import safe_open


def test_gguf_conversion_output(smollm2: Path) -> None:
    """What the session fixture converted from the GGUF: every file, the chat template, the tied head once."""
    assert all((smollm2 / f).is_file() for f in SMOLLM2_FILES) and is_llm_dir(smollm2)
    assert "<|im_start|>" in json.loads((smollm2 / "tokenizer_config.json").read_text())["chat_template"]
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30 and config["tie_word_embeddings"]
    with safe_open(str(smollm2 / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
        assert str(f.get_slice("model.norm.weight").get_dtype()) == "F32"


def test_cli_converts_a_hugging_face_directory(smollm2: Path, tmp_path: Path) -> None:
    out = tmp_path / "v1"
    done = subprocess.run(
        [sys.executable, "-m", "lmaas.cli", "model", "convert", "--hf", str(smollm2), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert "wrote model.safetensors" in done.stderr  # a progress line per stage
    assert all((out / f).is_file() for f in SMOLLM2_FILES) and is_llm_dir(out)
    assert (out / "model.safetensors").stat().st_size == (smollm2 / "model.safetensors").stat().st_size


def test_cli_needs_exactly_one_source(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lmaas.cli", "model", "convert", "--output", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "exactly one of --gguf FILE or --hf DIR" in done.stderr
