"""Bearer tokens of the control plane: create, list, revoke, verify, and import at start.

A token reads ``lmaas_<id>_<secret>``: ``id`` is 12 lowercase hex characters
(public: it names the token in ``lmaas token list|revoke`` and is its store
key), ``secret`` is 32 random bytes in URL-safe base64. The store keeps
``/lmaas/v1/tokens/<id>`` → :class:`Token` with the role and the sha256 of the
secret, never the secret itself; verification looks the token up by id and
compares hashes in constant time. Revoking keeps the record as a tombstone
(``revoked_at_ms``), so an old bootstrap file or a retried import cannot bring
a revoked token back, and ids are never reused.

Every write is a compare-and-swap, like the rest of the control plane's state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from typing import TypeAlias

from lmaas.control_plane import keys
from lmaas.control_plane.registry import now_ms
from lmaas.control_plane.store.base import Compare, Put, Store
from lmaas.protos.errors import Aborted, InvalidArgument, NotFound
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

__all__ = [
    "MAX_DESCRIPTION",
    "ROLE_NAMES",
    "TokenConflict",
    "Tokens",
    "generate_token",
    "parse_token",
    "public",
    "role_name",
    "secret_sha256",
]

MAX_DESCRIPTION = 256
Role: TypeAlias = "pb.Role"
_TOKEN = re.compile(r"lmaas_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_ID = re.compile(r"[0-9a-f]{12}")
_DUMMY_HASH = hashlib.sha256(b"lmaas-no-such-token").digest()

#: Role enum value → the name the CLI and logs use.
ROLE_NAMES: dict[Role, str] = {
    pb.ROLE_READER: "reader",
    pb.ROLE_DEPLOYER: "deployer",
    pb.ROLE_WORKER: "worker",
    pb.ROLE_ADMIN: "admin",
}


def role_name(role: int) -> str:
    for value, name in ROLE_NAMES.items():
        if value == role:
            return name
    return "none"


def generate_token() -> str:
    """A new random token (not stored)."""
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"lmaas_{secrets.token_hex(6)}_{secret}"


def parse_token(text: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, else None."""
    match = _TOKEN.fullmatch(text)
    return (match.group(1), match.group(2)) if match else None


def secret_sha256(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def public(token: pb.Token) -> pb.Token:
    """A copy without the secret's hash, for responses."""
    out = pb.Token()
    out.CopyFrom(token)
    out.ClearField("secret_sha256")
    return out


class TokenConflict(Exception):
    """An imported token's id exists with another secret (practically only a forged or mangled token)."""


class Tokens:
    def __init__(self, store: Store, *, clock: Callable[[], int] = now_ms) -> None:
        self._store = store
        self._clock = clock

    async def create(self, role: Role, description: str, *, created_by: str) -> tuple[pb.Token, str, int]:
        """A new token; returns (record, the whole bearer token, revision). The bearer token exists only here."""
        if role not in ROLE_NAMES:
            raise InvalidArgument(f"invalid role {role}: expected one of {', '.join(ROLE_NAMES.values())}")
        _check_description(description)
        for _ in range(8):  # a 48-bit id collides practically never; retry if it does
            bearer = generate_token()
            token_id, secret = parse_token(bearer)  # type: ignore[misc]
            record = pb.Token(
                id=token_id, role=role, description=description, secret_sha256=secret_sha256(secret),
                created_at_ms=self._clock(), created_by=created_by,
            )
            key = keys.token(token_id)
            result = await self._store.txn([Compare.absent(key)], [Put(key, record.SerializeToString())])
            if result.succeeded:
                return record, bearer, result.revision
        raise Aborted("could not allocate a token id; retry")  # pragma: no cover

    async def list(self, *, include_revoked: bool = False) -> tuple[list[pb.Token], int]:
        result = await self._store.range(keys.TOKENS)
        tokens = [pb.Token.FromString(kv.value) for kv in result.kvs]
        return [t for t in tokens if include_revoked or not t.revoked_at_ms], result.revision

    async def get(self, token_id: str) -> pb.Token | None:
        if not _ID.fullmatch(token_id):
            return None
        kv = await self._store.get(keys.token(token_id))
        return None if kv is None else pb.Token.FromString(kv.value)

    async def revoke(self, token_id: str, *, revoked_by: str) -> tuple[pb.Token, int]:
        if not _ID.fullmatch(token_id):
            raise InvalidArgument(f"invalid token id {token_id!r}: expected 12 lowercase hex characters")
        key = keys.token(token_id)
        for _ in range(16):
            kv = await self._store.get(key)
            if kv is None:
                raise NotFound(f"token {token_id} is not found")
            record = pb.Token.FromString(kv.value)
            if record.revoked_at_ms:
                return record, kv.mod_revision
            record.revoked_at_ms = self._clock()
            record.revoked_by = revoked_by
            result = await self._store.txn(
                [Compare.unchanged(key, kv.mod_revision)], [Put(key, record.SerializeToString())]
            )
            if result.succeeded:
                return record, result.revision
        raise Aborted(f"token {token_id} changed concurrently; retry")  # pragma: no cover

    async def verify(self, bearer: str) -> pb.Token | None:
        """The valid (not revoked) token record of a bearer token, else None."""
        parsed = parse_token(bearer)
        if parsed is None:
            return None
        token_id, secret = parsed
        record = await self.get(token_id)
        presented = secret_sha256(secret)
        stored = record.secret_sha256 if record is not None else _DUMMY_HASH
        if not hmac.compare_digest(presented, stored) or record is None or record.revoked_at_ms:
            return None
        return record

    async def import_token(self, bearer: str, role: Role, description: str, *, created_by: str = "bootstrap") -> str:
        """Store a token made elsewhere (a bootstrap file, ``lmaas up``); idempotent.

        Returns what happened: ``"created"``, ``"exists"`` (same secret already
        stored), or ``"revoked"`` (it was revoked once: it stays revoked).
        Raises :class:`ValueError` for a malformed token and
        :class:`TokenConflict` when the id is taken by another secret.
        """
        parsed = parse_token(bearer)
        if parsed is None:
            raise ValueError("a token must read lmaas_<12 hex>_<43 base64url characters>")
        token_id, secret = parsed
        key = keys.token(token_id)
        record = pb.Token(
            id=token_id, role=role, description=description[:MAX_DESCRIPTION], secret_sha256=secret_sha256(secret),
            created_at_ms=self._clock(), created_by=created_by,
        )
        result = await self._store.txn([Compare.absent(key)], [Put(key, record.SerializeToString())])
        if result.succeeded:
            return "created"
        existing = await self.get(token_id)
        if existing is None:  # deleted in between: try once more
            return await self.import_token(bearer, role, description, created_by=created_by)
        if not hmac.compare_digest(existing.secret_sha256, record.secret_sha256):
            raise TokenConflict(f"token id {token_id} is taken by another secret")
        return "revoked" if existing.revoked_at_ms else "exists"


def _check_description(description: str) -> None:
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgument(f"token description of {len(description)} characters exceeds {MAX_DESCRIPTION}")
