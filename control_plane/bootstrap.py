"""The first admin token: imported from ``LMAAS_BOOTSTRAP_TOKEN`` or ``--bootstrap-token-file`` at every start.

* ``LMAAS_BOOTSTRAP_TOKEN`` set: that token is imported (the file is not touched).
* The file exists: the token in it is imported. A file readable by group or
  others is used, with a warning.
* The file does not exist: a new token is generated, written to it with mode
  0600 (created exclusively, never overwriting), and imported; the log says where.

``LMAAS_BOOTSTRAP_WORKER_TOKEN``, if set, is imported the same way with role
worker: a fleet can start with a token from a Secret, before any admin exists.

Importing is idempotent (:meth:`~lmaas.control_plane.tokens.Tokens.import_token`),
so every replica and every restart may import the same token. A bootstrap token
that an admin revoked stays revoked. Rotate it by creating another admin token,
revoking the bootstrap one, and deleting the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lmaas.control_plane.tokens import TokenConflict, Tokens, generate_token, parse_token
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

__all__ = ["BootstrapError", "import_bootstrap_token", "import_worker_token", "read_or_create_token_file"]

log = logging.getLogger("lmaas.control.auth")


class BootstrapError(Exception):
    """The bootstrap token cannot be used (malformed file, conflicting id): the control plane does not start."""


def read_or_create_token_file(path: Path) -> tuple[str, bool]:
    """The token in ``path``, creating the file (0600) with a new token if absent; returns (token, created)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("%s is readable by others (mode %03o): chmod 600 it", path, mode)
        return path.read_text().strip(), False
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return read_or_create_token_file(path)
    token = generate_token()
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


async def import_bootstrap_token(tokens: Tokens, *, token: str | None, file: Path | None) -> str | None:
    """Import the bootstrap admin token from ``token`` or ``file``; returns its id (None when neither is given)."""
    if token:
        source = "LMAAS_BOOTSTRAP_TOKEN"
    elif file is not None:
        try:
            token, created = read_or_create_token_file(file)
        except OSError as exc:
            raise BootstrapError(f"bootstrap token file {file}: {exc}") from exc
        source = str(file)
        if created:
            log.warning("generated the first admin token and wrote it to %s (mode 0600): "
                        "export LMAAS_TOKEN=$(cat %s)", file, file)
    else:
        return None
    parsed = parse_token(token)
    if parsed is None:
        raise BootstrapError(
            f"the bootstrap token from {source} is not an LMaaS token (lmaas_<12 hex>_<43 base64url characters>); "
            "remove the file and the control plane writes a new one"
        )
    try:
        outcome = await tokens.import_token(token, pb.ROLE_ADMIN, "bootstrap admin token")
    except TokenConflict as exc:
        raise BootstrapError(f"the bootstrap token from {source}: {exc}") from exc
    token_id = parsed[0]
    if outcome == "created":
        log.info("imported the bootstrap admin token %s from %s", token_id, source)
    elif outcome == "revoked":
        log.warning("the bootstrap admin token %s from %s was revoked; it stays revoked", token_id, source)
    return token_id


async def import_worker_token(tokens: Tokens, token: str) -> str:
    """Import ``LMAAS_BOOTSTRAP_WORKER_TOKEN`` with role worker (a fleet's shared token from a Secret); its id."""
    parsed = parse_token(token)
    if parsed is None:
        raise BootstrapError("LMAAS_BOOTSTRAP_WORKER_TOKEN is not an LMaaS token (lmaas_<12 hex>_<43 base64url>)")
    try:
        outcome = await tokens.import_token(token, pb.ROLE_WORKER, "bootstrap worker token")
    except TokenConflict as exc:
        raise BootstrapError(f"LMAAS_BOOTSTRAP_WORKER_TOKEN: {exc}") from exc
    if outcome == "revoked":
        log.warning("the bootstrap worker token %s was revoked; it stays revoked", parsed[0])
    return parsed[0]
