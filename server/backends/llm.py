"""Backend ``llm``: a version *directory* (``config.json``, ``tokenizer.json``, ``*.safetensors``) run by the engine.

A version directory is recognised by its files alone, from the model repository (``REPO/<model>/<version>/``) or
from the worker's artifact cache (a pushed multi-file version). Loading checks what is there and whether it fits
before touching the weights, so a broken or oversized version fails with a precise message (and a managed worker
NACKs it) while the previous version keeps serving.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lmaas.server.backends.base import BackendError
from lmaas.server.config import ModelConfig
from lmaas.server.metrics import LLMMetrics

if TYPE_CHECKING:  # the engine imports torch; recognising a directory must not
    from lmaas.server.llm.engine import EngineSettings, LLMEngine

__all__ = ["PLATFORM", "available_memory", "estimate_memory", "is_llm_dir", "load_llm", "local_digest"]

PLATFORM = "lmaas_llm"
REQUIRED = ("config.json", "tokenizer.json")


def is_llm_dir(path: Path) -> bool:
    """A generative version directory: an HF-style config and safetensors weights (the tokenizer is checked at load)."""
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def local_digest(path: Path, config: str) -> str:
    """A repository directory's change marker: a reload is a no-op unless a file or the config changed."""
    files = sorted(p for p in path.iterdir() if p.is_file())
    return f"{path}:" + ",".join(f"{p.name}@{p.stat().st_mtime_ns}" for p in files) + f":{config}"


def available_memory() -> int:
    """Bytes this process may still take: MemAvailable, capped by the cgroup's limit when there is one."""
    available = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        current = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - current)
    except (OSError, ValueError):
        pass
    return available


def estimate_memory(path: Path, settings: EngineSettings) -> int:
    """Weights as stored (+ the head's transposed copy when tied, + bf16 halves them) + the KV budget."""
    weights = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    try:
        cfg = json.loads((path / "config.json").read_text())
        if cfg.get("tie_word_embeddings"):
            weights += int(cfg["vocab_size"]) * int(cfg["hidden_size"]) * 4
    except (ValueError, KeyError, TypeError):
        pass
    if settings.dtype == "bfloat16":
        weights //= 2
    return weights + settings.kv_cache_mb * 2**20


def load_llm(
    path: Path, config: ModelConfig, *, name: str, version: int, digest: str, metrics: LLMMetrics | None
) -> LLMEngine:
    """Check, then load (runs in a thread). Every failure is a BackendError naming what is wrong."""
    from lmaas.server.llm.engine import EngineSettings, LLMEngine

    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if missing:
        raise BackendError(f"LLM version directory {path.name}/ lacks {', '.join(missing)}")
    settings = EngineSettings.from_parameters(config.parameters)
    need, have = estimate_memory(path, settings), available_memory()
    if need > have:
        raise BackendError(
            f"does not fit in memory: needs ~{need / 2**20:.0f} MiB (weights + kv_cache_mb={settings.kv_cache_mb}), "
            f"{have / 2**20:.0f} MiB available"
        )
    try:
        return LLMEngine(path, name=name, version=version, digest=digest, settings=settings, metrics=metrics)
    except BackendError:
        raise
    except Exception as exc:  # safetensors, tokenizers, config: their messages say what is wrong
        raise BackendError(f"cannot load LLM version: {type(exc).__name__}: {exc}") from exc
