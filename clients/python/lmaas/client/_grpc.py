"""What every LMaaS client shares: channels, retries, deadlines and errors.

Both SDK clients (inference and control plane) go through this module, so the
behaviour below holds for every call they make:

* **Channels** come from :class:`ChannelConfig`: plaintext or TLS (optionally
  mutual TLS), the largest message in both directions, and reconnect backoff
  short enough for retries to find a server that came back.
* **Retries**: :class:`RetryPolicy` retries UNAVAILABLE only (the server was
  not reached, or is draining), with exponential backoff and jitter, a bounded
  number of attempts, and only for calls the caller marks idempotent.
* **Deadlines**: ``timeout`` (seconds) bounds the whole call, every attempt and
  every backoff sleep included. Each attempt gets the time that is left; when
  the next sleep would pass the deadline, the last error is raised.
* **Errors**: a failed call raises the :mod:`lmaas.protos.errors` class of its
  status (:func:`to_error`), chained to the ``grpc.RpcError`` it came from, so
  ``except NotFound`` works the same on both sides of the wire.

Typical use::

    config = ChannelConfig("127.0.0.1:8001")
    channel = create_channel(config)
    stub = SomeServiceStub(channel)
    reply = call(stub.Method, request, timeout=5.0, retry=RetryPolicy())

``call`` / ``acall`` cover unary calls; ``retry`` / ``aretry`` take any
function of the remaining timeout, for streams (re-opened from scratch on each
attempt).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio

from lmaas.protos.errors import DETAILS_KEY, LMaaSError, from_status

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ChannelConfig",
    "Metadata",
    "RetryPolicy",
    "acall",
    "aretry",
    "call",
    "create_aio_channel",
    "create_channel",
    "retry",
    "to_error",
]

T = TypeVar("T")

#: Matches the worker's default ``--max-message-bytes``.
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20

Metadata = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class ChannelConfig:
    """Where and how to connect.

    ``target`` is ``host:port`` (or any gRPC target such as ``dns:///name:port``).
    TLS is on when ``tls`` is true or any certificate is given; without
    ``root_certificates`` the system roots are used. ``private_key`` and
    ``certificate_chain`` (PEM) enable mutual TLS; ``server_name`` overrides the
    name checked against the server certificate (tests, IP targets).
    """

    target: str
    tls: bool = False
    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    server_name: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: Extra ``grpc.*`` channel arguments, appended after ours (later ones win).
    options: tuple[tuple[str, str | int], ...] = ()

    @property
    def secure(self) -> bool:
        certificates = (self.root_certificates, self.private_key, self.certificate_chain)
        return self.tls or any(c is not None for c in certificates)

    def channel_options(self) -> list[tuple[str, str | int]]:
        opts: list[tuple[str, str | int]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            # gRPC's reconnect backoff defaults to 1 s growing to 120 s; while it waits, calls fail at once
            # with UNAVAILABLE, so a retry could never see a server that is back. Keep it short.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if self.server_name:
            opts.append(("grpc.ssl_target_name_override", self.server_name))
        opts.extend(self.options)
        return opts

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)


def create_channel(config: ChannelConfig) -> grpc.Channel:
    """A blocking channel for ``config``; close it with ``channel.close()``."""
    if config.secure:
        return grpc.secure_channel(config.target, config.credentials(), options=config.channel_options())
    return grpc.insecure_channel(config.target, options=config.channel_options())


def create_aio_channel(config: ChannelConfig) -> grpc.aio.Channel:
    """An asyncio channel for ``config``; close it with ``await channel.close()``."""
    if config.secure:
        return grpc.aio.secure_channel(config.target, config.credentials(), options=config.channel_options())
    return grpc.aio.insecure_channel(config.target, options=config.channel_options())


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, for the status codes in ``codes`` (UNAVAILABLE by default).

    Attempt ``n`` (from 1) that fails with a retryable code is followed by a
    sleep of ``min(max_backoff, initial_backoff * multiplier ** (n - 1))``
    scaled by a random factor in ``[1 - jitter, 1]``, up to ``max_attempts``
    attempts in all. ``RetryPolicy.none()`` makes exactly one attempt.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.5
    codes: frozenset[grpc.StatusCode] = field(default_factory=lambda: frozenset({grpc.StatusCode.UNAVAILABLE}))

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    @classmethod
    def none(cls) -> RetryPolicy:
        return cls(max_attempts=1)

    def delays(self) -> Iterator[float]:
        """The sleeps between attempts: ``max_attempts - 1`` of them."""
        base = self.initial_backoff
        for _ in range(self.max_attempts - 1):
            yield min(self.max_backoff, base) * (1 - self.jitter * random.random())
            base *= self.multiplier

    def retryable(self, exc: grpc.RpcError) -> bool:
        return _code(exc) in self.codes


def _code(exc: grpc.RpcError) -> grpc.StatusCode:
    code = getattr(exc, "code", None)
    return code() if callable(code) else grpc.StatusCode.UNKNOWN


def to_error(exc: grpc.RpcError) -> LMaaSError:
    """The :mod:`lmaas.protos.errors` exception for a failed call (raise it ``from exc``): the exact class the
    server raised, with its fields, when the server sent its rich status."""
    details = getattr(exc, "details", None)
    message = (details() if callable(details) else None) or str(exc)
    trailers = getattr(exc, "trailing_metadata", None)
    rich = next((v for k, v in (trailers() if callable(trailers) else None) or () if k == DETAILS_KEY), None)
    return from_status(_code(exc), message, rich if isinstance(rich, bytes) else None)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _plan(timeout: float | None, policy: RetryPolicy | None, idempotent: bool) -> tuple[float | None, Iterator[float]]:
    deadline = None if timeout is None else time.monotonic() + timeout
    delays = (policy or RetryPolicy.none()).delays() if idempotent else iter(())
    return deadline, delays


def _next_sleep(exc: grpc.RpcError, policy: RetryPolicy | None, delays: Iterator[float],
                deadline: float | None) -> float | None:
    """How long to sleep before the next attempt, or None to give up."""
    if policy is None or not policy.retryable(exc):
        return None
    delay = next(delays, None)
    if delay is None:
        return None
    left = _remaining(deadline)
    if left is not None and delay >= left:
        return None
    return delay


def retry(attempt: Callable[[float | None], T], *, timeout: float | None = None,
          policy: RetryPolicy | None = None, idempotent: bool = True) -> T:
    """Run ``attempt(remaining_timeout)`` until it succeeds, retrying as ``policy`` allows.

    ``attempt`` makes one complete call (for a stream: opens it and consumes
    it) with the timeout it is given. Non-idempotent calls are tried once.
    Raises the mapped :class:`~lmaas.protos.errors.LMaaSError` of the last failure.
    """
    deadline, delays = _plan(timeout, policy, idempotent)
    while True:
        try:
            return attempt(_remaining(deadline))
        except grpc.RpcError as exc:
            sleep = _next_sleep(exc, policy, delays, deadline)
            if sleep is None:
                raise to_error(exc) from exc
            time.sleep(sleep)


async def aretry(attempt: Callable[[float | None], Awaitable[T]], *, timeout: float | None = None,
                 policy: RetryPolicy | None = None, idempotent: bool = True) -> T:
    """The asyncio twin of :func:`retry`."""
    deadline, delays = _plan(timeout, policy, idempotent)
    while True:
        try:
            return await attempt(_remaining(deadline))
        except grpc.RpcError as exc:
            sleep = _next_sleep(exc, policy, delays, deadline)
            if sleep is None:
                raise to_error(exc) from exc
            await asyncio.sleep(sleep)


def call(method: Callable[..., T], request: Any, *, timeout: float | None = None,
         policy: RetryPolicy | None = None, metadata: Metadata = (), idempotent: bool = True) -> T:
    """One unary call on a blocking stub method, with retries, deadline and error mapping."""
    md = tuple(metadata) or None
    return retry(lambda left: method(request, timeout=left, metadata=md), timeout=timeout, policy=policy,
                 idempotent=idempotent)


async def acall(method: Callable[..., Awaitable[T]], request: Any, *, timeout: float | None = None,
                policy: RetryPolicy | None = None, metadata: Metadata = (), idempotent: bool = True) -> T:
    """One unary call on an asyncio stub method, with retries, deadline and error mapping."""
    md = tuple(metadata) or None
    return await aretry(lambda left: method(request, timeout=left, metadata=md), timeout=timeout, policy=policy,
                        idempotent=idempotent)
