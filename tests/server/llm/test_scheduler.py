"""The scheduler alone (pure Python, no model): admission by KV budget, the queue bound, chunked prefill."""

from __future__ import annotations

import pytest
from lmaas.protos.errors import InvalidArgument, ResourceExhausted
from lmaas.server.llm.scheduler import Entry, Scheduler, Work


def test_admission_by_kv_budget_fifo() -> None:
    s = Scheduler(100, max_waiting=4, prefill_chunk=64)
    s.add(Entry("a", 10, 60))
    s.add(Entry("b", 10, 50))  # does not fit beside a
    s.add(Entry("c", 10, 10))  # would fit, but FIFO: it does not overtake b
    plan = s.schedule()
    assert [w.id for w in plan] == ["a"]
    assert s.counts() == (1, 2) and s.kv_usage() == pytest.approx(0.6)
    assert s.finish("a")
    assert [w.id for w in s.schedule()] == ["b", "c"]
    assert s.kv_usage() == pytest.approx(0.6)


def test_queue_bound_and_requests_that_can_never_fit() -> None:
    s = Scheduler(100, max_waiting=1)
    s.add(Entry("a", 10, 100))
    s.schedule()
    s.add(Entry("b", 10, 100))
    with pytest.raises(ResourceExhausted, match="1 waiting"):
        s.add(Entry("c", 10, 20))
    with pytest.raises(InvalidArgument, match="KV budget holds 100"):
        s.add(Entry("d", 10, 101))


def test_decodes_first_then_fixed_size_prefill_chunks() -> None:
    s = Scheduler(10_000, prefill_chunk=64, step_tokens=100)
    s.add(Entry("short", 5, 20))
    assert s.schedule() == [Work("short", 0, 5, False, True)]
    s.add(Entry("long", 200, 250))
    s.add(Entry("mid", 70, 80))
    steps = [s.schedule() for _ in range(5)]
    # The running stream decodes every step while the long prompt is prefilled 64 tokens at a time.
    assert all(step[0] == Work("short", 5, 1, True, True) for step in steps)
    assert steps[0][1:] == [Work("long", 0, 64, False, False)]  # 1 + 64 + 64 > 100: "mid" waits a step
    assert steps[1][1:] == [Work("long", 64, 64, False, False)]
    assert steps[2][1:] == [Work("long", 128, 64, False, False)]
    assert steps[3][1:] == [Work("long", 192, 8, False, True), Work("mid", 0, 64, False, False)]
    assert steps[4][1:] == [Work("long", 200, 1, True, True), Work("mid", 64, 6, False, True)]
    chunks = [w.count for step in steps for w in step if w.id == "mid" and not w.decode]
    assert chunks == [64, 6]  # chunk boundaries depend on the prompt alone


def test_finish_removes_waiting_and_unknown_ids() -> None:
    s = Scheduler(10, max_running=1)
    s.add(Entry("a", 1, 5))
    s.add(Entry("b", 1, 5))
    s.schedule()
    assert s.counts() == (1, 1)
    assert s.finish("b") and s.counts() == (1, 0)
    assert not s.finish("nope")
    assert s.finish("a") and s.idle()
