"""The one table between LMaaS errors and gRPC status codes.

Servers raise these; the server interceptor turns them into a status with the
message; clients turn a status back into the same class with
:func:`from_status`. It lives beside the protos so that ``lmaas.client`` never
imports server code.

Each class carries both of its wire forms: ``code`` (the gRPC status) and
``http_status`` (what the HTTP transports of worker and control plane answer),
so the two transports can never disagree. Tree::

    LMaaSError                      INTERNAL             500
    ├── InvalidArgument             INVALID_ARGUMENT     400
    ├── NotFound                    NOT_FOUND            404
    │   ├── ModelNotFound
    │   └── ArtifactNotFound
    ├── AlreadyExists               ALREADY_EXISTS       409
    ├── FailedPrecondition          FAILED_PRECONDITION  409 (e.g. repository RPCs on a managed worker)
    ├── Aborted                     ABORTED              409 (compare-and-swap conflict: retry)
    ├── ResourceExhausted           RESOURCE_EXHAUSTED   429 (queue full; PayloadTooLarge: 413)
    │   └── PayloadTooLarge                              413
    ├── DeadlineExceeded            DEADLINE_EXCEEDED    504
    ├── Unavailable                 UNAVAILABLE          503 (draining, not ready)
    ├── Unauthenticated             UNAUTHENTICATED      401
    ├── PermissionDenied            PERMISSION_DENIED    403
    ├── Unimplemented               UNIMPLEMENTED        501
    ├── DataLoss                    DATA_LOSS            400 (digest mismatch: the client sent bad bytes)
    ├── Cancelled                   CANCELLED            499 (the client went away; google.rpc's mapping)
    └── Internal                    INTERNAL             500
"""

from __future__ import annotations

import re
from typing import ClassVar

import grpc
from lmaas.protos.google.rpc import status_pb2

__all__ = [
    "DETAILS_KEY",
    "Aborted",
    "AlreadyExists",
    "ArtifactNotFound",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "LMaaSError",
    "ModelNotFound",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "error_info",
    "from_http",
    "from_status",
    "http_status",
    "status_details",
]

DETAILS_KEY = "grpc-status-details-bin"  # gRPC's trailer for a serialised google.rpc.Status
DOMAIN = "lmaas"
_ERROR_INFO_URL = "type.googleapis.com/google.rpc.ErrorInfo"


class LMaaSError(Exception):
    """Base of every LMaaS error; ``code`` / ``http_status`` are how it travels over gRPC / HTTP."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    http_status: ClassVar[int] = 500
    fields: ClassVar[tuple[str, ...]] = ()  # attributes that travel in ErrorInfo.metadata

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(LMaaSError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class NotFound(LMaaSError):
    code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class ModelNotFound(NotFound):
    fields = ("name", "version")

    def __init__(self, name: str, version: str | int | None = None, *, message: str | None = None) -> None:
        if message is None:
            what = f"model '{name}'" if not version else f"version {version} of model '{name}'"
            message = f"{what} is not found" if version else f"{what} is not found or not ready"
        super().__init__(message)
        self.name = name
        self.version = str(version or "")


class ArtifactNotFound(NotFound):
    fields = ("digest",)

    def __init__(self, digest: str) -> None:
        super().__init__(f"artifact sha256:{digest} is not found")
        self.digest = digest


class AlreadyExists(LMaaSError):
    code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409


class FailedPrecondition(LMaaSError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


class Aborted(LMaaSError):
    code = grpc.StatusCode.ABORTED
    http_status = 409


class ResourceExhausted(LMaaSError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class PayloadTooLarge(ResourceExhausted):
    """A message or body over a size limit (gRPC keeps RESOURCE_EXHAUSTED; HTTP says 413)."""

    http_status = 413


class DeadlineExceeded(LMaaSError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class Unavailable(LMaaSError):
    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class Unauthenticated(LMaaSError):
    code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class PermissionDenied(LMaaSError):
    code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class Unimplemented(LMaaSError):
    code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501


class DataLoss(LMaaSError):
    code = grpc.StatusCode.DATA_LOSS
    http_status = 400


class Cancelled(LMaaSError):
    """The client cancelled or closed the connection; nobody reads the answer (499: google.rpc / nginx)."""

    code = grpc.StatusCode.CANCELLED
    http_status = 499


class Internal(LMaaSError):
    code = grpc.StatusCode.INTERNAL
    http_status = 500


_BY_CODE: dict[grpc.StatusCode, type[LMaaSError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        ResourceExhausted,
        DeadlineExceeded,
        Unavailable,
        Unauthenticated,
        PermissionDenied,
        Unimplemented,
        DataLoss,
        Cancelled,
        Internal,
    )
}


_KERNEL: tuple[type[LMaaSError], ...] = (
    LMaaSError, *_BY_CODE.values(), ModelNotFound, ArtifactNotFound, PayloadTooLarge
)


def _reason(cls: type[LMaaSError]) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).upper()  # ModelNotFound -> MODEL_NOT_FOUND


_BY_REASON: dict[str, type[LMaaSError]] = {_reason(cls): cls for cls in _KERNEL}


def _wire_class(exc: LMaaSError) -> type[LMaaSError]:
    """The class of this module that ``exc`` travels as (its own, or the nearest base defined here)."""
    return next(c for c in type(exc).__mro__ if c in _KERNEL)


def error_info(exc: LMaaSError) -> tuple[str, dict[str, str]]:
    """``exc``'s ErrorInfo: its reason and its fields as strings."""
    cls = _wire_class(exc)
    return _reason(cls), {f: str(getattr(exc, f)) for f in cls.fields if getattr(exc, f, None) is not None}


