"""The change ledger: one row per order id, kept in a SQL database Airflow can reach.

It remembers what was last *delivered* (body hash and version), the outcome of the last attempt
with its error, and — for an order whose last attempt failed — the encoded body still owed to
Kapture (``pending_body``), so a later run of any interval can deliver it without re-reading the
warehouse. That column holds the order's personal data until delivery succeeds; it is cleared then.
Tested on SQLite (switched to WAL so the warehouse can be read while the ledger is written) and
PostgreSQL; the SQL is plain ``INSERT … ON CONFLICT`` that both understand.

The sync engine's sending threads record their own results, so one connection serves every thread:
each method holds the ledger's lock while it uses it.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar, cast

from airflow.providers.common.sql.hooks.sql import DbApiHook

from kapture_provider.sync.source import driver_name

DELIVERED, FAILED, INVALID = "delivered", "failed", "invalid"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_LOOKUP_BATCH = 500
_Method = TypeVar("_Method", bound=Callable[..., Any])


def encode_version(value: Any) -> str | None:
    """A version value (number, datetime, date or text) as text whose order :func:`version_key` restores."""
    if value is None:
        return None
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int | float | Decimal):
        return f"n:{value}"
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return "t:" + value.isoformat(sep=" ", timespec="microseconds")
    if isinstance(value, dt.date):
        return "t:" + dt.datetime(value.year, value.month, value.day).isoformat(sep=" ", timespec="microseconds")
    text = str(value)  # a lone surrogate (no database stores one) is escaped so that the ledger can store it
    text = text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")
    return f"s:{text}"[:255]  # the width of the version columns; longer texts compare by their start


def version_key(encoded: str) -> tuple[int, Any]:
    """Sort key of an encoded version; numbers compare as numbers, times and text as text."""
    kind, _, text = encoded.partition(":")
    if kind == "n":
        return (0, Decimal(text))
    return (1, text) if kind == "t" else (2, text)


def is_older(version: str | None, than: str | None) -> bool:
    """True when ``version`` is strictly older than ``than`` (unknown versions are never older)."""
    if version is None or than is None:
        return False
    try:
        return version_key(version) < version_key(than)
    except ArithmeticError:  # a NaN version (decimal.InvalidOperation) orders nothing: unknown
        return False


@dataclass(frozen=True)
class LedgerEntry:
    """What the ledger knows of one order."""

    order_id: str
    status: str
    body_hash: str | None  # of the last delivered body
    version: str | None  # of the last delivered body
    pending_hash: str | None  # of the body still owed, when the last attempt failed
    pending_version: str | None

    @property
    def newest_version(self) -> str | None:
        """The newest version this order has been sent with, delivered or still owed."""
        if self.pending_version is None or is_older(self.pending_version, self.version):
            return self.version
        return self.pending_version


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt, as the ledger records it."""

    order_id: str
    status: str
    body_hash: str | None = None
    version: str | None = None
    body: bytes | None = None  # kept only when the attempt failed
    error: str | None = None
    transient: bool = False  # failed for a transient reason (Kapture down or overloaded); not stored


@dataclass(frozen=True)
class PendingOrder:
    """An order whose last attempt failed, with the body still owed to Kapture."""

    order_id: str
    data: bytes
    body_hash: str
    version: str | None


