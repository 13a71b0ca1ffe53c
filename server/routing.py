"""Which loaded version answers a request that names no version."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["HeldModel", "Route", "pick_version"]

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


def pick_version(route: Route | None, loaded: dict[int, object], rand: random.Random | None = None) -> int | None:
    """The routed version if it is loaded, else the highest loaded version."""
    if route is not None:
        canary_ready = route.canary is not None and route.canary_weight > 0 and route.canary in loaded
        if canary_ready and (rand or _random).random() * 100 < route.canary_weight:
            return route.canary
        if route.stable in loaded:
            return route.stable
    return max(loaded) if loaded else None
