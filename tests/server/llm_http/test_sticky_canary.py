"""Sticky canary: a conversation key picks the same version every time, by hash against the canary weight."""

from __future__ import annotations

import random

from lmaas.server.routing import Route, pick_version, sticky_draw

LOADED: dict[int, object] = {1: object(), 2: object()}
KEYS = [f"user-{i}" for i in range(2000)]


def test_a_key_always_gets_the_same_version() -> None:
    route = Route(stable=1, canary=2, canary_weight=50)
    for key in KEYS[:200]:
        # A different random source on every call: the key alone decides.
        picks = {pick_version(route, LOADED, random.Random(seed), key=key) for seed in range(20)}
        assert len(picks) == 1, key


def test_keys_split_by_the_canary_weight() -> None:
    route = Route(stable=1, canary=2, canary_weight=20)
    on_canary = sum(pick_version(route, LOADED, key=key) == 2 for key in KEYS)
    # sha256 spreads keys evenly: about 400 of 2000; the binomial sd is ~18, so 300..500 never fails by chance.
    assert 300 < on_canary < 500


def test_raising_the_weight_never_moves_a_conversation_back_to_stable() -> None:
    before = {k for k in KEYS if pick_version(Route(1, 2, 10), LOADED, key=k) == 2}
    after = {k for k in KEYS if pick_version(Route(1, 2, 60), LOADED, key=k) == 2}
    assert before and before < after


def test_no_key_stays_random_and_a_missing_canary_falls_back_to_stable() -> None:
    route = Route(stable=1, canary=2, canary_weight=50)
    picks = {pick_version(route, LOADED, random.Random(seed)) for seed in range(50)}
    assert picks == {1, 2}
    assert pick_version(route, {1: object()}, key="anyone") == 1
    assert pick_version(Route(1, 2, 0), LOADED, key=KEYS[0]) == 1
    assert pick_version(Route(1, 2, 100), LOADED, key=KEYS[0]) == 2


def test_draw_is_in_range_and_deterministic() -> None:
    draws = [sticky_draw(k) for k in KEYS]
    assert all(0 <= d < 100 for d in draws)
    assert draws == [sticky_draw(k) for k in KEYS]