def status_details(exc: LMaaSError) -> bytes:
    """The ``grpc-status-details-bin`` trailer for ``exc``: a google.rpc.Status holding one ErrorInfo."""
    reason, metadata = error_info(exc)
    info = status_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)
    detail = status_pb2.Detail(type_url=_ERROR_INFO_URL, value=info.SerializeToString())
    status = status_pb2.Status(code=exc.code.value[0], message=exc.message, details=[detail])
    return bytes(status.SerializeToString())


def _from_details(code: grpc.StatusCode, details: bytes) -> tuple[type[LMaaSError], dict[str, str]] | None:
    try:
        status = status_pb2.Status.FromString(details)
        for detail in status.details:
            if detail.type_url == _ERROR_INFO_URL:
                info = status_pb2.ErrorInfo.FromString(detail.value)
                cls = _BY_REASON.get(info.reason)
                if info.domain == DOMAIN and cls is not None and cls.code == code:
                    return cls, {f: info.metadata[f] for f in cls.fields if f in info.metadata}
    except Exception:  # a foreign or damaged trailer: fall back to the status code
        return None
    return None


def from_status(code: grpc.StatusCode, message: str, details: bytes | None = None) -> LMaaSError:
    """The exception a client raises for a status a server sent.

    With the server's ``grpc-status-details-bin`` trailer (``details``) it is the exact class the server raised,
    with its fields; without it (or from a server that is not ours), the class of the status code.
    """
    found = _from_details(code, details) if details else None
    cls, values = found or (_BY_CODE.get(code, LMaaSError), {})
    err = LMaaSError.__new__(cls)
    LMaaSError.__init__(err, message)
    for field in cls.fields:
        setattr(err, field, values.get(field, ""))
    return err


_BY_HTTP: dict[int, type[LMaaSError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: FailedPrecondition,
    413: PayloadTooLarge,
    429: ResourceExhausted,
    501: Unimplemented,
    503: Unavailable,
    504: DeadlineExceeded,
}


def http_status(exc: BaseException) -> int:
    """The HTTP status for an exception: its own for LMaaS errors, 500 for anything else."""
    return exc.http_status if isinstance(exc, LMaaSError) else 500


def from_http(status: int, message: str) -> LMaaSError:
    """The exception a client raises for an HTTP error answer (the class by status, as :func:`from_status`)."""
    cls = _BY_HTTP.get(status, Internal if status >= 500 else InvalidArgument)
    err = LMaaSError.__new__(cls)
    LMaaSError.__init__(err, message)
    return err
