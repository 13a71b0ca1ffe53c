"""Compressed single-file artifacts (``lmaas model optimize --recipe compress``), shared by client and worker.

A compressed artifact is a header line and an xz stream::

    LMAAS-PACKED 1 xz <sha256 of the original> <size of the original>\\n<xz data>

The version's digest covers the compressed bytes (verified on download like any artifact); the header's sha256
covers the original, and :func:`unpack` refuses output that does not match it, so a corrupted artifact is
rejected even where the compressed bytes were stored under a matching digest.

The codec is the stdlib's ``lzma`` (xz): ``zstandard`` is not a dependency of LMaaS, and of the stdlib codecs xz
packs float weights tightest; decompression runs once per version and worker, at load.
"""

from __future__ import annotations

import hashlib
import lzma
import os
from pathlib import Path

from lmaas.protos.errors import DataLoss

__all__ = ["MAGIC", "Header", "pack", "read_header", "unpack"]

MAGIC = b"LMAAS-PACKED"
_CHUNK = 1 << 20
_MAX_HEADER = 256


class Header:
    """What the header line says about the original file."""

    def __init__(self, codec: str, sha256: str, size: int) -> None:
        self.codec, self.sha256, self.size = codec, sha256, size

    def to_bytes(self) -> bytes:
        return b"%s 1 %s %s %d\n" % (MAGIC, self.codec.encode(), self.sha256.encode(), self.size)


def pack(src: Path, dst: Path, *, preset: int = 6) -> Header:
    """Write ``src`` compressed to ``dst``; the header records its sha256 and size."""
    h = hashlib.sha256()
    with src.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    header = Header("xz", h.hexdigest(), src.stat().st_size)
    comp = lzma.LZMACompressor(preset=preset)
    with src.open("rb") as f, dst.open("wb") as out:
        out.write(header.to_bytes())
        while block := f.read(_CHUNK):
            out.write(comp.compress(block))
        out.write(comp.flush())
    return header


def read_header(path: Path) -> tuple[Header, int]:
    """The header of a compressed artifact and where its data starts; DataLoss when it is not one."""
    with path.open("rb") as f:
        line = f.readline(_MAX_HEADER)
    parts = line.rstrip(b"\n").split(b" ")
    if len(parts) != 5 or parts[0] != MAGIC or parts[1] != b"1" or parts[2] != b"xz" or not line.endswith(b"\n"):
        raise DataLoss(f"{path.name} is not a compressed LMaaS artifact (bad header)")
    try:
        return Header("xz", parts[3].decode("ascii"), int(parts[4])), len(line)
    except (UnicodeDecodeError, ValueError):
        raise DataLoss(f"{path.name} has a malformed compressed-artifact header") from None


def unpack(src: Path, dst: Path) -> Path:
    """Decompress ``src`` to ``dst`` (atomically), verified against the header's sha256 and size.

    An existing ``dst`` with the right digest is kept. DataLoss for a corrupt stream or a digest mismatch;
    nothing is left at ``dst`` then.
    """
    header, start = read_header(src)
    if dst.is_file() and dst.stat().st_size == header.size and _sha256(dst) == header.sha256:
        return dst
    partial = dst.with_name(f".{dst.name}.unpacking-{os.getpid()}")
    h, size = hashlib.sha256(), 0
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        with src.open("rb") as f, partial.open("wb") as out:
            f.seek(start)
            while block := f.read(_CHUNK):
                data = dec.decompress(block)
                h.update(data)
                size += len(data)
                if size > header.size:
                    raise DataLoss(f"{src.name} decompresses past the {header.size} bytes its header declares")
                out.write(data)
        if not dec.eof:
            raise DataLoss(f"{src.name}: the compressed stream is truncated")
        if h.hexdigest() != header.sha256 or size != header.size:
            raise DataLoss(f"{src.name} decompressed to sha256:{h.hexdigest()} ({size} bytes), its header declares "
                           f"sha256:{header.sha256} ({header.size} bytes)")
        os.replace(partial, dst)
        return dst
    except lzma.LZMAError as exc:
        raise DataLoss(f"{src.name}: corrupt compressed stream ({exc})") from exc
    finally:
        partial.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()
