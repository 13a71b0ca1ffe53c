"""Model backends and the file names that select them."""

from __future__ import annotations

from pathlib import Path

from lmaas.server.backends.base import Backend, BackendError, Signature
from lmaas.server.config import ModelConfig

__all__ = ["MODEL_FILES", "Backend", "BackendError", "Signature", "find_model_file", "load_backend"]

# File name in a version directory → backend.
MODEL_FILES = {"model.onnx": "onnxruntime", "model.pt": "pytorch", "model.pt2": "pytorch",
               "modules.json": "sentence_transformers"}  # a sentence-embedding directory (backends/embedding.py)


def find_model_file(version_dir: Path) -> Path | None:
    for name in MODEL_FILES:
        if (version_dir / name).is_file():
            return version_dir / name
    return None


def load_backend(path: Path, config: ModelConfig) -> Backend:
    """Load ``path`` with the backend its name (or the config) selects. Runs in a thread."""
    batched = bool(config.max_batch_size)
    declared_in = tuple(Signature(t.name, t.datatype, ((-1,) if batched else ()) + t.dims) for t in config.inputs)
    declared_out = tuple(Signature(t.name, t.datatype, ((-1,) if batched else ()) + t.dims) for t in config.outputs)
    backend_name = config.backend or MODEL_FILES.get(path.name)
    if backend_name == "onnxruntime":
        from lmaas.server.backends.onnx import OnnxBackend

        return OnnxBackend(path, config.parameters, config.instance_count)
    if backend_name == "pytorch":
        from lmaas.server.backends.torch import TorchBackend

        return TorchBackend(path, declared_in, declared_out, config.parameters)
    if backend_name == "sentence_transformers":
        from lmaas.server.backends.embedding import EmbeddingBackend

        return EmbeddingBackend(path.parent if path.is_file() else path, config.parameters)
    raise BackendError(f"no backend for {path.name}")
