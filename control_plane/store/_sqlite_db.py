"""The SQL half of the SQLite store: synchronous, one connection, always called from one thread.

Tables (one file, WAL mode):

* ``meta(name, value)`` — ``revision`` (the global revision, starts at 1 as in etcd),
  ``compact_revision`` (history before it is gone) and ``schema``;
* ``kv`` — the current value of each key with its create/mod revision, version and lease;
* ``log`` — one row per event, keyed by ``(revision, seq)``: what watches read, from any process;
* ``lease(id, ttl, expires_at)`` — wall-clock expiry, so every process agrees on it.

Every write runs in ``BEGIN IMMEDIATE``, which serializes writers across connections and
processes; a transaction that changes nothing leaves the revision alone. sqlite3 errors
propagate; the async layer translates them.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from ._common import decode_key, encode_key, prefix_end
from .base import Compare, Delete, Event, EventType, KeyValue, LeaseNotFound, Put, Txn, WatchCompacted

__all__ = ["Db"]

SCHEMA_VERSION = 1
_PUT, _DELETE = 0, 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS log (
    revision INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    type INTEGER NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL,
    PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lease (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL, expires_at REAL NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 1), ('compact_revision', 0), ('schema', 1);
"""

_KV_COLUMNS = "key, value, create_revision, mod_revision, version, lease"


def _kv(row: Sequence[Any]) -> KeyValue:
    return KeyValue(decode_key(row[0]), bytes(row[1]), row[2], row[3], row[4], row[5])


def _range_sql(key: bytes, prefix: bool) -> tuple[str, tuple[bytes, ...]]:
    """A WHERE clause on ``key`` for one key or every key under a prefix."""
    if not prefix:
        return "key = ?", (key,)
    end = prefix_end(key)
    if end is None:
        return "key >= ?", (key,)
    return "key >= ? AND key < ?", (key, end)


def _test(op: str, actual: Any, expected: Any) -> bool:
    """``actual op expected``; both int or both bytes (validate_txn checked the request)."""
    if op == "==":
        return bool(actual == expected)
    if op == "!=":
        return bool(actual != expected)
    if op == "<":
        return bool(actual < expected)
    return bool(actual > expected)


