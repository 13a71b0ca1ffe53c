"""Routes of deployments: thin calls of :class:`~lmaas.control_plane.deployments.Deployments`.

Rollout progress is a server-sent event stream over the same core watch as gRPC's WatchRollout
(:meth:`Deployments.watch_rollout`): one ``rollout`` event now and one per change, the store revision as
the event id, closed after a final phase (succeeded, failed, superseded). While nothing changes, a comment
line (``: keep-alive``) goes out every ``sse_keepalive`` seconds (15 by default) so proxies keep the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from lmaas.control_plane.rest import schemas as s
from lmaas.control_plane.rest.access import AuthorizedRoute, principal, route_options
from lmaas.protos.lmaas.control.v1 import deployments_pb2
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

__all__ = ["router"]

_DEP = "/lmaas.control.v1.Deployments/"
router = APIRouter(route_class=AuthorizedRoute, tags=["deployments"])
ModelName = Annotated[str, Path(description="Model name.", examples=["demo"], max_length=128)]


def _state(deployment: pb.Deployment, rollout: pb.Rollout, revision: int) -> s.DeploymentState:
    return s.DeploymentState(deployment=s.deployment(deployment), rollout=s.rollout(rollout), revision=revision)


@router.get("/deployments", summary="List deployments", response_model=s.DeploymentList,
            openapi_extra=route_options(_DEP + "ListDeployments"))
async def list_deployments(request: Request) -> s.DeploymentList:
    """Every deployed model with its desired state and latest rollout."""
    deployments, rollouts, revision = await request.app.state.plane.deployments.list()
    return s.DeploymentList(deployments=[_state(d, r, revision) for d, r in zip(deployments, rollouts, strict=True)],
                            revision=revision)


@router.put("/deployments/{name}", summary="Deploy a version (with an optional canary)",
            response_model=s.DeploymentState, openapi_extra=route_options(_DEP + "Deploy"))
async def deploy(name: ModelName, body: s.Deploy, request: Request) -> s.DeploymentState:
    """Set what serves: a stable version and, optionally, a canary taking `weight` percent of the requests
    that name no version. Answers at once with the rollout; follow it with the events route."""
    spec = pb.DeploymentSpec(stable_version=body.version, pools=body.pools, lazy=body.lazy)
    if body.canary is not None:
        spec.canary_version, spec.canary_weight = body.canary.version, body.canary.weight
    request.state.audit = deployments_pb2.DeployRequest(model=name, spec=spec,
                                                        expected_generation=body.expected_generation)
    result = await request.app.state.plane.deployments.deploy(
        name, spec, expected_generation=body.expected_generation, created_by=principal(request).name
    )
    return _state(*result)


@router.post("/deployments/{name}/rollback", summary="Roll back", response_model=s.DeploymentState,
             openapi_extra=route_options(_DEP + "Rollback"))
async def rollback(name: ModelName, request: Request, body: s.Rollback | None = None) -> s.DeploymentState:
    """Serve the previous good deployment again, or version `to`. The body may be omitted."""
    body = body or s.Rollback()
    request.state.audit = deployments_pb2.RollbackRequest(model=name, to_version=body.to or 0,
                                                          expected_generation=body.expected_generation)
    result = await request.app.state.plane.deployments.rollback(
        name, to_version=body.to or 0, expected_generation=body.expected_generation,
        created_by=principal(request).name,
    )
    return _state(*result)


@router.get("/deployments/{name}", summary="Current deployment and its history", response_model=s.DeploymentState,
            openapi_extra=route_options(_DEP + "GetDeployment"))
async def get_deployment(name: ModelName, request: Request) -> s.DeploymentState:
    """The desired state, its history (oldest first), and the latest rollout with per-worker progress."""
    return _state(*await request.app.state.plane.deployments.get(name))


_EVENTS = {
    200: {
        "description": "`text/event-stream`: `event: rollout`, `id:` the store revision, `data:` a Rollout as "
                       "JSON; the stream ends after a final phase.",
        "content": {"text/event-stream": {
            "schema": {"type": "string"},
            "example": 'event: rollout\nid: 42\ndata: {"model": "demo", "generation": 4, "phase": "succeeded"}\n\n',
        }},
    },
}


@router.get("/deployments/{name}/rollout/events", summary="Rollout progress (server-sent events)",
            response_class=StreamingResponse, responses=_EVENTS,  # type: ignore[arg-type]
            openapi_extra=route_options(_DEP + "WatchRollout"))
async def rollout_events(
    name: ModelName, request: Request,
    generation: Annotated[int, Query(ge=0, le=(1 << 63) - 1,
                                     description="The generation to follow; 0 = the latest.")] = 0,
) -> StreamingResponse:
    """The rollout's state now and after each change, until it succeeds, fails or is superseded."""
    plane = request.app.state.plane
    updates: AsyncGenerator[tuple[pb.Rollout, int]]
    updates = plane.deployments.watch_rollout(name, generation, plane.watcher)
    first = await anext(updates)  # errors (unknown model, no rollout) answer a problem, not a broken stream

    keepalive: float = request.app.state.sse_keepalive

    async def events() -> AsyncIterator[bytes]:
        yield _event(*first)
        # the next update is awaited in a task, so a keep-alive comment can go out while it is pending
        # (proxies close idle streams) without cancelling the watch
        pending: asyncio.Task[tuple[pb.Rollout, int]] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(updates))
                done, _ = await asyncio.wait({pending}, timeout=keepalive)
                if not done:
                    yield b": keep-alive\n\n"
                    continue
                try:
                    rollout, revision = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                yield _event(rollout, revision)
        finally:
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            await updates.aclose()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _event(rollout: pb.Rollout, revision: int) -> bytes:
    return f"event: rollout\nid: {revision}\ndata: {s.rollout(rollout).model_dump_json()}\n\n".encode()
