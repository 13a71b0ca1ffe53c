"""Size limits on what callers send the control plane, in one place.

Names are checked by :mod:`lmaas.control_plane.keys` (1-128 characters of
``[A-Za-z0-9_.-]``, so no path separators and no ``..`` component can reach a
key or a file name). Everything else a caller writes into the store is bounded
here, well below etcd's default 1.5 MiB request limit, and rejected with
INVALID_ARGUMENT naming the field and the limit. Messages are bounded by
``--max-message-bytes`` (RESOURCE_EXHAUSTED beyond it) and artifacts by
``--max-artifact-bytes``. Artifacts are stored as opaque bytes named by their
digest: the control plane never unpickles, parses or extracts them (there is no
archive extraction anywhere in LMaaS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sized

from lmaas.protos.errors import InvalidArgument

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DESCRIPTION",
    "MAX_ERROR",
    "MAX_HELD",
    "MAX_METADATA_ENTRIES",
    "MAX_METADATA_KEY",
    "MAX_METADATA_VALUE",
    "MAX_POOLS",
    "MAX_SHORT_TEXT",
    "check_count",
    "check_metadata",
    "check_text",
]

MAX_DESCRIPTION = 4096  # characters of a model's or version's description
MAX_CONFIG_BYTES = 1 << 20  # a version's config_json, UTF-8 bytes
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 1024
MAX_POOLS = 64  # pools of one deployment
MAX_SHORT_TEXT = 256  # e.g. a worker's inference address
MAX_HELD = 4096  # versions a worker reports holding
MAX_ERROR = 2048  # characters of a worker's NACK error kept (longer ones are cut, not refused)


def check_text(value: str, what: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{what} has {len(value)} characters; the limit is {limit}")
    return value


def check_count(items: Sized, what: str, limit: int) -> None:
    if len(items) > limit:
        raise InvalidArgument(f"{what}: {len(items)} entries; the limit is {limit}")


def check_metadata(metadata: Mapping[str, str]) -> None:
    check_count(metadata, "metadata", MAX_METADATA_ENTRIES)
    for key, value in metadata.items():
        if not key:
            raise InvalidArgument("metadata keys must not be empty")
        check_text(key, f"metadata key {key[:32]!r}", MAX_METADATA_KEY)
        check_text(value, f"metadata value of {key[:32]!r}", MAX_METADATA_VALUE)
