"""lmaas.client._grpc: the retry loop, backoff, deadlines, status mapping and channel options.

These drive ``retry`` with a stand-in for one call; the same paths run against real workers in
``test_inference_client.py`` (late start, restart, deadlines, TLS).
"""

from __future__ import annotations

import time

import grpc
import pytest
from lmaas.client._grpc import ChannelConfig, RetryPolicy, aretry, retry, to_error
from lmaas.protos import errors


class Failure(grpc.RpcError):
    """What a failed call raises (grpc's own error types cannot be built outside grpc)."""

    def __init__(self, code: grpc.StatusCode, details: str = "boom") -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class Flaky:
    """Fails with ``code`` ``failures`` times, then returns 'ok'; records the timeouts it was given."""

    def __init__(self, failures: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.failures, self.code = failures, code
        self.timeouts: list[float | None] = []

    def __call__(self, timeout: float | None) -> str:
        self.timeouts.append(timeout)
        if len(self.timeouts) <= self.failures:
            raise Failure(self.code, f"attempt {len(self.timeouts)}")
        return "ok"


FAST = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.004)


def test_unavailable_is_retried_until_success() -> None:
    attempt = Flaky(3)
    assert retry(attempt, policy=FAST) == "ok"
    assert len(attempt.timeouts) == 4


def test_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    attempt = Flaky(10)
    with pytest.raises(errors.Unavailable, match="attempt 4") as info:
        retry(attempt, policy=FAST)
    assert len(attempt.timeouts) == 4
    assert isinstance(info.value.__cause__, Failure)


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL])
def test_other_codes_are_not_retried(code: grpc.StatusCode) -> None:
    attempt = Flaky(1, code)
    with pytest.raises(errors.LMaaSError) as info:
        retry(attempt, policy=FAST)
    assert info.value.code == code
    assert len(attempt.timeouts) == 1


def test_non_idempotent_calls_are_tried_once() -> None:
    attempt = Flaky(1)
    with pytest.raises(errors.Unavailable):
        retry(attempt, policy=FAST, idempotent=False)
    assert len(attempt.timeouts) == 1
    attempt = Flaky(1)
    with pytest.raises(errors.Unavailable):
        retry(attempt, policy=RetryPolicy.none())
    assert len(attempt.timeouts) == 1


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(max_attempts=8, initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0.5)
    for _ in range(50):
        delays = list(policy.delays())
        assert len(delays) == 7
        for n, d in enumerate(delays):
            base = min(1.0, 0.1 * 2**n)
            assert base * 0.5 <= d <= base
    assert len({tuple(policy.delays()) for _ in range(5)}) > 1  # random
    assert list(RetryPolicy(max_attempts=3, jitter=0).delays()) == [0.1, 0.2]
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_timeout_spans_all_attempts() -> None:
    attempt = Flaky(100)
    policy = RetryPolicy(max_attempts=100, initial_backoff=0.05, max_backoff=0.05, jitter=0)
    t0 = time.monotonic()
    with pytest.raises(errors.Unavailable):
        retry(attempt, timeout=0.3, policy=policy)
    elapsed = time.monotonic() - t0
    assert elapsed < 0.3 + 0.2  # no sleep is started that would end past the deadline (+ scheduling slack)
    assert 2 <= len(attempt.timeouts) <= 7
    given = [t for t in attempt.timeouts if t is not None]
    assert given == sorted(given, reverse=True) and given[0] <= 0.3  # each attempt gets what is left
    no_deadline = Flaky(1)
    retry(no_deadline, policy=FAST)
    assert no_deadline.timeouts == [None, None]


async def test_aretry() -> None:
    attempt = Flaky(2)

    async def once(timeout: float | None) -> str:
        return attempt(timeout)

    assert await aretry(once, policy=FAST, timeout=5) == "ok"
    assert len(attempt.timeouts) == 3
    attempt = Flaky(1, grpc.StatusCode.PERMISSION_DENIED)
    with pytest.raises(errors.PermissionDenied):
        await aretry(once, policy=FAST)


def test_status_mapping() -> None:
    for cls in (errors.InvalidArgument, errors.NotFound, errors.AlreadyExists, errors.FailedPrecondition,
                errors.Aborted, errors.ResourceExhausted, errors.DeadlineExceeded, errors.Unavailable,
                errors.Unauthenticated, errors.PermissionDenied, errors.Unimplemented, errors.DataLoss):
        err = to_error(Failure(cls.code, "why"))
        assert type(err) is cls and err.message == "why"
    unknown = to_error(Failure(grpc.StatusCode.UNKNOWN, "?"))
    assert type(unknown) is errors.LMaaSError


def test_rich_status_rebuilds_the_exact_class() -> None:
    """What the server interceptor sends in grpc-status-details-bin gives back the class and its fields; a class
    defined outside the kernel travels as its nearest kernel base; a foreign or mismatched trailer falls back."""
    for sent in (errors.ModelNotFound("m", 3), errors.ArtifactNotFound("ab" * 32), errors.PayloadTooLarge("big"),
                 errors.Unavailable("draining")):
        got = errors.from_status(sent.code, sent.message, errors.status_details(sent))
        assert type(got) is type(sent) and got.message == sent.message
        assert {f: getattr(got, f) for f in sent.fields} == {f: str(getattr(sent, f)) for f in sent.fields}

    class Private(errors.InvalidArgument):  # e.g. a server's own subclass
        pass

    assert errors.error_info(Private("x")) == ("INVALID_ARGUMENT", {})
    details = errors.status_details(errors.ModelNotFound("m"))
    assert type(errors.from_status(grpc.StatusCode.INTERNAL, "m", details)) is errors.Internal  # code disagrees
    assert type(errors.from_status(grpc.StatusCode.NOT_FOUND, "m", b"\xff\x00garbage")) is errors.NotFound


def test_channel_config() -> None:
    plain = ChannelConfig("h:1", max_message_bytes=1234)
    assert not plain.secure
    assert ("grpc.max_receive_message_length", 1234) in plain.channel_options()
    assert ("grpc.max_send_message_length", 1234) in plain.channel_options()
    assert ChannelConfig("h:1", tls=True).secure and ChannelConfig("h:1", root_certificates=b"x").secure
    named = ChannelConfig("h:1", server_name="svc", options=(("grpc.max_receive_message_length", 5),))
    assert named.channel_options()[-2:] == [("grpc.ssl_target_name_override", "svc"),
                                            ("grpc.max_receive_message_length", 5)]
