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

from typing import ClassVar

import grpc

__all__ = [
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
    "from_http",
    "from_status",
    "http_status",
]


class LMaaSError(Exception):
    """Base of every LMaaS error; ``code`` / ``http_status`` are how it travels over gRPC / HTTP."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    http_status: ClassVar[int] = 500

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
    def __init__(self, name: str, version: str | int | None = None, *, triton: bool = False) -> None:
        if triton:  # the worker: Triton's wording, which its clients and examples match on
            suffix = f" version {version}" if version else ""
            message = f"Request for unknown model: '{name}'{suffix} is not found"
        else:
            what = f"model '{name}'" if not version else f"version {version} of model '{name}'"
            message = f"{what} is not found" if version else f"{what} is not found or not ready"
        super().__init__(message)
        self.name = name
        self.version = str(version or "")


class ArtifactNotFound(NotFound):
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


def from_status(code: grpc.StatusCode, message: str) -> LMaaSError:
    """The exception a client raises for a status a server sent."""
    cls = _BY_CODE.get(code, LMaaSError)
    err = LMaaSError.__new__(cls)
    LMaaSError.__init__(err, message)
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
