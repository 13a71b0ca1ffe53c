"""Routes of workers, tokens and the audit trail: thin calls of the same core objects as gRPC."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from lmaas.control_plane.rest import schemas as s
from lmaas.control_plane.rest.access import AuthorizedRoute, principal, route_options
from lmaas.control_plane.workers import list_workers
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from lmaas.protos.lmaas.control.v1 import tokens_pb2

__all__ = ["router"]

_TOK = "/lmaas.control.v1.Tokens/"
router = APIRouter(route_class=AuthorizedRoute)
_ROLES = {"reader": pb.ROLE_READER, "deployer": pb.ROLE_DEPLOYER, "worker": pb.ROLE_WORKER, "admin": pb.ROLE_ADMIN}


@router.get("/workers", summary="Connected workers", tags=["workers"], response_model=s.WorkerList,
            openapi_extra=route_options("/lmaas.control.v1.Workers/ListWorkers"))
async def workers(
    request: Request,
    pool: Annotated[str, Query(max_length=128, description="Only this pool's workers; empty = all.")] = "",
) -> s.WorkerList:
    """Every connected worker, what it holds, and what it acknowledged per model."""
    found, revision = await list_workers(request.app.state.plane.store, pool)
    return s.WorkerList(workers=[s.worker(w) for w in found], revision=revision)


@router.get("/tokens", summary="List tokens (admin)", tags=["tokens"], response_model=s.TokenList,
            openapi_extra=route_options(_TOK + "ListTokens"))
async def list_tokens(
    request: Request,
    include_revoked: Annotated[bool, Query(description="Also list revoked tokens (tombstones).")] = False,
) -> s.TokenList:
    """Every token's id, role, description, creator and revocation (never a secret)."""
    tokens, revision = await request.app.state.plane.tokens.list(include_revoked=include_revoked)
    return s.TokenList(tokens=[s.token(t) for t in tokens], revision=revision)


@router.post("/tokens", summary="Create a token (admin)", tags=["tokens"], status_code=201,
             response_model=s.TokenCreated, openapi_extra=route_options(_TOK + "CreateToken"))
async def create_token(body: s.CreateToken, request: Request) -> s.TokenCreated:
    """A new bearer token with a role; its secret is in this answer only."""
    role = _ROLES[body.role]
    request.state.audit = tokens_pb2.CreateTokenRequest(role=role, description=body.description)
    record, secret, revision = await request.app.state.plane.tokens.create(
        role, body.description, created_by=principal(request).name
    )
    return s.TokenCreated(token=s.token(record), secret=secret, revision=revision)


@router.delete("/tokens/{token_id}", summary="Revoke a token (admin)", tags=["tokens"], response_model=s.Token,
               openapi_extra=route_options(_TOK + "RevokeToken"))
async def revoke_token(
    token_id: Annotated[str, Path(description="The token's public id.", examples=["0123456789ab"])],
    request: Request,
) -> s.Token:
    """Revoke at once; the record stays as a tombstone (revoking twice answers it again)."""
    request.state.audit = tokens_pb2.RevokeTokenRequest(id=token_id)
    record, _ = await request.app.state.plane.tokens.revoke(token_id, revoked_by=principal(request).name)
    return s.token(record)


@router.get("/audit", summary="The audit trail (admin)", tags=["audit"], response_model=s.AuditPage,
            openapi_extra=route_options("GET /api/v1/audit"))
async def audit(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000, description="Entries per page.")] = 100,
    before: Annotated[str, Query(max_length=256, description="The `next` cursor of the previous page.")] = "",
) -> s.AuditPage:
    """Every audited mutation and denied attempt, of both transports, newest first, in pages."""
    entries, cursor, revision = await request.app.state.plane.audit.page(limit=limit, before=before)
    return s.AuditPage(entries=[s.audit_entry(e) for _, e in entries], next=cursor or None, revision=revision)
