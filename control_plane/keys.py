"""The metadata-store key layout, in one place.

Every key lives under ``/lmaas/v1/``; values are serialized messages from
``lmaas.control.v1.resources`` (see ``protos/lmaas/control/v1/resources.proto``)::

    /lmaas/v1/models/<name>                   Model          durable
    /lmaas/v1/models/<name>/versions/<n>      ModelVersion   durable, immutable; n zero-padded to 12 digits
    /lmaas/v1/deployments/<name>              Deployment     durable
    /lmaas/v1/rollouts/<name>                 Rollout        durable
    /lmaas/v1/workers/<id>                    WorkerInfo     leased
    /lmaas/v1/observed/<worker>/<name>        ObservedModel  leased
    /lmaas/v1/tokens/<id>                     Token          durable (secret kept as sha256 only)
    /lmaas/v1/audit/<time>-<replica>-<n>      AuditEntry     durable, trimmed to the newest N

Model names and worker ids are validated before they become part of a key, so
no user string can reach into another key's space.
"""

from __future__ import annotations

import re

from lmaas.protos.errors import InvalidArgument

__all__ = [
    "AUDIT",
    "DEPLOYMENTS",
    "MODELS",
    "OBSERVED",
    "PREFIX",
    "ROLLOUTS",
    "TOKENS",
    "WORKERS",
    "check_name",
    "check_worker_id",
    "deployment",
    "model",
    "observed",
    "rollout",
    "token",
    "version",
    "versions",
    "worker",
]

PREFIX = "/lmaas/v1/"
MODELS = PREFIX + "models/"
DEPLOYMENTS = PREFIX + "deployments/"
ROLLOUTS = PREFIX + "rollouts/"
WORKERS = PREFIX + "workers/"
OBSERVED = PREFIX + "observed/"
TOKENS = PREFIX + "tokens/"
AUDIT = PREFIX + "audit/"

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_WORKER_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,252}")


def check_name(name: str, what: str = "model name") -> str:
    """A model (or pool) name, or InvalidArgument naming the rule."""
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid {what} {name!r}: use 1-128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'"
        )
    return name


def check_worker_id(worker_id: str) -> str:
    if not _WORKER_ID.fullmatch(worker_id):
        raise InvalidArgument(f"invalid worker id {worker_id!r}: use 1-253 characters of [A-Za-z0-9_.:@-]")
    return worker_id


def model(name: str) -> str:
    return MODELS + name


def versions(name: str) -> str:
    return f"{MODELS}{name}/versions/"


def version(name: str, number: int) -> str:
    return f"{versions(name)}{number:012d}"


def deployment(name: str) -> str:
    return DEPLOYMENTS + name


def rollout(name: str) -> str:
    return ROLLOUTS + name


def worker(worker_id: str) -> str:
    return WORKERS + worker_id


def token(token_id: str) -> str:
    """A token's key; the id is validated by :mod:`lmaas.control_plane.tokens` first."""
    return TOKENS + token_id


def observed(worker_id: str, name: str = "") -> str:
    """One observed model of a worker, or (``name=""``) the prefix of all of them."""
    return f"{OBSERVED}{worker_id}/{name}"