class Db:
    def __init__(self, path: str, busy_timeout: float) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None

    # -- connection --------------------------------------------------------------------------------------------

    def open(self) -> None:
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._conn = conn
            with self._write():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                schema = self._meta("schema")
                if schema != SCHEMA_VERSION:
                    raise sqlite3.DatabaseError(f"store schema {schema} is not {SCHEMA_VERSION}")
        except BaseException:
            self._conn = None
            conn.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("the store is closed")
        return self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One snapshot for several SELECTs."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def _meta(self, name: str) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row is not None else 0

    def _set_meta(self, name: str, value: int) -> None:
        self.conn.execute("UPDATE meta SET value = ? WHERE name = ?", (value, name))

    # -- reads -------------------------------------------------------------------------------------------------

    def head(self) -> int:
        return self._meta("revision")

    def get(self, key: str) -> KeyValue | None:
        row = self.conn.execute(f"SELECT {_KV_COLUMNS} FROM kv WHERE key = ?", (encode_key(key),)).fetchone()
        return _kv(row) if row is not None else None

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        where, args = _range_sql(encode_key(prefix), prefix=True)
        with self._read() as conn:
            rows = conn.execute(f"SELECT {_KV_COLUMNS} FROM kv WHERE {where} ORDER BY key", args).fetchall()
            return [_kv(r) for r in rows], self._meta("revision")

    def read_log(self, prefix: bytes, from_revision: int, max_revisions: int) -> tuple[list[Event], int, bool]:
        """Events under ``prefix`` in ``[from_revision, from_revision + max_revisions)``, capped at the head.

        Returns the events, the next revision to read from, and whether that reached the head.
        Whole revisions only, so a reader never stops inside one.
        """
        where, args = _range_sql(prefix, prefix=True)
        with self._read() as conn:
            compacted = self._meta("compact_revision")
            if from_revision < compacted:
                raise WatchCompacted(from_revision, compacted)
            head = self._meta("revision")
            if from_revision > head:
                return [], from_revision, True
            upto = min(head, from_revision + max_revisions - 1)
            rows = conn.execute(
                "SELECT type, key, value, create_revision, revision, version, lease FROM log "
                f"WHERE revision BETWEEN ? AND ? AND {where} ORDER BY revision, seq",
                (from_revision, upto, *args),
            ).fetchall()
        events = [
            Event(EventType.PUT if r[0] == _PUT else EventType.DELETE, _kv(r[1:])) for r in rows
        ]
        return events, upto + 1, upto == head

    # -- writes ------------------------------------------------------------------------------------------------

    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete], failure: Sequence[Put | Delete]
            ) -> tuple[bool, int]:
        with self._write():
            head = self._meta("revision")
            ok = all(self._holds(c) for c in compares)
            changed = self._apply(success if ok else failure, head + 1) > 0
            if changed:
                self._set_meta("revision", head + 1)
                return ok, head + 1
            return ok, head

    def txn_batch(self, batch: Sequence[Txn]) -> tuple[list[bool], int]:
        """Every compare on the state before the batch (as etcd's nested transactions), then each branch."""
        with self._write():
            head = self._meta("revision")
            oks = [all(self._holds(c) for c in t.compares) for t in batch]
            seq = 0
            for t, ok in zip(batch, oks, strict=True):
                seq = self._apply(t.success if ok else t.failure, head + 1, seq)
            if seq:
                self._set_meta("revision", head + 1)
                return oks, head + 1
            return oks, head

    def _holds(self, c: Compare) -> bool:
        row = self.conn.execute(
            "SELECT value, create_revision, mod_revision, version FROM kv WHERE key = ?", (encode_key(c.key),)
        ).fetchone()
        if c.target == "value":
            # as in etcd: a value compare on a missing key never holds, whatever the op
            return row is not None and _test(c.op, bytes(row[0]), c.value)
        index = {"create_revision": 1, "mod_revision": 2, "version": 3}[c.target]
        return _test(c.op, int(row[index]) if row is not None else 0, c.value)

    def _apply(self, ops: Sequence[Put | Delete], revision: int, seq: int = 0) -> int:
        """Write ``ops`` at ``revision`` with log sequence numbers from ``seq``; the next free one."""
        conn = self.conn
        for op in ops:
            key = encode_key(op.key)
            if isinstance(op, Put):
                if op.lease and conn.execute("SELECT 1 FROM lease WHERE id = ?", (op.lease,)).fetchone() is None:
                    raise LeaseNotFound(op.lease)
                row = conn.execute("SELECT create_revision, version FROM kv WHERE key = ?", (key,)).fetchone()
                create, version = (int(row[0]), int(row[1]) + 1) if row is not None else (revision, 1)
                conn.execute(
                    f"INSERT OR REPLACE INTO kv ({_KV_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (key, op.value, create, revision, version, op.lease),
                )
                conn.execute(
                    "INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (revision, seq, _PUT, key, op.value, create, version, op.lease),
                )
                seq += 1
            else:
                seq = self._delete_where(*_range_sql(key, op.prefix), revision=revision, seq=seq)
        return seq

    def _delete_where(self, where: str, args: tuple[Any, ...], *, revision: int, seq: int) -> int:
        conn = self.conn
        keys = [r[0] for r in conn.execute(f"SELECT key FROM kv WHERE {where} ORDER BY key", args)]
        if keys:
            conn.execute(f"DELETE FROM kv WHERE {where}", args)
            conn.executemany(
                "INSERT INTO log VALUES (?, ?, ?, ?, x'', 0, 0, 0)",
                [(revision, seq + i, _DELETE, k) for i, k in enumerate(keys)],
            )
        return seq + len(keys)

    # -- leases ------------------------------------------------------------------------------------------------

    def grant(self, ttl: int, now: float) -> int:
        with self._write() as conn:
            while True:
                lease_id = secrets.randbits(62) + 1
                if conn.execute("SELECT 1 FROM lease WHERE id = ?", (lease_id,)).fetchone() is None:
                    conn.execute("INSERT INTO lease VALUES (?, ?, ?)", (lease_id, ttl, now + ttl))
                    return lease_id

    def refresh(self, lease_id: int, now: float) -> bool:
        """Push the expiry to now + ttl; False when the lease is gone."""
        cur = self.conn.execute("UPDATE lease SET expires_at = ? + ttl WHERE id = ?", (now, lease_id))
        return cur.rowcount > 0

    def revoke(self, lease_id: int) -> int:
        """Delete the lease and its keys (one revision); returns the revision after it."""
        with self._write() as conn:
            head = self._meta("revision")
            conn.execute("DELETE FROM lease WHERE id = ?", (lease_id,))
            if self._delete_where("lease = ?", (lease_id,), revision=head + 1, seq=0):
                self._set_meta("revision", head + 1)
                return head + 1
            return head

    def expire(self, now: float) -> list[int]:
        """Revoke every lease whose expiry has passed, one revision each; returns their ids."""
        probe = "SELECT id FROM lease WHERE expires_at <= ? ORDER BY expires_at"
        if self.conn.execute(probe + " LIMIT 1", (now,)).fetchone() is None:
            return []  # the common case, without taking the write lock
        with self._write() as conn:
            expired = [int(r[0]) for r in conn.execute(probe, (now,)).fetchall()]
            for lease_id in expired:
                head = self._meta("revision")
                conn.execute("DELETE FROM lease WHERE id = ?", (lease_id,))
                if self._delete_where("lease = ?", (lease_id,), revision=head + 1, seq=0):
                    self._set_meta("revision", head + 1)
        return expired

    # -- history -----------------------------------------------------------------------------------------------

    def compact(self, revision: int) -> None:
        with self._write() as conn:
            head = self._meta("revision")
            if revision > head:
                raise ValueError(f"cannot compact to revision {revision}: the store is at {head}")
            if revision <= self._meta("compact_revision"):
                return
            conn.execute("DELETE FROM log WHERE revision < ?", (revision,))
            self._set_meta("compact_revision", revision)

    def compact_keeping(self, keep: int) -> None:
        """Compact so that the last ``keep`` revisions of history stay."""
        target = self.head() - keep
        if target > self._meta("compact_revision"):
            self.compact(target)
