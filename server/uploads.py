"""Triton's file override for RepositoryModelLoad: a model sent as bytes by the client.

``parameters["file:1/model.onnx"] = <bytes>`` (gRPC ``bytes_param``; HTTP: base64 in a string) writes the
files into a fresh private model directory that is then loaded like a repository model. Paths are confined
to that directory (relative, no ``..``, under a version directory) and the total size is limited.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from lmaas.protos.errors import InvalidArgument, PayloadTooLarge

__all__ = ["FILE_PREFIX", "MAX_UPLOAD_BYTES", "UploadArea", "check_parameters"]

FILE_PREFIX = "file:"
MAX_UPLOAD_BYTES = 1 << 30  # a model bigger than this belongs in the repository or the artifact store
_KNOWN = ("config",)


def check_parameters(names: list[str]) -> None:
    """Refuse what RepositoryModelLoad does not implement, by name, instead of ignoring it."""
    unknown = sorted(n for n in names if n not in _KNOWN and not n.startswith(FILE_PREFIX))
    if unknown:
        raise InvalidArgument(
            f"unsupported RepositoryModelLoad parameter(s) {unknown}: this server takes 'config' and 'file:<path>'"
        )


def _confined(name: str) -> PurePosixPath:
    rel = PurePosixPath(name[len(FILE_PREFIX) :])
    parts = rel.parts
    if not parts or rel.is_absolute() or "\\" in str(rel) or any(p in ("", ".", "..") for p in parts):
        raise InvalidArgument(f"parameter '{name}': the path must be relative and stay inside the model directory")
    if len(parts) < 2 or not parts[0].isdigit():
        raise InvalidArgument(f"parameter '{name}': files go under a version directory, e.g. 'file:1/model.onnx'")
    return rel


class UploadArea:
    """Private directory of uploaded models, one subdirectory per model; removed with its owner."""

    def __init__(self, owner: object, max_bytes: int = MAX_UPLOAD_BYTES) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lmaas-uploads-"))
        self.max_bytes = max_bytes
        weakref.finalize(owner, shutil.rmtree, self.root, True)

    def write(self, model: str, files: Mapping[str, bytes]) -> Path:
        """A fresh ``<root>/<model>/`` holding exactly ``files``; the previous upload of the model is replaced."""
        if "/" in model or model.startswith(".") or not model:
            raise InvalidArgument(f"model name '{model}' cannot name a directory")
        paths = {name: _confined(name) for name in files}
        total = sum(len(data) for data in files.values())
        if total > self.max_bytes:
            raise PayloadTooLarge(f"file override of {total} bytes exceeds the limit of {self.max_bytes}")
        target = self.root / model
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{model}-"))
        for name, rel in paths.items():
            path = staging.joinpath(*rel.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(files[name])
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        return target
