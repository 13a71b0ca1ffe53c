"""Which loaded version answers a request that names no version."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

__all__ = ["HeldModel", "Route", "pick_version", "sticky_draw"]

_random = random.Random()


@dataclass(frozen=True, slots=True)
class HeldModel:
    """A model version a worker holds, as it reports it to the control plane."""

    name: str
    version: int
    digest: str


@dataclass(frozen=True, slots=True)
class Route:
    """Deployed split of a model: ``canary_weight`` percent of requests go to ``canary``."""

    stable: int
    canary: int | None = None
    canary_weight: int = 0


def sticky_draw(key: str) -> float:
    """A conversation key's fixed point in [0, 100): the same key always draws the same number.

    Compared against the canary weight like a random draw, so a conversation stays on one version, and
    raising the weight only moves conversations from stable to canary, never back.
    """
    head = hashlib.sha256(key.encode()).digest()[:8]
    return int.from_bytes(head, "big") / float(1 << 64) * 100


def pick_version(
    route: Route | None, loaded: dict[int, object], rand: random.Random | None = None, key: str = ""
) -> int | None:
    """The routed version if it is loaded, else the highest loaded version.

    ``key`` (a conversation: OpenAI ``user``, ``X-LMaaS-Session``) makes the canary choice sticky.
    """
    if route is not None:
        canary_ready = route.canary is not None and route.canary_weight > 0 and route.canary in loaded
        draw = sticky_draw(key) if key else (rand or _random).random() * 100
        if canary_ready and draw < route.canary_weight:
            return route.canary
        if route.stable in loaded:
            return route.stable
    return max(loaded) if loaded else None
