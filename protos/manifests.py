"""Manifests: a directory version as one content-addressed artifact.

A directory version (format ``llm``) is stored as its files' blobs, each named
by its sha256 like any artifact, plus a manifest listing them. The manifest is
canonical JSON, so one set of files has exactly one digest whatever the order
or times the files were written in; that digest is the version's digest::

    {"files":[{"path":"config.json","sha256":"…","size":650},…],"format":"llm","kind":"lmaas.manifest.v1"}

(keys sorted, no spaces, files sorted by path, UTF-8). :func:`Manifest.parse`
accepts only that exact form. Paths are relative POSIX paths confined to the
version root: no absolute path, no ``.`` or ``..`` component, no backslash, no
control character, no duplicate, no file that is also another file's folder;
at most :data:`MAX_FILES` files and :data:`MAX_PATH` characters per path.
:func:`scan_directory` builds a manifest from a local directory and refuses
symbolic links and anything that is not a regular file or folder.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from functools import cached_property
from hashlib import sha256
from pathlib import Path
from typing import Any

from lmaas.protos.digests import sha256_file
from lmaas.protos.errors import InvalidArgument

__all__ = [
    "KIND",
    "MAX_COMPONENT_BYTES",
    "MAX_FILES",
    "MAX_MANIFEST_BYTES",
    "MAX_PATH",
    "Manifest",
    "ManifestFile",
    "check_path",
    "scan_directory",
]

KIND = "lmaas.manifest.v1"
MAX_FILES = 4096  # files of one version (a sharded checkpoint has tens; tokenizers a handful)
MAX_PATH = 512  # characters of one relative path
MAX_COMPONENT_BYTES = 255  # UTF-8 bytes of one path component (the usual file-system limit)
MAX_MANIFEST_BYTES = 4 << 20  # a full manifest of MAX_FILES long paths stays below this

_DIGEST = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_path(path: object) -> str:
    """A relative POSIX path that stays inside the version root, or InvalidArgument naming what is wrong."""
    if not isinstance(path, str) or not path:
        raise InvalidArgument(f"invalid file path {path!r}: expected a non-empty string")
    shown = repr(path[:80])
    if len(path) > MAX_PATH:
        raise InvalidArgument(f"file path {shown}... has {len(path)} characters; the limit is {MAX_PATH}")
    if "\\" in path:
        raise InvalidArgument(f"invalid file path {shown}: backslashes are not allowed (use '/')")
    try:
        path.encode()
    except UnicodeEncodeError:
        raise InvalidArgument(f"invalid file path {shown}: not encodable as UTF-8") from None
    if _CONTROL.search(path):
        raise InvalidArgument(f"invalid file path {shown}: control characters are not allowed")
    if path.startswith("/"):
        raise InvalidArgument(f"invalid file path {shown}: absolute paths escape the version root")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise InvalidArgument(f"invalid file path {shown}: empty, '.' and '..' components are not allowed")
        if len(part.encode()) > MAX_COMPONENT_BYTES:
            raise InvalidArgument(f"invalid file path {shown}: a component exceeds {MAX_COMPONENT_BYTES} bytes")
    return path


@dataclass(frozen=True)
class ManifestFile:
    """One file of a directory version."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """The files of a directory version, sorted by path (build with :meth:`of`, read with :meth:`parse`)."""

    format: str
    files: tuple[ManifestFile, ...]

    @classmethod
    def of(cls, fmt: str, files: list[ManifestFile] | tuple[ManifestFile, ...]) -> Manifest:
        """A validated manifest of ``files`` in any order."""
        manifest = cls(fmt, tuple(sorted(files, key=lambda f: f.path)))
        manifest._check()
        return manifest

    def _check(self) -> None:
        if not self.format:
            raise InvalidArgument("manifest has no format")
        if not self.files:
            raise InvalidArgument("manifest lists no files: a directory version needs at least one")
        if len(self.files) > MAX_FILES:
            raise InvalidArgument(f"manifest lists {len(self.files)} files; the limit is {MAX_FILES}")
        seen: set[str] = set()
        for f in self.files:
            check_path(f.path)
            if not isinstance(f.sha256, str) or not _DIGEST.fullmatch(f.sha256):
                raise InvalidArgument(f"file {f.path!r}: invalid sha256 {f.sha256!r}")
            if not isinstance(f.size, int) or isinstance(f.size, bool) or f.size < 0:
                raise InvalidArgument(f"file {f.path!r}: invalid size {f.size!r}")
            if f.path in seen:
                raise InvalidArgument(f"file {f.path!r} is listed twice")
            seen.add(f.path)
        folders = {"/".join(parts[:i]) for p in seen for parts in [p.split("/")] for i in range(1, len(parts))}
        clash = sorted(seen & folders)
        if clash:
            raise InvalidArgument(f"file {clash[0]!r} is also the folder of other files")

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """A manifest from its canonical bytes, or InvalidArgument."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise InvalidArgument(f"manifest of {len(data)} bytes exceeds {MAX_MANIFEST_BYTES}")
        try:
            value: Any = json.loads(data.decode())
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidArgument(f"invalid manifest: not UTF-8 JSON ({exc})") from exc
        if not isinstance(value, dict) or set(value) != {"files", "format", "kind"}:
            raise InvalidArgument('invalid manifest: expected an object with exactly "files", "format" and "kind"')
        if value["kind"] != KIND:
            raise InvalidArgument(f"invalid manifest kind {value['kind']!r}: expected {KIND!r}")
        if not isinstance(value["format"], str) or not isinstance(value["files"], list):
            raise InvalidArgument('invalid manifest: "format" must be a string and "files" a list')
        if len(value["files"]) > MAX_FILES:
            raise InvalidArgument(f"manifest lists {len(value['files'])} files; the limit is {MAX_FILES}")
        files = []
        for entry in value["files"]:
            if not isinstance(entry, dict) or set(entry) != {"path", "sha256", "size"}:
                raise InvalidArgument('invalid manifest entry: expected exactly "path", "sha256" and "size"')
            files.append(ManifestFile(entry["path"], entry["sha256"], entry["size"]))
        manifest = cls(value["format"], tuple(files))
        manifest._check()
        if manifest.to_bytes() != data:
            raise InvalidArgument("manifest is not in canonical form (sorted keys and paths, compact UTF-8 JSON)")
        return manifest

    def to_bytes(self) -> bytes:
        """The canonical JSON whose sha256 is the version's digest."""
        body = {
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
            "format": self.format,
            "kind": KIND,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @cached_property
    def digest(self) -> str:
        return sha256(self.to_bytes()).hexdigest()

    @property
    def total_size(self) -> int:
        """Bytes of all files (a blob listed twice counts twice: it is materialised twice)."""
        return sum(f.size for f in self.files)


def scan_directory(root: Path, fmt: str = "llm") -> tuple[Manifest, dict[str, Path]]:
    """The manifest of every file under ``root`` and where each one is; hashes every file.

    Refuses (InvalidArgument) symbolic links, sockets, devices and the like, and
    paths the manifest cannot hold, before anything is uploaded.
    """
    if not root.is_dir():
        raise InvalidArgument(f"no such directory: {root}")
    local: dict[str, Path] = {}
    for folder, dirs, names in os.walk(root):
        for name in sorted(dirs) + sorted(names):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise InvalidArgument(f"{rel} is a symbolic link: a version directory holds regular files only")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise InvalidArgument(f"{rel} is not a regular file")
            local[check_path(rel)] = path
            if len(local) > MAX_FILES:
                raise InvalidArgument(f"{root} holds more than {MAX_FILES} files")
    files = [ManifestFile(rel, sha256_file(path), path.stat().st_size) for rel, path in local.items()]
    return Manifest.of(fmt, files), local