def _serialized(method: _Method) -> _Method:
    """Run a :class:`Ledger` method holding the ledger's lock: its one connection serves every thread."""

    @functools.wraps(method)
    def locked(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return cast(_Method, locked)


class Ledger:
    """Reads and writes the ledger table through a common-sql ``DbApiHook``; safe to share between threads."""

    def __init__(self, hook: DbApiHook, table: str = "kapture_order_sync_ledger"):
        if not _IDENTIFIER.match(table):
            raise ValueError(f"ledger table name {table!r} must be a plain SQL identifier")
        self.hook = hook
        self.table = table
        self._conn: Any = None
        self._p = hook.placeholder
        self._lock = threading.RLock()  # one thread at a time on the connection

    @property
    def conn(self) -> Any:
        """The ledger's own connection (SQLite: switched to WAL, so open it before reading the warehouse)."""
        with self._lock:
            if self._conn is None:
                self._conn = _connect(self.hook)
            return self._conn

    @_serialized
    def exists(self) -> bool:
        """Whether the ledger table is there (dry runs never create it)."""
        cur = self.conn.cursor()
        try:
            cur.execute(f"SELECT 1 FROM {self.table} WHERE 1 = 0")
            return True
        except Exception:
            self.conn.rollback()
            return False
        finally:
            cur.close()

    @_serialized
    def create(self) -> None:
        """Create the table and its status index if missing.

        Safe when several shards start at once: PostgreSQL's ``CREATE … IF NOT EXISTS`` is not atomic, so
        the sessions racing the one that creates the table fail ("already exists") as soon as it commits
        the table and its index; they roll back and find both there.
        """
        try:
            self._create_objects()
        except Exception:
            self.conn.rollback()
            if not self.exists():
                raise
            self._create_objects()  # a no-op now, run so that a real error is not hidden

    def _create_objects(self) -> None:
        cur = self.conn.cursor()
        cur.execute(
            f"""CREATE TABLE IF NOT EXISTS {self.table} (
                order_id VARCHAR(255) NOT NULL PRIMARY KEY,
                status VARCHAR(16) NOT NULL,
                body_hash VARCHAR(64),
                version VARCHAR(255),
                pending_body TEXT,
                pending_hash VARCHAR(64),
                pending_version VARCHAR(255),
                last_error TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                first_seen_at VARCHAR(32) NOT NULL,
                last_attempt_at VARCHAR(32) NOT NULL,
                delivered_at VARCHAR(32)
            )"""
        )
        cur.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_status_idx ON {self.table} (status, last_attempt_at)")
        cur.close()
        self.conn.commit()

    @_serialized
    def lookup(self, order_ids: Sequence[str]) -> dict[str, LedgerEntry]:
        """The ledger entries of these order ids (missing ids are new orders)."""
        found: dict[str, LedgerEntry] = {}
        cur = self.conn.cursor()
        unique = list(dict.fromkeys(order_ids))
        for start in range(0, len(unique), _LOOKUP_BATCH):
            batch = unique[start : start + _LOOKUP_BATCH]
            marks = ", ".join([self._p] * len(batch))
            cur.execute(
                f"SELECT order_id, status, body_hash, version, pending_hash, pending_version "
                f"FROM {self.table} WHERE order_id IN ({marks})",
                batch,
            )
            for row in cur.fetchall():
                found[row[0]] = LedgerEntry(*row)
        cur.close()
        return found

    @_serialized
    def record(self, outcomes: Iterable[Outcome], now: str) -> None:
        """Write a batch of outcomes in one transaction and commit it."""
        delivered, failed = [], []
        for o in outcomes:
            if o.status == DELIVERED:
                delivered.append((o.order_id, DELIVERED, o.body_hash, o.version, now, now, now))
            else:
                body = o.body.decode("utf-8") if o.body is not None else None
                failed.append((o.order_id, o.status, body, o.body_hash, o.version, o.error, now, now))
        p, t = self._p, self.table
        cur = self.conn.cursor()
        try:
            explicit = _is_sqlite(self.conn) and len(delivered) + len(failed) > 1
            if explicit:  # SQLite runs in autocommit mode: a lone statement commits itself
                cur.execute("BEGIN")
            if delivered:
                cur.executemany(
                    f"INSERT INTO {t} (order_id, status, body_hash, version, attempts, first_seen_at, last_attempt_at, "
                    f"delivered_at) VALUES ({p}, {p}, {p}, {p}, 1, {p}, {p}, {p}) "
                    "ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, body_hash = excluded.body_hash, "
                    "version = excluded.version, pending_body = NULL, pending_hash = NULL, pending_version = NULL, "
                    f"last_error = NULL, attempts = {t}.attempts + 1, last_attempt_at = excluded.last_attempt_at, "
                    "delivered_at = excluded.delivered_at",
                    delivered,
                )
            if failed:
                cur.executemany(
                    f"INSERT INTO {t} (order_id, status, pending_body, pending_hash, pending_version, last_error, "
                    f"attempts, first_seen_at, last_attempt_at) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, 1, {p}, {p}) "
                    "ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, "
                    "pending_body = excluded.pending_body, pending_hash = excluded.pending_hash, "
                    "pending_version = excluded.pending_version, last_error = excluded.last_error, "
                    f"attempts = {t}.attempts + 1, last_attempt_at = excluded.last_attempt_at",
                    failed,
                )
            if explicit:
                cur.execute("COMMIT")
        except BaseException:
            self.conn.rollback()  # leave no transaction open on the shared connection
            raise
        finally:
            cur.close()
        self.conn.commit()

    def pending(self, attempted_before: str, batch_size: int = 1000) -> Iterator[PendingOrder]:
        """Orders whose last attempt failed before ``attempted_before`` and that still owe a body."""
        after = ""
        while True:
            rows = self._pending_batch(attempted_before, after, batch_size)
            for order_id, body, body_hash, version in rows:
                yield PendingOrder(order_id, body.encode("utf-8"), body_hash, version)
            if len(rows) < batch_size:
                return
            after = rows[-1][0]

    @_serialized
    def _pending_batch(self, attempted_before: str, after: str, batch_size: int) -> list[tuple[Any, ...]]:
        p = self._p
        cur = self.conn.cursor()
        cur.execute(
            f"SELECT order_id, pending_body, pending_hash, pending_version FROM {self.table} "
            f"WHERE status = {p} AND last_attempt_at < {p} AND pending_body IS NOT NULL AND order_id > {p} "
            f"ORDER BY order_id LIMIT {int(batch_size)}",
            (FAILED, attempted_before, after),
        )
        rows = cur.fetchall()
        cur.close()
        return list(rows)

    @_serialized
    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _connect(hook: DbApiHook) -> Any:
    """A connection from ``hook``, set up for the sending threads to record each result as it comes.

    Commits must be quick, since each thread records its result before it sends the next request.
    PostgreSQL: ``synchronous_commit`` off for this session (a server crash may forget the last
    fraction of a second of commits, whose orders are then sent again; nothing is corrupted). SQLite:
    reopened so that other threads may use it, in WAL mode without an fsync per commit (an OS crash
    may likewise undo the last commits), and in autocommit mode so that a lone result is one statement.
    """
    conn = hook.get_conn()
    if driver_name(conn) in ("psycopg", "psycopg2"):
        cur = conn.cursor()
        cur.execute("SET synchronous_commit TO OFF")
        cur.close()
        conn.commit()
    if not _is_sqlite(conn):
        return conn
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    conn.close()
    if not path:
        raise ValueError("the ledger needs a SQLite database file: an in-memory database is gone after the task")
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)  # one thread at a time: the lock
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _is_sqlite(conn: Any) -> bool:
    return driver_name(conn) == "sqlite3"
