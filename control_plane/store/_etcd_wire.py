"""etcd wire details for :mod:`.etcd`: channels, request building, conversions, and the error boundary.

The messages and stubs are aetcd's generated etcd v3 code (``aetcd.rpc``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
from aetcd import rpc

from ._common import decode_key, encode_key, prefix_end
from .base import Compare, KeyValue, LeaseNotFound, StoreError

__all__ = [
    "REQUIRE_LEADER",
    "STREAM_BROKEN",
    "Endpoint",
    "Reconnect",
    "compare",
    "key_range",
    "not_sent",
    "parse_endpoint",
    "to_kv",
    "translate",
]

# etcd rejects requests and ends streams on a member without a leader when this is set (clientv3 WithRequireLeader)
REQUIRE_LEADER = (("hasleader", "true"),)

_COMPARE_RESULT = {
    "==": rpc.Compare.EQUAL,
    "!=": rpc.Compare.NOT_EQUAL,
    "<": rpc.Compare.LESS,
    ">": rpc.Compare.GREATER,
}
_COMPARE_TARGET = {
    "version": (rpc.Compare.VERSION, "version"),
    "create_revision": (rpc.Compare.CREATE, "create_revision"),
    "mod_revision": (rpc.Compare.MOD, "mod_revision"),
    "value": (rpc.Compare.VALUE, "value"),
}

# UNAVAILABLE details that prove a request never reached etcd's raft log: safe to retry even a write
_NOT_SENT = ("failed to connect", "connection refused", "no address", "no connection", "etcdserver: no leader")


def _channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", -1),
        # gRPC's default reconnect backoff grows to 120 s: after an outage a channel would refuse calls that long
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # notice a hung member on an open stream; etcd's --grpc-keepalive-min-time is 5 s
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
    ]


def parse_endpoint(endpoint: str) -> str:
    address = endpoint.strip()
    for scheme in ("http://", "etcd://"):
        if address.startswith(scheme):
            address = address[len(scheme) :]
    address = address.rstrip("/")
    if not address or ":" not in address:
        raise ValueError(f"etcd endpoint {endpoint!r} is not host:port")
    return address


def to_kv(kv: Any) -> KeyValue:
    return KeyValue(
        decode_key(kv.key), bytes(kv.value), int(kv.create_revision), int(kv.mod_revision), int(kv.version),
        int(kv.lease),
    )


def key_range(prefix: str) -> tuple[bytes, bytes]:
    """``key``/``range_end`` for every key under ``prefix`` (etcd's "\\0" means "to the end")."""
    key = encode_key(prefix)
    end = prefix_end(key)
    return (key or b"\0"), (end if end is not None else b"\0")


def not_sent(exc: grpc.aio.AioRpcError) -> bool:
    details = (exc.details() or "").lower()
    return exc.code() == grpc.StatusCode.UNAVAILABLE and any(s in details for s in _NOT_SENT)


def translate(what: str, exc: grpc.aio.AioRpcError, *, leases: Sequence[int] = ()) -> Exception:
    """The one place where an etcd/gRPC error becomes ours."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
        unique = set(leases) - {0}
        return LeaseNotFound(unique.pop() if len(unique) == 1 else 0)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValueError(f"etcd {what}: {details}")
    return StoreError(f"etcd {what}: {code.name}: {details}")


class Endpoint:
    """A lazily opened channel to one member, with the stubs on it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel: grpc.aio.Channel | None = None
        self.kv: Any = None
        self.watch: Any = None
        self.lease: Any = None

    def open(self) -> None:
        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(self.address, options=_channel_options())
            self.kv = rpc.KVStub(self.channel)
            self.watch = rpc.WatchStub(self.channel)
            self.lease = rpc.LeaseStub(self.channel)

    async def close(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            await channel.close()


class Reconnect(Exception):
    """A stream ended or stalled; open it again (maybe on another endpoint)."""


# how a broken stream shows itself: an error status, a write after the RPC ended, a stalled read
STREAM_BROKEN = (grpc.aio.AioRpcError, asyncio.InvalidStateError, Reconnect, TimeoutError)


def compare(c: Compare) -> Any:
    target, field = _COMPARE_TARGET[c.target]
    message = rpc.Compare(result=_COMPARE_RESULT[c.op], target=target, key=encode_key(c.key))
    setattr(message, field, c.value)
    return message
