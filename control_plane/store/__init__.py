"""The control plane's metadata store: etcd in production, an embedded SQLite file on one machine.

Open one with :func:`open_store`; both backends keep the contract of :mod:`.base`.
"""

from __future__ import annotations

import os
from urllib.parse import unquote

from .base import (
    Compare,
    Delete,
    Event,
    EventType,
    KeyValue,
    Lease,
    LeaseNotFound,
    Put,
    RangeResult,
    Store,
    StoreError,
    Txn,
    TxnResult,
    WatchCompacted,
)

__all__ = [
    "DEFAULT_STORE_URL",
    "Compare",
    "Delete",
    "Event",
    "EventType",
    "KeyValue",
    "Lease",
    "LeaseNotFound",
    "Put",
    "RangeResult",
    "Store",
    "StoreError",
    "Txn",
    "TxnResult",
    "WatchCompacted",
    "open_store",
]

DEFAULT_STORE_URL = "sqlite:///lmaas.db"


def open_store(url: str = DEFAULT_STORE_URL) -> Store:
    """Open the store that ``url`` names; nothing connects until the first call.

    * ``sqlite:///PATH`` — an SQLite file (created if absent). As in SQLAlchemy, three slashes
      take a relative path (``sqlite:///lmaas.db``) and four an absolute one
      (``sqlite:////var/lib/lmaas/state.db``). A bare path without a scheme is a SQLite file too.
    * ``etcd://HOST:PORT[,HOST:PORT...]`` — the client endpoints of an etcd cluster's members.
    """
    if url.startswith("etcd://"):
        from .etcd import EtcdStore

        hosts = url[len("etcd://") :].split("?", 1)[0].strip("/")
        endpoints = [h for h in hosts.split(",") if h]
        if not endpoints:
            raise ValueError(f"store URL {url!r} names no etcd endpoint")
        return EtcdStore(endpoints)

    from .sqlite import SqliteStore

    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        if not rest.startswith("/") or len(rest) < 2:
            raise ValueError(f"store URL {url!r} is not sqlite:///PATH")
        path = unquote(rest[1:].split("?", 1)[0])
        return SqliteStore(path)
    if "://" in url:
        raise ValueError(f"store URL {url!r}: scheme must be sqlite:// or etcd://")
    return SqliteStore(os.path.expanduser(url))
