"""Content addresses: artifacts are named by the sha256 of their bytes (client, control plane and worker alike)."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_file"]


def sha256_file(path: Path, block_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(block_size):
            h.update(block)
    return h.hexdigest()
