"""The one table of artifact formats, shared by client, control plane and worker.

A version's ``format`` (a string on the wire: ``ModelVersion.format``,
``CreateVersionHeader.format``, ``Assignment.format``) names one entry here.
A single-file format says what the worker names the cached file, so the loader
recognises it by name, and which file suffixes the client infers it from. A
directory format (``llm``) is a version made of many files: its artifact is a
manifest (:mod:`lmaas.protos.manifests`) and the worker materialises it as a
directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmaas.protos.errors import InvalidArgument

__all__ = ["FORMATS", "Format", "format_for_path", "get_format"]


@dataclass(frozen=True)
class Format:
    """One artifact format."""

    name: str
    #: What it is, for help texts.
    description: str
    #: The worker's name for the cached file ("model.onnx"); "" for a directory format.
    file_name: str = ""
    #: File-name suffixes a client infers the format from.
    suffixes: tuple[str, ...] = ()
    #: True when a version of this format is a directory of files described by a manifest.
    directory: bool = False
    #: For a compressed format (lmaas.protos.compression): the format of the file inside; the worker unpacks it.
    packed: str = ""


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("onnx", "ONNX model", "model.onnx", (".onnx",)),
        Format("torchscript", "TorchScript module", "model.pt", (".pt",)),
        Format("torch_export", "torch.export program", "model.pt2", (".pt2",)),
        Format("llm", "LLM directory: config.json, tokenizer files, weights", directory=True),
        Format("onnx.xz", "ONNX model, xz-compressed (lmaas model optimize --recipe compress)", "model.onnx.xz",
               packed="onnx"),
    )
}


def get_format(name: str) -> Format:
    """The format called ``name``, or InvalidArgument listing the known ones."""
    fmt = FORMATS.get(name)
    if fmt is None:
        raise InvalidArgument(f"invalid format {name!r}: expected one of {', '.join(FORMATS)}")
    return fmt


def format_for_path(path: Path) -> Format:
    """The format a path implies: a directory is an ``llm`` version, a file goes by its suffix."""
    if path.is_dir():
        return FORMATS["llm"]
    for fmt in FORMATS.values():
        if path.suffix.lower() in fmt.suffixes:
            return fmt
    suffixes = ", ".join(f"*{s}" for f in FORMATS.values() for s in f.suffixes)
    raise InvalidArgument(f"cannot tell the format of {path.name}: name it {suffixes}, or give one")
