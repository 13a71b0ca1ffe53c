"""The worker's HTTP application: every transport module's routes in one :class:`App`.

To add routes, write ``build_routes(dataplane) -> list[Route]`` in a module of
this package and add it to :func:`route_modules` below; API keys, error mapping,
compression and metrics then apply to them as to the OIP routes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lmaas.server.auth import ApiKeys
from lmaas.server.dataplane import DataPlane
from lmaas.server.http import generate, oip, openai
from lmaas.server.http.asgi import App, Route
from lmaas.server.metrics import WorkerMetrics
from prometheus_client import Counter

__all__ = ["build_app", "route_modules"]

RouteBuilder = Callable[[DataPlane], list[Route]]


def route_modules() -> list[RouteBuilder]:
    """The ``build_routes`` of each HTTP transport module served by the worker."""
    return [oip.build_routes, openai.build_routes, generate.build_routes]


def build_app(
    dataplane: DataPlane,
    *,
    metrics: WorkerMetrics | None = None,
    api_keys: Sequence[str] | None = None,
    max_body: int = 64 << 20,
) -> App:
    """``api_keys`` (None: open) guard every non-public route, as ``--require-api-key`` does on gRPC."""
    routes = [route for build in route_modules() for route in build(dataplane)]
    keys = ApiKeys(api_keys) if api_keys is not None else None
    observe = None
    if metrics is not None:
        counter = metrics.http_requests
        children: dict[tuple[str, str, int], Counter] = {}

        def observe(route: str, method: str, status: int) -> None:
            # Children cached per (route, method, status): no label lookup per request after the first.
            child = children.get((route, method, status))
            if child is None:
                child = children[(route, method, status)] = counter.labels(route, method, str(status))
            child.inc()

    return App(routes, max_body=max_body, check_key=keys.check_headers if keys else None, observe=observe)
