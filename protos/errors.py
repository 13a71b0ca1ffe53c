"""The one table between LMaaS errors and gRPC status codes.

Servers raise these; the server interceptor turns them into a status with the
message; clients turn a status back into the same class with
:func:`from_status`. It lives beside the protos so that ``lmaas.client`` never
imports server code.

Tree::

    LMaaSError                      INTERNAL
    ├── InvalidArgument             INVALID_ARGUMENT
    ├── NotFound                    NOT_FOUND
    │   ├── ModelNotFound
    │   └── ArtifactNotFound
    ├── AlreadyExists               ALREADY_EXISTS
    ├── FailedPrecondition          FAILED_PRECONDITION
    ├── Aborted                     ABORTED   (compare-and-swap conflict: retry)
    ├── ResourceExhausted           RESOURCE_EXHAUSTED
    ├── DeadlineExceeded            DEADLINE_EXCEEDED
    ├── Unavailable                 UNAVAILABLE
    ├── Unauthenticated             UNAUTHENTICATED
    ├── PermissionDenied            PERMISSION_DENIED
    ├── Unimplemented               UNIMPLEMENTED
    ├── DataLoss                    DATA_LOSS (digest mismatch)
    └── Internal                    INTERNAL
"""

from __future__ import annotations

import grpc

__all__ = [
    "Aborted",
    "AlreadyExists",
    "ArtifactNotFound",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "LMaaSError",
    "ModelNotFound",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "from_status",
]


class LMaaSError(Exception):
    """Base of every LMaaS error; ``code`` is the gRPC status it travels as."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(LMaaSError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(LMaaSError):
    code = grpc.StatusCode.NOT_FOUND


class ModelNotFound(NotFound):
    def __init__(self, name: str, version: str | int | None = None) -> None:
        what = f"model '{name}'" if not version else f"version {version} of model '{name}'"
        super().__init__(f"{what} is not found" if version else f"{what} is not found or not ready")
        self.name = name
        self.version = str(version or "")


class ArtifactNotFound(NotFound):
    def __init__(self, digest: str) -> None:
        super().__init__(f"artifact sha256:{digest} is not found")
        self.digest = digest


class AlreadyExists(LMaaSError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(LMaaSError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(LMaaSError):
    code = grpc.StatusCode.ABORTED


class ResourceExhausted(LMaaSError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(LMaaSError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(LMaaSError):
    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(LMaaSError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(LMaaSError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unimplemented(LMaaSError):
    code = grpc.StatusCode.UNIMPLEMENTED


class DataLoss(LMaaSError):
    code = grpc.StatusCode.DATA_LOSS


class Internal(LMaaSError):
    code = grpc.StatusCode.INTERNAL


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
        Internal,
    )
}


def from_status(code: grpc.StatusCode, message: str) -> LMaaSError:
    """The exception a client raises for a status a server sent."""
    cls = _BY_CODE.get(code, LMaaSError)
    err = LMaaSError.__new__(cls)
    LMaaSError.__init__(err, message)
    return err
