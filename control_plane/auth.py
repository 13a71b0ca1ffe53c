"""Authentication, roles and the audit hook of the control plane: one server interceptor.

Who calls
    * ``authorization: Bearer lmaas_<id>_<secret>``: a token of
      :mod:`~lmaas.control_plane.tokens`; its role is the token's. A token that
      is sent must be valid, whatever else the call carries.
    * Without a token, a client certificate verified against ``--tls-client-ca``
      (mTLS) whose common name matches ``--tls-worker-cn`` (a glob, ``*`` by
      default) is the principal ``cert:<CN>`` with role **worker** and nothing
      more: certificates identify workers, tokens grant everything else.
    * Anything else: UNAUTHENTICATED.

What they may do
    :data:`METHODS` maps every RPC to the permission it needs and :data:`GRANTS`
    lists each role's permissions, in this one place. A method missing from the
    table is refused (PERMISSION_DENIED), so a new RPC is closed until it is
    listed; health checks and reflection stay open (probes send no headers).

    ========  =====================================================================
    read      ModelRegistry Get*/List*, Deployments Get*/List*/WatchRollout, Workers
    deploy    ModelRegistry CreateModel/CreateVersion/UploadArtifact/GetUploadStatus, Deploy, Rollback
    sync      WorkerSync.Sync (a worker's desired-state stream)
    download  Artifacts.Download, REST ``GET .../versions/{version}/artifact`` (a version's bytes)
    admin     Tokens.*, the audit trail (REST ``GET /api/v1/audit``)
    ========  =====================================================================

    The REST API (:mod:`lmaas.control_plane.rest`) uses the same table: each
    route names the RPC whose row it shares (``PUT /api/v1/deployments/{name}``
    → ``Deployments/Deploy``), and the few routes without an RPC twin have
    ``"VERB /path"`` rows.

    reader: read · deployer: read, deploy, download · worker: sync, download · admin: all.
    A deployer may download artifacts because it already pushes them and ``lmaas model optimize`` downloads the
    parent it derives from; a reader sees metadata only (artifacts may be proprietary weights).

What is recorded
    Calls of the methods in :data:`AUDITED` (every mutation), and denied
    attempts at them, go to the :class:`~lmaas.control_plane.audit.AuditLog`
    with principal, request, status and peer.

The principal of the running call is :func:`current_principal` (a context
variable set for the handler), which servicers record as ``created_by``.
``enabled=False`` (``--no-auth``) lets everyone do everything as ``anonymous``
(calls are still audited).
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import fnmatch
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
import grpc.aio
from google.protobuf import text_format
from google.protobuf.message import Message
from lmaas.control_plane.audit import AuditLog
from lmaas.control_plane.tokens import Tokens, role_name
from lmaas.protos.errors import LMaaSError, PermissionDenied, Unauthenticated
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

__all__ = [
    "ANONYMOUS",
    "AUDITED",
    "GRANTS",
    "METHODS",
    "OPEN_PREFIXES",
    "AuthInterceptor",
    "Permission",
    "Principal",
    "current_principal",
]

log = logging.getLogger("lmaas.auth")
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Role: TypeAlias = "pb.Role"


class Permission(enum.Enum):
    READ = "read"
    DEPLOY = "deploy"
    SYNC = "sync"
    DOWNLOAD = "download"
    ADMIN = "admin"


GRANTS: dict[Role, frozenset[Permission]] = {
    pb.ROLE_READER: frozenset({Permission.READ}),
    pb.ROLE_DEPLOYER: frozenset({Permission.READ, Permission.DEPLOY, Permission.DOWNLOAD}),
    pb.ROLE_WORKER: frozenset({Permission.SYNC, Permission.DOWNLOAD}),
    pb.ROLE_ADMIN: frozenset(Permission),
}

_REG, _DEP, _WRK = "/lmaas.control.v1.ModelRegistry/", "/lmaas.control.v1.Deployments/", "/lmaas.control.v1.Workers/"
_TOK, _SYNC, _ART = "/lmaas.control.v1.Tokens/", "/lmaas.worker.v1.WorkerSync/", "/lmaas.worker.v1.Artifacts/"

#: Every RPC of the control plane → the permission it needs. Not listed = refused.
METHODS: dict[str, Permission] = {
    _REG + "GetModel": Permission.READ,
    _REG + "ListModels": Permission.READ,
    _REG + "GetVersion": Permission.READ,
    _REG + "ListVersions": Permission.READ,
    _REG + "GetUploadStatus": Permission.DEPLOY,
    _REG + "CreateModel": Permission.DEPLOY,
    _REG + "CreateVersion": Permission.DEPLOY,
    _REG + "UploadArtifact": Permission.DEPLOY,
    _DEP + "GetDeployment": Permission.READ,
    _DEP + "ListDeployments": Permission.READ,
    _DEP + "WatchRollout": Permission.READ,
    _DEP + "Deploy": Permission.DEPLOY,
    _DEP + "Rollback": Permission.DEPLOY,
    _WRK + "ListWorkers": Permission.READ,
    _SYNC + "Sync": Permission.SYNC,
    _ART + "Download": Permission.DOWNLOAD,
    _TOK + "CreateToken": Permission.ADMIN,
    _TOK + "ListTokens": Permission.ADMIN,
    _TOK + "RevokeToken": Permission.ADMIN,
    # REST routes with no RPC twin, keyed "VERB /path" (every other REST route names the RPC it shares a row with)
    "GET /api/v1/models/{name}/versions/{version}/artifact": Permission.DOWNLOAD,
    "GET /api/v1/audit": Permission.ADMIN,
    "GET /api/v1/whoami": Permission.READ,
    "GET /api/v1/models/{name}/statistics": Permission.READ,
    "POST /api/v1/models/{name}/generate": Permission.DEPLOY,  # spends worker compute: not for readers
}

#: The mutations: each call (and each denied attempt) is audited.
AUDITED: frozenset[str] = frozenset({
    _REG + "CreateModel", _REG + "CreateVersion", _DEP + "Deploy", _DEP + "Rollback",
    _TOK + "CreateToken", _TOK + "RevokeToken",
})

OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


@dataclass(frozen=True)
class Principal:
    """Who makes a call: ``token:<id>``, ``cert:<CN>`` or ``anonymous``, and the role that grants."""

    name: str
    role: Role

    def may(self, permission: Permission) -> bool:
        return permission in GRANTS.get(self.role, frozenset())


ANONYMOUS = Principal("anonymous", pb.ROLE_ADMIN)
_UNAUTHENTICATED = Principal("unauthenticated", pb.ROLE_UNSPECIFIED)
_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("lmaas_principal", default=None)


def current_principal() -> Principal | None:
    """The principal of the call this code runs for (None outside an authenticated call)."""
    return _current.get()


def _bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization`` header; "" for a header that is not ``Bearer <token>``."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def _client_cn(context: Context) -> str | None:
    """The common name of a verified client certificate (mTLS), if the call came with one."""
    try:
        names = context.auth_context().get("x509_common_name")
    except Exception:  # pragma: no cover - no auth context on this transport
        return None
    if not names:
        return None
    raw = names[0]
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def describe(message: object, limit: int = 512) -> str:
    """A short, secret-free text of a request for the audit trail."""
    if not isinstance(message, Message):
        return ""
    if message.DESCRIPTOR.fields_by_name.get("header") is not None and message.HasField("header"):
        original: Any = message
        header: Any = type(original.header)()
        header.CopyFrom(original.header)
        if len(getattr(header, "config_json", "")) > 64:
            header.config_json = f"<{len(header.config_json)} characters>"
        message = header
    assert isinstance(message, Message)
    size = message.ByteSize()
    if size > 16 * limit:
        return f"<{message.DESCRIPTOR.name} of {size} bytes>"
    text: str = text_format.MessageToString(message, as_one_line=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates, authorizes per :data:`METHODS`, and audits :data:`AUDITED` calls.

    Install it inside the :class:`~lmaas.protos.interceptors.ErrorInterceptor`
    (after it in the server's list), which turns the errors it raises into statuses.
    """

    def __init__(self, tokens: Tokens, audit: AuditLog, *, enabled: bool = True, worker_cn: str = "*") -> None:
        self._tokens = tokens
        self._audit = audit
        self.enabled = enabled
        self._worker_cn = worker_cn
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def authenticate(self, context: Context) -> Principal:
        """Who makes the call; UNAUTHENTICATED when auth is on and nobody valid does."""
        return await self.principal_of(_bearer(context.invocation_metadata()), lambda: _client_cn(context))

    async def principal_of(self, bearer: str | None, client_cn: Callable[[], str | None] = lambda: None) -> Principal:
        """The principal of a bearer token (None: none sent, "": malformed) or else a client certificate's CN.

        Shared by both transports: gRPC passes its metadata's token, HTTP its ``Authorization`` header's.
        """
        if bearer is not None:
            record = await self._tokens.verify(bearer) if bearer else None
            if record is not None:
                return Principal(f"token:{record.id}", record.role)
            if self.enabled:
                raise Unauthenticated("the token is not valid: unknown, revoked, or not 'Bearer lmaas_<id>_<secret>'")
            return ANONYMOUS  # --no-auth: a stale LMAAS_TOKEN must not lock anyone out
        cn = client_cn()
        if cn is not None:
            worker = fnmatch.fnmatchcase(cn, self._worker_cn)
            return Principal(f"cert:{cn}", pb.ROLE_WORKER if worker else pb.ROLE_UNSPECIFIED)
        if self.enabled:
            raise Unauthenticated("a token is required: send 'authorization: Bearer <token>' (set LMAAS_TOKEN)")
        return ANONYMOUS

    async def _admit(self, method: str, permission: Permission | None, context: Context) -> Principal:
        principal = await self.authenticate(context)
        self.authorize(method, permission, principal)
        return principal

    def authorize(self, method: str, permission: Permission | None, principal: Principal) -> None:
        """PERMISSION_DENIED unless ``principal`` holds ``permission`` (None: the method is not in the table)."""
        if permission is None:
            log.error("refused %s: the method is not in the access table (lmaas.control_plane.auth.METHODS)", method)
            raise PermissionDenied(f"{method} is not open to any role")
        if self.enabled and not principal.may(permission):
            raise PermissionDenied(
                f"{principal.name} (role {role_name(principal.role)}) may not call {method.rsplit('/', 1)[-1]}: "
                f"it needs the {permission.value} permission"
            )

    async def _record(
        self, method: str, principal: Principal, request: object, context: Context, exc: BaseException | None
    ) -> None:
        if exc is None:
            code, message = "OK", ""
        elif isinstance(exc, LMaaSError):
            code, message = exc.code.name, exc.message
        elif isinstance(exc, grpc.aio.AbortError):
            code, message = _context_code(context), ""
        elif isinstance(exc, asyncio.CancelledError):
            code, message = grpc.StatusCode.CANCELLED.name, "the call was cancelled"
        else:
            code, message = grpc.StatusCode.INTERNAL.name, type(exc).__name__
        await self.audit(method, principal, request, code, message, context.peer() or "")

    async def audit(
        self, method: str, principal: Principal, request: object, code: str, message: str, peer: str
    ) -> None:
        """Write one audit entry (both transports: ``request`` is the gRPC request message, or the one a REST
        route built to describe its call)."""
        text = request if isinstance(request, str) else describe(request)
        entry = pb.AuditEntry(
            principal=principal.name, role=principal.role, method=method, request=text, code=code,
            message=message[:512], peer=peer,
        )
        await self._audit.record(entry)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        permission = METHODS.get(method)
        audited = method in AUDITED
        admit, record = self._admit, self._record
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }

        async def enter(context: Context, request: object) -> Principal:
            try:
                principal = await admit(method, permission, context)
            except (Unauthenticated, PermissionDenied) as exc:
                log.warning("denied %s from %s: %s", method, context.peer(), exc.message)
                if audited:
                    who = await _who(self, context)
                    await record(method, who, request, context, exc)
                raise
            _current.set(principal)
            return principal

        if handler.unary_unary is not None or handler.stream_unary is not None:
            inner_unary = handler.unary_unary or handler.stream_unary
            streaming_in = handler.stream_unary is not None

            async def call(request: Any, context: Context) -> Any:
                first: list[object] = []
                if streaming_in and audited:
                    request = _capture_first(request, first)
                principal = await enter(context, None if streaming_in else request)
                if not audited:
                    return await inner_unary(request, context)
                try:
                    reply = await inner_unary(request, context)
                except BaseException as exc:
                    await record(method, principal, first[0] if first else request, context, exc)
                    raise
                await record(method, principal, first[0] if first else request, context, None)
                return reply

            make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
            return make(call, **kwargs)

        inner_stream = handler.unary_stream or handler.stream_stream

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            await enter(context, None if handler.stream_stream else request)
            async for response in inner_stream(request, context):
                yield response

        make = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        return make(stream, **kwargs)


async def _who(interceptor: AuthInterceptor, context: Context) -> Principal:
    """The principal to record for a denied call: whoever authenticated, else ``unauthenticated``."""
    try:
        return await interceptor.authenticate(context)
    except LMaaSError:
        return _UNAUTHENTICATED


async def _capture_first(requests: AsyncIterator[Any], into: list[object]) -> AsyncIterator[Any]:
    async for message in requests:
        if not into:
            into.append(message)
        yield message


def _context_code(context: Context) -> str:
    try:
        code = context.code()
    except Exception:  # pragma: no cover - older grpc
        code = None
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return "ABORTED" if code is None else str(code)
